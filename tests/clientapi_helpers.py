"""A FederationService with the client API on 127.0.0.1, driven over real HTTP."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import treq
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from fedlib.clientapi import ClientService, PasswordHasher, SQLiteClientStore
from fedlib.config import FederationConfig
from fedlib.crypto.keys import generate_signing_key
from fedlib.service import FederationService
from fedlib.storage.memory import MemoryStore
from fedlib.testing import quiet_dns

SERVER = "127.0.0.1:1"


class FakeSender:
    """Records what would be sent; nothing leaves the process."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str]]] = []

    def send_pdu(self, event_id: str, destinations: list[str]) -> None:
        self.sent.append((event_id, list(destinations)))

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def reset_backoff(self, origin: str) -> None:
        pass

    def wait_idle(self, timeout: float) -> bool:
        return True


def q(value: str) -> str:
    return quote(value, safe="")


class ClientTestCase(unittest.TestCase):
    timeout = 60
    enable_registration = True

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        quiet_dns(self)
        self.pool = HTTPConnectionPool(reactor)
        self.pool.retryAutomatically = False
        self.addCleanup(self.pool.closeCachedConnections)
        self.fed_store = MemoryStore()
        self.client_store = SQLiteClientStore(":memory:")
        self.client = ClientService(
            self.client_store,
            SERVER,
            listen=["tcp:0:interface=127.0.0.1"],
            enable_registration=self.enable_registration,
            hasher=PasswordHasher(4),
        )
        config = FederationConfig(
            SERVER, generate_signing_key("k1"), self.fed_store, hooks=self.client.hooks
        )
        self.sender = FakeSender()
        self.fed = FederationService(config, sender=self.sender)
        yield self.fed.startService()
        yield self.client.start(self.fed)
        self.addCleanup(self._stop)
        port = self.client.ports[0].getHost().port
        self.base = f"http://127.0.0.1:{port}"

    @defer.inlineCallbacks
    def _stop(self) -> Any:
        yield self.fed.stopService()
        yield self.client.stop()

    @defer.inlineCallbacks
    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """``(status, JSON body)`` of ``path`` under ``/_matrix/client/v3/``
        (or an absolute path starting with ``/``)."""
        url = self.base + (path if path.startswith("/") else "/_matrix/client/v3/" + path)
        headers = {b"Content-Type": [b"application/json"]}
        if token is not None:
            headers[b"Authorization"] = [b"Bearer " + token.encode()]
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        resp = yield treq.request(
            method, url, data=data, headers=headers, params=params, pool=self.pool
        )
        content = yield resp.content()
        return resp.code, json.loads(content)

    @defer.inlineCallbacks
    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        code, answer = yield self.call(method, path, body, **kw)
        self.assertEqual(code, 200, answer)
        return answer

    @defer.inlineCallbacks
    def register(self, name: str, password: str = "pw") -> Any:
        """``(user_id, token)`` of a new user."""
        answer = yield self.ok(
            "POST",
            "register",
            {"username": name, "password": password, "auth": {"type": "m.login.dummy"}},
        )
        return answer["user_id"], answer["access_token"]

    @defer.inlineCallbacks
    def room_snapshot(self, room_id: str) -> Any:
        """What a refused request must not change: the room's extremities and state."""
        ext = yield self.fed_store.get_forward_extremities(room_id)
        state = yield self.fed_store.get_current_state(room_id)
        return sorted(ext), dict(state)

    @defer.inlineCallbacks
    def messages(self, room_id: str) -> Any:
        ext = yield self.fed_store.get_forward_extremities(room_id)
        events = yield self.fed_store.backfill(room_id, ext, 500)
        return [
            e.event["content"].get("body") for e in events if e.event["type"] == "m.room.message"
        ]
