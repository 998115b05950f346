"""FederationService: lifecycle, own listener, key server and local rooms."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.names import client as dns_client
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from fedlib.config import FederationConfig
from fedlib.crypto.keys import decode_verify_key_base64, generate_signing_key
from fedlib.crypto.signing import verify_json
from fedlib.service import FederationService
from fedlib.storage.memory import MemoryStore


class ClosingStore(MemoryStore):
    closed = False

    def close(self) -> Any:
        self.closed = True
        return super().close()


class ServiceTests(unittest.TestCase):
    def setUp(self) -> None:
        # The default system resolver re-reads resolv.conf on a timer, which
        # trial reports as a dirty reactor; server names here are IP literals.
        self.patch(dns_client, "theResolver", dns_client.Resolver(servers=[("127.0.0.1", 53)]))
        self.pool = HTTPConnectionPool(reactor)
        self.pool.retryAutomatically = False
        self.addCleanup(self.pool.closeCachedConnections)
        self.store = ClosingStore()
        self.key = generate_signing_key("s1")
        config = FederationConfig(
            "127.0.0.1:1",
            self.key,
            self.store,
            listen=("tcp:0:interface=127.0.0.1",),
        )
        self.service = FederationService(config)

    @defer.inlineCallbacks
    def test_lifecycle_and_key_server(self) -> Any:
        yield self.service.startService()
        self.addCleanup(lambda: self.service.running and self.service.stopService())
        self.assertTrue(self.service.running)
        port = self.service.ports[0].getHost().port
        base = f"http://127.0.0.1:{port}"
        resp = yield treq.get(base + "/_matrix/key/v2/server", pool=self.pool)
        self.assertEqual(resp.code, 200)
        body = json.loads((yield resp.content()))
        self.assertEqual(body["server_name"], "127.0.0.1:1")
        verify = decode_verify_key_base64("ed25519", "s1", body["verify_keys"]["ed25519:s1"]["key"])
        verify_json(body, "127.0.0.1:1", verify)
        resp = yield treq.get(base + "/_matrix/federation/v1/version", pool=self.pool)
        self.assertEqual(resp.code, 200)
        self.assertEqual((yield resp.json())["server"]["name"], "fedlib")
        # Federation endpoints refuse unsigned requests.
        resp = yield treq.get(
            base + "/_matrix/federation/v1/query/directory?room_alias=%23a:b", pool=self.pool
        )
        self.assertEqual(resp.code, 401)
        yield resp.content()
        keys = yield self.store.get_own_keys()
        self.assertEqual([k.key_id for k in keys], ["ed25519:s1"])
        yield self.service.stopService()
        self.assertFalse(self.service.running)
        self.assertTrue(self.store.closed)
        self.assertEqual(self.service.ports, [])

    @defer.inlineCallbacks
    def test_bad_listener_fails_start(self) -> Any:
        config = FederationConfig("127.0.0.1:1", self.key, MemoryStore(), listen=("nope:1",))
        svc = FederationService(config)
        with self.assertRaises(ValueError):
            yield svc.startService()
        self.assertFalse(svc.running)

    @defer.inlineCallbacks
    def test_local_rooms_through_service(self) -> Any:
        alice = "@alice:127.0.0.1:1"
        room_id = yield self.service.create_room(alice, "11", name="n")
        eid = yield self.service.send_event(room_id, alice, "m.room.message", {"body": "x"})
        self.assertEqual((yield self.store.get_forward_extremities(room_id)), {eid})
        yield self.service.invite(room_id, alice, "@carol:127.0.0.1:1")
        yield self.service.join_room(room_id, "@carol:127.0.0.1:1")
        members = yield self.store.get_joined_members(room_id)
        self.assertEqual(members, {alice, "@carol:127.0.0.1:1"})
        yield self.service.leave(room_id, "@carol:127.0.0.1:1")
        members = yield self.store.get_joined_members(room_id)
        self.assertEqual(members, {alice})


class MinimalHomeserverExampleTests(unittest.TestCase):
    """docs/examples/minimal_homeserver.py: two instances federate."""

    timeout = 60

    @defer.inlineCallbacks
    def test_two_instances_federate(self) -> Any:
        import importlib.util
        import os
        import socket
        from pathlib import Path

        from fedlib.testing import quiet_dns

        quiet_dns(self)
        path = Path(__file__).parent.parent / "docs" / "examples" / "minimal_homeserver.py"
        spec = importlib.util.spec_from_file_location("minimal_homeserver", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)

        def free_port() -> int:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return int(s.getsockname()[1])

        servers = []
        for _name in ("a", "b"):
            data = os.path.abspath(self.mktemp())
            fed, hooks = yield defer.ensureDeferred(
                mod.build(f"127.0.0.1:{free_port()}", data_dir=data)
            )
            yield fed.startService()
            self.addCleanup(fed.stopService)
            servers.append((fed, hooks, mod.Api(fed, hooks)))
        (fed_a, hooks_a, api_a), (_fed_b, _hooks_b, api_b) = servers

        def call(api: Any, path: str, body: dict[str, Any]) -> Any:
            from twisted.web.test.requesthelper import DummyRequest

            request = DummyRequest([path.encode()])
            request.path = path.encode()
            request.method = b"POST"
            request.content = __import__("io").BytesIO(json.dumps(body).encode())
            return defer.ensureDeferred(api.handle(request))

        code, created = yield call(api_a, "/rooms", {"user": "alice", "name": "demo"})
        self.assertEqual(code, 200)
        room = created["room_id"]
        yield call(api_b, "/join", {"user": "bob", "room": room, "via": [fed_a.config.server_name]})
        yield call(api_b, "/send", {"user": "bob", "room": room, "body": "hello from b"})
        from twisted.internet import task

        for _ in range(200):
            if any(e["content"].get("body") == "hello from b" for e in hooks_a.timeline[room]):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        bodies = [e["content"].get("body") for e in hooks_a.timeline[room]]
        self.assertIn("hello from b", bodies)
