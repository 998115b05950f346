"""An in-process fake homeserver to federate with in an embedder's trial tests.

:class:`FakeRemoteServer` listens with TLS on 127.0.0.1, has its own signing key
(served at ``/_matrix/key/v2/server``), hosts rooms of its own, records every
request it receives and answers them from its rooms unless a test scripted
another answer with :meth:`FakeRemoteServer.respond`. It can also act: send
transactions and invites to the server under test with :attr:`client`.

It is deliberately lenient: it checks nothing about incoming requests beyond
parsing them (the server under test is what is being tested), and it never
resolves a conflict: its rooms are single chains.
"""

from __future__ import annotations

import json
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from fedlib.auth.rules import select_auth_events
from fedlib.canonical import encode_canonical_json
from fedlib.crypto.keys import encode_verify_key_base64, generate_signing_key, get_verify_key
from fedlib.crypto.request_auth import parse_authorization
from fedlib.crypto.signing import sign_event, sign_json
from fedlib.errors import MatrixError
from fedlib.events.hashing import event_id_with
from fedlib.events.room_versions import get_room_version
from fedlib.rooms.builder import (
    BuiltEvent,
    Preset,
    build_event,
    build_room,
    event_refs,
    new_room_id,
    room_creation_templates,
)
from fedlib.testing.loopback import _Tracker, tls_endpoint
from fedlib.tls import ensure_self_signed

__all__ = ["FakeRemoteServer", "FakeRoom", "ReceivedRequest"]

log = Logger()

StateKey = tuple[str, str]
#: What a scripted handler may give: a body (200), ``(code, body)``, a
#: MatrixError, or a Deferred of one of those.
Answer = Any


@attrs.frozen(slots=True)
class ReceivedRequest:
    """One request the fake received, as the test inspects it."""

    method: str
    #: The decoded path, e.g. ``/_matrix/federation/v1/send/123``.
    path: str
    query: Mapping[str, list[str]]
    content: Any
    #: The X-Matrix origin claimed (not verified), or ``None``.
    origin: str | None
    #: Values of the path's ``{placeholders}`` for the route that matched.
    params: Mapping[str, str] = attrs.field(factory=dict)


@attrs.define(eq=False)
class FakeRoom:
    """A room the fake hosts or knows: its events in order and its current state."""

    room_id: str
    room_version: str
    events: dict[str, Mapping[str, Any]] = attrs.field(factory=dict)
    order: list[str] = attrs.field(factory=list)
    state: dict[StateKey, str] = attrs.field(factory=dict)
    state_before: dict[str, dict[StateKey, str]] = attrs.field(factory=dict)

    @property
    def last(self) -> str:
        return self.order[-1]

    def add(self, event_id: str, event: Mapping[str, Any]) -> None:
        if event_id in self.events:
            return
        self.events[event_id] = event
        self.order.append(event_id)
        self.state_before[event_id] = dict(self.state)
        if isinstance(event.get("state_key"), str):
            self.state[(event["type"], event["state_key"])] = event_id

    def auth_chain(self, event_ids: Iterable[str]) -> list[Mapping[str, Any]]:
        """The events reached from ``event_ids`` through auth_events (known ones)."""
        version = get_room_version(self.room_version)
        seen: set[str] = set()
        todo = list(event_ids)
        while todo:
            eid = todo.pop()
            ev = self.events.get(eid)
            if ev is None:
                continue
            for ref in ev.get("auth_events", []):
                aid = ref[0] if version.event_id_in_event else ref
                if aid not in seen:
                    seen.add(aid)
                    todo.append(aid)
        return [self.events[e] for e in self.order if e in seen]

    def members(self, membership: str = "join") -> set[str]:
        return {
            sk
            for (t, sk), eid in self.state.items()
            if t == "m.room.member" and self.events[eid]["content"].get("membership") == membership
        }


_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+)\}")


def _compile(template: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(template)
    regex = ""
    for i, part in enumerate(parts):
        regex += f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part)
    return re.compile(f"^{regex}$")


class _Resource(Resource):
    isLeaf = True

    def __init__(self, fake: FakeRemoteServer) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.fake = fake

    def render(self, req: Request) -> Any:  # type: ignore[override]
        request: Any = req  # twisted.web.server.Request is untyped
        d = defer.maybeDeferred(self.fake._dispatch, req)

        def done(result: tuple[int, Any]) -> None:
            code, body = result
            data = encode_canonical_json(body)
            request.setResponseCode(code)
            request.setHeader(b"Content-Type", b"application/json")
            request.write(data)
            request.finish()

        def failed(f: Any) -> None:
            log.failure("Fake server handler failed", f)
            done((500, {"errcode": "M_UNKNOWN", "error": f.getErrorMessage()}))

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


class FakeRemoteServer:
    """A scriptable homeserver on 127.0.0.1 for tests.

    Typical use in a trial test::

        fake = yield FakeRemoteServer.start()
        self.addCleanup(fake.stop)
        room_id = fake.create_room(fake.user("bob"), "10")
        yield fed.join_room(room_id, "@alice:" + fed.config.server_name, [fake.server_name])
        fake.respond("PUT", "/_matrix/federation/v1/send/{txnId}", (500, {}))  # now fail
        yield fake.wait_for(lambda: fake.pdus)
    """

    def __init__(self, reactor: Any = None, directory: str | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self.directory = Path(directory or tempfile.mkdtemp(prefix="fedlib-fake-"))
        self.signing_key = generate_signing_key("fake" + secrets.token_hex(3))
        self.server_name = ""
        self.port: Any = None
        self.client: Any = None
        #: Every request, in arrival order.
        self.received: list[ReceivedRequest] = []
        #: PDUs and EDUs that arrived in ``/send`` transactions, in order.
        self.pdus: list[Mapping[str, Any]] = []
        self.edus: list[Mapping[str, Any]] = []
        #: Invites the fake's users got (and signed), as received.
        self.invites: list[Mapping[str, Any]] = []
        self.rooms: dict[str, FakeRoom] = {}
        self._scripted: list[tuple[str, re.Pattern[str], Callable[[ReceivedRequest], Answer]]] = []
        self._routes: list[tuple[str, re.Pattern[str], Callable[[ReceivedRequest], Answer]]] = []
        self._default_routes()

    # -- lifecycle --------------------------------------------------------------

    @classmethod
    @defer.inlineCallbacks
    def start(cls, reactor: Any = None, port: int = 0) -> Any:
        """Deferred[FakeRemoteServer] listening on 127.0.0.1 with TLS."""
        fake = cls(reactor)
        yield fake.listen(port)
        return fake

    @defer.inlineCallbacks
    def listen(self, port: int = 0) -> Any:
        from fedlib.client.transport import FederationClient

        cert, key = self.directory / "tls.crt", self.directory / "tls.key"
        ensure_self_signed(cert, key, "127.0.0.1")
        site = Site(_Resource(self))  # type: ignore[no-untyped-call]
        site.noisy = False
        self._tracker = _Tracker(site)
        endpoint = serverFromString(self.reactor, tls_endpoint(port, cert, key))  # type: ignore[no-untyped-call]
        self.port = yield endpoint.listen(self._tracker)
        self.server_name = f"127.0.0.1:{self.port.getHost().port}"
        # Names here are IP literals: the client never creates a DNS resolver.
        self.client = FederationClient(
            self.server_name,
            self.signing_key,
            self.reactor,
            verify_tls=False,
            get_retries=0,
        )
        return self

    @defer.inlineCallbacks
    def stop(self) -> Any:
        if self.port is not None:
            yield self.port.stopListening()
            self.port = None
            yield self._tracker.close_all()
        if self.client is not None:
            yield self.client.close_connections()

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    # -- scripting and inspection ---------------------------------------------------

    def respond(self, method: str, path: str, answer: Answer) -> None:
        """Answer ``method path`` (``{name}`` placeholders allowed) with ``answer``
        from now on, before any default: a body, ``(code, body)``, a MatrixError,
        or a callable taking the :class:`ReceivedRequest` and returning one of
        those or a Deferred. The latest script for a path wins."""
        handler = answer if callable(answer) else (lambda _req: answer)
        self._scripted.insert(0, (method.upper(), _compile(path), handler))

    def clear_scripts(self) -> None:
        self._scripted.clear()

    def requests(self, method: str | None = None, path_prefix: str = "") -> list[ReceivedRequest]:
        """The received requests with that method and path prefix."""
        return [
            r
            for r in self.received
            if (method is None or r.method == method.upper()) and r.path.startswith(path_prefix)
        ]

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
    ) -> defer.Deferred[Any]:
        """Deferred firing with ``predicate()``'s first true value, or failing with
        ``TimeoutError`` after ``timeout`` seconds."""
        deadline = self.reactor.seconds() + timeout

        @defer.inlineCallbacks
        def poll() -> Any:
            while True:
                value = predicate()
                if value:
                    return value
                if self.reactor.seconds() > deadline:
                    raise TimeoutError(f"Condition not met within {timeout}s")
                yield task.deferLater(self.reactor, interval, lambda: None)

        d: defer.Deferred[Any] = poll()
        return d

    # -- rooms --------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.reactor.seconds() * 1000)

    def create_room(
        self,
        creator: str,
        room_version: str = "10",
        *,
        preset: Preset | str = Preset.PUBLIC_CHAT,
        **kwargs: Any,
    ) -> str:
        """Create a room hosted by the fake (keyword arguments as for
        :func:`fedlib.rooms.builder.room_creation_templates`); returns its ID."""
        templates = room_creation_templates(room_version, creator, preset=Preset(preset), **kwargs)
        built = build_room(
            room_version,
            creator,
            templates,
            server_name=self.server_name,
            signing_key=self.signing_key,
            origin_server_ts=self._now_ms(),
            room_id=new_room_id(room_version, self.server_name),
        )
        room = FakeRoom(built.room_id, room_version)
        for ev in built.events:
            room.add(ev.event_id, ev.event)
        self.rooms[room.room_id] = room
        return room.room_id

    def create_event(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
    ) -> BuiltEvent:
        """Build, sign and add an event to one of the fake's rooms (after the
        latest event it knows). Use :meth:`send_pdus` to deliver it."""
        room = self.rooms[room_id]
        stub: dict[str, Any] = {"type": event_type, "sender": sender, "content": content}
        if state_key is not None:
            stub["state_key"] = state_key
        last = room.events[room.last]
        built = build_event(
            room.room_version,
            room_id=room_id,
            sender=sender,
            event_type=event_type,
            content=content,
            state_key=state_key,
            prev_event_ids=[room.last],
            auth_event_ids=select_auth_events(room.room_version, stub, room.state),
            depth=int(last["depth"]) + 1,
            origin_server_ts=self._now_ms(),
            server_name=self.server_name,
            signing_key=self.signing_key,
            referenced_events=room.events,
        )
        room.add(built.event_id, built.event)
        return built

    def send_pdus(
        self, destination: str, pdus: Sequence[Mapping[str, Any]], edus: Sequence[Any] = ()
    ) -> defer.Deferred[Any]:
        """PUT one transaction to ``destination``; Deferred[response body]."""
        d: defer.Deferred[Any] = self.client.send_transaction(
            destination, secrets.token_hex(8), list(pdus), list(edus)
        )
        return d

    # -- request handling ------------------------------------------------------------------

    def _dispatch(self, request: Request) -> Any:
        method = request.method.decode("ascii")
        raw_path = urlsplit(request.uri.decode("ascii")).path
        path = unquote(raw_path)
        query = parse_qs(urlsplit(request.uri.decode("ascii")).query)
        body = request.content.read() if request.content is not None else b""
        content = json.loads(body) if body else None
        origin = None
        header = request.getHeader(b"authorization")
        if header:
            try:
                origin = parse_authorization(header).origin
            except MatrixError:
                origin = None
        segments = [unquote(s) for s in raw_path.split("/")]
        decoded = "/".join(segments)
        for routes in (self._scripted, self._routes):
            for m, pattern, handler in routes:
                match = pattern.match(decoded)
                if m == method and match:
                    req = ReceivedRequest(method, path, query, content, origin, match.groupdict())
                    self.received.append(req)
                    d = defer.maybeDeferred(handler, req)
                    d.addCallback(_normalise)
                    d.addErrback(_error)
                    return d
        self.received.append(ReceivedRequest(method, path, query, content, origin))
        return (404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})

    def _route(self, method: str, path: str, handler: Callable[[ReceivedRequest], Answer]) -> None:
        self._routes.append((method, _compile(path), handler))

    def _default_routes(self) -> None:
        fed = "/_matrix/federation"
        self._route("GET", "/_matrix/key/v2/server", self._keys)
        self._route("GET", f"{fed}/v1/version", lambda r: {"server": {"name": "fedlib-fake"}})
        self._route("PUT", f"{fed}/v1/send/{{txnId}}", self._send)
        self._route("GET", f"{fed}/v1/make_join/{{roomId}}/{{userId}}", self._make_join)
        self._route("PUT", f"{fed}/v2/send_join/{{roomId}}/{{eventId}}", self._send_join)
        self._route(
            "GET", f"{fed}/v1/make_knock/{{roomId}}/{{userId}}", lambda r: self._make(r, "knock")
        )
        self._route("PUT", f"{fed}/v1/send_knock/{{roomId}}/{{eventId}}", self._send_knock)
        self._route(
            "GET", f"{fed}/v1/make_leave/{{roomId}}/{{userId}}", lambda r: self._make(r, "leave")
        )
        self._route("PUT", f"{fed}/v2/send_leave/{{roomId}}/{{eventId}}", self._send_leave)
        self._route("PUT", f"{fed}/v2/invite/{{roomId}}/{{eventId}}", self._invite)
        self._route("GET", f"{fed}/v1/event/{{eventId}}", self._event)
        self._route("GET", f"{fed}/v1/state_ids/{{roomId}}", self._state_ids)
        self._route("GET", f"{fed}/v1/state/{{roomId}}", self._state)
        self._route("GET", f"{fed}/v1/event_auth/{{roomId}}/{{eventId}}", self._event_auth)
        self._route("POST", f"{fed}/v1/get_missing_events/{{roomId}}", self._missing)
        self._route("GET", f"{fed}/v1/backfill/{{roomId}}", self._backfill)

    def _keys(self, req: ReceivedRequest) -> Any:
        key = self.signing_key
        return sign_json(
            {
                "server_name": self.server_name,
                "verify_keys": {
                    f"ed25519:{key.version}": {"key": encode_verify_key_base64(get_verify_key(key))}
                },
                "old_verify_keys": {},
                "valid_until_ts": self._now_ms() + 3600_000,
            },
            self.server_name,
            key,
        )

    def _send(self, req: ReceivedRequest) -> Any:
        body = req.content or {}
        results: dict[str, Any] = {}
        for pdu in body.get("pdus", []):
            self.pdus.append(pdu)
            room = self.rooms.get(pdu.get("room_id", ""))
            if room is not None:
                try:
                    eid = event_id_with(get_room_version(room.room_version), pdu)
                    room.add(eid, pdu)
                    results[eid] = {}
                except MatrixError as e:
                    log.info("Fake server ignores a PDU: {e}", e=e)
        self.edus.extend(body.get("edus", []))
        return {"pdus": results}

    def _room(self, room_id: str) -> FakeRoom:
        room = self.rooms.get(room_id)
        if room is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
        return room

    def _make_join(self, req: ReceivedRequest) -> Any:
        return self._make(req, "join")

    def _make(self, req: ReceivedRequest, membership: str) -> Any:
        room = self._room(req.params["roomId"])
        user_id = req.params["userId"]
        versions = req.query.get("ver", ["1"])
        if membership != "leave" and room.room_version not in versions:
            raise MatrixError(
                400,
                "M_INCOMPATIBLE_ROOM_VERSION",
                "Incompatible room version",
                room_version=room.room_version,
            )
        stub = {
            "type": "m.room.member",
            "state_key": user_id,
            "sender": user_id,
            "content": {"membership": membership},
        }
        version = get_room_version(room.room_version)
        last = room.events[room.last]
        event = {
            **stub,
            "room_id": room.room_id,
            "origin_server_ts": self._now_ms(),
            "depth": int(last["depth"]) + 1,
            "prev_events": event_refs(version, [room.last], room.events),
            "auth_events": event_refs(
                version, select_auth_events(room.room_version, stub, room.state), room.events
            ),
        }
        if version.event_id_in_event:
            event["event_id"] = f"${secrets.token_urlsafe(12)}:{self.server_name}"
        return {"room_version": room.room_version, "event": event}

    def _send_join(self, req: ReceivedRequest) -> Any:
        room = self._room(req.params["roomId"])
        event = dict(req.content)
        version = get_room_version(room.room_version)
        event_id = event_id_with(version, event)
        # The resident server signs the join too (needed for restricted joins).
        event = sign_event(room.room_version, event, self.server_name, self.signing_key)
        state_ids = list(room.state.values())
        room.add(event_id, event)
        return {
            "origin": self.server_name,
            "event": event,
            "state": [room.events[e] for e in state_ids],
            "auth_chain": room.auth_chain(state_ids + [event_id]),
            "members_omitted": False,
        }

    def _accept(self, req: ReceivedRequest) -> tuple[FakeRoom, str, dict[str, Any]]:
        room = self._room(req.params["roomId"])
        event = dict(req.content)
        event_id = event_id_with(get_room_version(room.room_version), event)
        room.add(event_id, event)
        return room, event_id, event

    def _send_knock(self, req: ReceivedRequest) -> Any:
        room, _event_id, _event = self._accept(req)
        wanted = ("m.room.create", "m.room.join_rules", "m.room.name", "m.room.topic")
        return {
            "knock_room_state": [
                room.events[eid] for (t, sk), eid in room.state.items() if t in wanted and sk == ""
            ]
        }

    def _send_leave(self, req: ReceivedRequest) -> Any:
        self._accept(req)
        return {}

    def _invite(self, req: ReceivedRequest) -> Any:
        body = req.content
        event = body["event"]
        self.invites.append(event)
        signed = sign_event(body["room_version"], event, self.server_name, self.signing_key)
        # Only the signature is ours: keep the inviter's hashes untouched.
        signed["hashes"] = event["hashes"]
        return {"event": signed}

    def _find(self, event_id: str) -> tuple[FakeRoom, Mapping[str, Any]]:
        for room in self.rooms.values():
            if event_id in room.events:
                return room, room.events[event_id]
        raise MatrixError(404, "M_NOT_FOUND", "Unknown event")

    def _event(self, req: ReceivedRequest) -> Any:
        _room, event = self._find(req.params["eventId"])
        return {"origin": self.server_name, "origin_server_ts": self._now_ms(), "pdus": [event]}

    def _state_ids(self, req: ReceivedRequest) -> Any:
        room = self._room(req.params["roomId"])
        at = req.query.get("event_id", [room.last])[0]
        state = room.state_before.get(at, room.state)
        ids = list(state.values())
        chain = [
            event_id_with(get_room_version(room.room_version), dict(e))
            for e in room.auth_chain(ids)
        ]
        return {"pdu_ids": ids, "auth_chain_ids": chain}

    def _state(self, req: ReceivedRequest) -> Any:
        room = self._room(req.params["roomId"])
        at = req.query.get("event_id", [room.last])[0]
        state = room.state_before.get(at, room.state)
        ids = list(state.values())
        return {
            "pdus": [room.events[e] for e in ids],
            "auth_chain": room.auth_chain(ids),
        }

    def _event_auth(self, req: ReceivedRequest) -> Any:
        room = self._room(req.params["roomId"])
        return {"auth_chain": room.auth_chain([req.params["eventId"]])}

    def _missing(self, req: ReceivedRequest) -> Any:
        room = self._room(req.params["roomId"])
        body = req.content or {}
        earliest = set(body.get("earliest_events", []))
        latest = list(body.get("latest_events", []))
        limit = int(body.get("limit", 10))
        # A chain: everything after the newest of the earliest events, before latest.
        positions = [room.order.index(e) for e in earliest if e in room.events]
        start = max(positions) + 1 if positions else 0
        ends = [room.order.index(e) for e in latest if e in room.events]
        end = min(ends) if ends else len(room.order)
        return {"events": [room.events[e] for e in room.order[start:end][-limit:]]}

    def _backfill(self, req: ReceivedRequest) -> Any:
        room = self._room(req.params["roomId"])
        limit = int(req.query.get("limit", ["10"])[0])
        from_ids = req.query.get("v", [])
        positions = [room.order.index(e) for e in from_ids if e in room.events]
        end = max(positions) + 1 if positions else len(room.order)
        events = [room.events[e] for e in room.order[:end][-limit:]]
        return {"origin": self.server_name, "origin_server_ts": self._now_ms(), "pdus": events}


def _normalise(answer: Any) -> tuple[int, Any]:
    if isinstance(answer, MatrixError):
        return answer.code, answer.to_dict()
    if isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], int):
        return answer
    return 200, answer


def _error(failure: Any) -> tuple[int, Any]:
    if failure.check(MatrixError):
        return _normalise(failure.value)
    log.failure("Fake server handler raised", failure)
    return 500, {"errcode": "M_UNKNOWN", "error": failure.getErrorMessage()}
