"""Fakes and a harness for driving the federation Resource tree over real HTTP parsing."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from fedlib.canonical import decode_json, encode_canonical_json
from fedlib.crypto.keys import generate_signing_key, get_verify_key, key_id
from fedlib.crypto.request_auth import sign_request
from fedlib.crypto.signing import required_signers, sign_event, verify_event_signatures
from fedlib.errors import SignatureError
from fedlib.events.hashing import compute_event_id
from fedlib.events.room_versions import get_room_version
from fedlib.hooks import NullHooks
from fedlib.keyring import IKeyring
from fedlib.server.config import ServerConfig
from fedlib.server.context import ServerContext
from fedlib.server.resource import build_context_resource, build_site
from fedlib.storage.interface import EventStatus, PersistItem
from fedlib.storage.memory import MemoryStore

OUR_NAME = "us.test"


class Remote:
    """A remote server with a signing key, building signed requests and events."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = generate_signing_key("r1")

    def sign_event(self, room_version: str, event: Mapping[str, Any]) -> dict[str, Any]:
        return sign_event(room_version, event, self.name, self.key)


@implementer(IKeyring)
class FakeKeyring:
    """IKeyring over fixed keys; records lookups."""

    def __init__(self, *servers: Remote) -> None:
        self.keys: dict[str, dict[str, Any]] = {}
        self.lookups: list[str] = []
        for s in servers:
            self.add(s)

    def add(self, server: Remote) -> None:
        self.keys[server.name] = {key_id(server.key): get_verify_key(server.key)}

    def get_verify_keys(
        self, server_name: str, key_ids: Iterable[str], valid_at_ts: int | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        self.lookups.append(server_name)
        known = self.keys.get(server_name, {})
        return defer.succeed({k: known[k] for k in key_ids if k in known})

    def verify_json_for_server(self, server_name: str, obj: Any, valid_at_ts: Any = None) -> Any:
        raise NotImplementedError

    def verify_event(self, room_version: str, event: Mapping[str, Any]) -> defer.Deferred[None]:
        try:
            needed = required_signers(get_room_version(room_version), event)
            verify_event_signatures(room_version, event, {s: self.keys.get(s, {}) for s in needed})
        except SignatureError:
            return defer.fail()
        return defer.succeed(None)


class RecordingHooks(NullHooks):
    def __init__(self) -> None:
        self.new_pdus: list[Any] = []
        self.edus: list[tuple[str, str, Any]] = []
        self.soft_failed: list[str] = []
        self.rejected: list[str] = []
        self.invites: list[Any] = []
        self.accept_invites = True
        self.directory: dict[str, tuple[str, list[str]]] = {}
        self.profiles: dict[str, dict[str, Any]] = {}

    def on_new_pdus(self, room_id: str, pdus: Any) -> Any:
        self.new_pdus.extend(pdus)

    def on_soft_failed(self, room_id: str, event_id: str, event: Any, reason: str) -> Any:
        self.soft_failed.append(event_id)

    def on_rejected(self, room_id: str, event_id: str, event: Any, reason: str) -> Any:
        self.rejected.append(event_id)

    def on_edu(self, origin: str, edu_type: str, content: Any) -> Any:
        self.edus.append((origin, edu_type, content))

    def on_invite(self, room_version: str, event: Any, invite_room_state: Any) -> Any:
        self.invites.append(event)
        return self.accept_invites

    def query_directory(self, room_alias: str) -> Any:
        return self.directory.get(room_alias)

    def query_profile(self, user_id: str, field: str | None) -> Any:
        profile = self.profiles.get(user_id)
        if profile is None or field is None:
            return profile
        return {field: profile[field]} if field in profile else {}


@attrs.frozen
class Response:
    code: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return decode_json(self.body)

    @property
    def errcode(self) -> str | None:
        j = self.json
        return j.get("errcode") if isinstance(j, dict) else None


class Harness:
    """One fedlib server (MemoryStore, fake keyring, recording hooks, fake clock)."""

    def __init__(self, *remotes: Remote, **config: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.us = Remote(OUR_NAME)
        self.remotes = list(remotes)
        self.keyring = FakeKeyring(self.us, *remotes)
        self.store = MemoryStore(clock=lambda: int(self.clock.seconds() * 1000))
        self.hooks = RecordingHooks()
        self.seen_origins: list[str] = []
        self.config = ServerConfig(server_name=OUR_NAME, signing_key=self.us.key, **config)
        self.gaps: Any = None
        self.ctx = ServerContext.create(
            self.config,
            self.keyring,
            self.store,
            self.hooks,
            clock=self.clock,
            on_origin_authenticated=self.seen_origins.append,
        )
        self.resource = build_context_resource(self.ctx)
        self.site = build_site(self.resource, self.config.max_body_bytes, reactor=self.clock)

    def set_gaps(self, gaps: Any) -> None:
        self.ctx.gaps = gaps

    def raw(self, data: bytes) -> Response:
        transport = StringTransport()
        proto = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        assert proto is not None
        proto.makeConnection(transport)
        proto.dataReceived(data)
        for _ in range(100):
            if b"\r\n\r\n" in transport.value():
                break
            self.clock.advance(0.1)
        return _parse_response(transport.value())

    def request(
        self,
        method: str,
        path: str,
        content: Any = None,
        *,
        origin: Remote | None = None,
        sign: bool = True,
        destination: str | None = None,
        key: Any = None,
        body: bytes | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
        auth_header: str | None = None,
    ) -> Response:
        if origin is None and self.remotes:
            origin = self.remotes[0]
        data = (
            body
            if body is not None
            else (b"" if content is None else encode_canonical_json(content))
        )
        lines = [f"{method} {path} HTTP/1.1", "Host: us.test", f"Content-Length: {len(data)}"]
        if auth_header is not None:
            lines.append(f"Authorization: {auth_header}")
        elif sign and origin is not None:
            lines.append(
                "Authorization: "
                + sign_request(
                    method,
                    path,
                    origin.name,
                    destination or OUR_NAME,
                    key or origin.key,
                    content,
                )
            )
        if data:
            lines.append("Content-Type: application/json")
        lines.extend(f"{k}: {v}" for k, v in extra_headers)
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + data
        return self.raw(raw)

    # -- store inspection ------------------------------------------------------

    def snapshot(self) -> Any:
        """Everything observable that a rejected request must not change."""
        s = self.store
        return (
            dict(s._events),
            {k: dict(v) for k, v in s._current.items()},
            {k: set(v) for k, v in s._extremities.items()},
            {k: v.response for k, v in s._txns.items()},
            dict(s._rooms),
            dict(s._stripped),
            len(self.hooks.new_pdus),
            len(self.hooks.edus),
            # Nothing sent: the outbound queues are untouched.
            {k: dict(v) for k, v in s._pdu_queue.items()},
            {k: list(v) for k, v in s._edu_queue.items()},
        )


def _parse_response(data: bytes) -> Response:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no response: {data[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", len(body)))
    return Response(code, headers, body[:length])


# -- rooms ---------------------------------------------------------------------

_ts = itertools.count(1_700_000_000_000)


class RoomBuilder:
    """Builds a room's DAG, signing each event by its sender's server."""

    def __init__(self, room_version: str, servers: Mapping[str, Remote]) -> None:
        self.version = room_version
        self.servers = dict(servers)
        self.events: dict[str, dict[str, Any]] = {}
        self.state: dict[tuple[str, str], str] = {}
        self.room_id = ""
        self.head: list[str] = []
        self.depth = 0

    def _server(self, user_id: str) -> Remote:
        return self.servers[user_id.split(":", 1)[1]]

    def make(
        self,
        etype: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        prev: list[str] | None = None,
        auth: list[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        signer: Remote | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Build (without adding) an event on top of the current head and state."""
        from fedlib.auth.rules import auth_types_for_event

        version = get_room_version(self.version)
        ev: dict[str, Any] = {
            "type": etype,
            "sender": sender,
            "content": content,
            "origin_server_ts": next(_ts),
            "depth": self.depth + 1,
            "prev_events": list(self.head) if prev is None else prev,
            "auth_events": [],
        }
        if not version.room_id_is_create_hash or etype != "m.room.create":
            ev["room_id"] = self.room_id
        if state_key is not None:
            ev["state_key"] = state_key
        if auth is None:
            keys = auth_types_for_event(self.version, ev)
            auth = [self.state[k] for k in sorted(keys) if k in self.state]
        ev["auth_events"] = auth
        if version.event_id_in_event:
            ev["event_id"] = f"${next(_ts)}:{sender.split(':', 1)[1]}"
            ev["prev_events"] = [[e, {"sha256": "x"}] for e in ev["prev_events"]]
            ev["auth_events"] = [[e, {"sha256": "x"}] for e in ev["auth_events"]]
        if extra:
            ev.update(extra)
        signed = (signer or self._server(sender)).sign_event(self.version, ev)
        return compute_event_id(self.version, signed), signed

    def add(
        self,
        etype: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = None,
        **kw: Any,
    ) -> str:
        event_id, ev = self.make(etype, sender, content, state_key, **kw)
        self.accept(event_id, ev)
        return event_id

    def accept(self, event_id: str, ev: dict[str, Any]) -> None:
        self.events[event_id] = ev
        if ev["type"] == "m.room.create" and not self.room_id:
            version = get_room_version(self.version)
            if version.room_id_is_create_hash:
                self.room_id = "!" + event_id[1:]
            else:
                self.room_id = ev["room_id"]
        if "state_key" in ev:
            self.state[(ev["type"], ev["state_key"])] = event_id
        self.head = [event_id]
        self.depth = max(self.depth, ev["depth"])

    def create_room(
        self, creator: str, join_rule: str = "public", extra_members: Iterable[str] = ()
    ) -> None:
        version = get_room_version(self.version)
        content: dict[str, Any] = {"room_version": self.version}
        if not version.implicit_room_creator:
            content["creator"] = creator
        extra: dict[str, Any] = {}
        if not version.room_id_is_create_hash:
            self.room_id = f"!room{next(_ts)}:{creator.split(':', 1)[1]}"
        self.add("m.room.create", creator, content, "", extra=extra)
        self.add("m.room.member", creator, {"membership": "join"}, creator)
        users = {creator: 100}
        if version.privileged_creators:
            users = {}
        self.add("m.room.power_levels", creator, {"users": users, "users_default": 0}, "")
        self.add("m.room.join_rules", creator, {"join_rule": join_rule}, "")
        self.add("m.room.history_visibility", creator, {"history_visibility": "shared"}, "")
        for member in extra_members:
            self.add("m.room.member", member, {"membership": "join"}, member)

    def persist_all(self, store: MemoryStore) -> defer.Deferred[Any]:
        """Store every event as accepted with the builder's running state."""
        items = []
        state: dict[tuple[str, str], str] = {}
        for event_id, ev in self.events.items():
            items.append(
                PersistItem(
                    event=ev,
                    event_id=event_id,
                    status=EventStatus.ACCEPTED,
                    state_before=dict(state),
                )
            )
            if "state_key" in ev:
                state[(ev["type"], ev["state_key"])] = event_id
        d = store.store_room(self.room_id, self.version)
        d.addCallback(lambda _: store.persist_events(self.room_id, items))
        return d
