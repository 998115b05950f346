"""The membership handshakes with rooms this server is not in.

Spec, server-server API: "Joining Rooms" (``make_join``/``send_join``, with
restricted rooms and partial-state joins), "Knocking upon a room",
"Inviting to a room" and "Leaving Rooms (Rejecting Invites)".

:class:`Handshakes` holds what the handshakes need; the module-level functions
(:func:`join_room`, :func:`knock_room`, :func:`reject_invite`, ...) are the entry
points ``fedlib.service.FederationService`` calls with itself as first argument.

A join trusts nothing the resident server sends: every event of the answer is
format-, signature- and hash-checked (:func:`fedlib.rooms.verify.verify_pdus`)
and then authorised against its own auth events in topological order, the
returned state must authorise the join, and only then is anything persisted.
When a server fails, the next one is tried; when all fail the error names each.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import attrs
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads, IReactorTime

from fedlib.auth.rules import (
    CREATE_KEY,
    auth_types_for_event,
    check_auth_events_list,
    check_auth_with,
)
from fedlib.client.gaps import GapFiller, call_remote, remote_error
from fedlib.crypto.signing import sign_event
from fedlib.errors import AuthError, BadJsonError, MatrixError, UnsupportedRoomVersionError
from fedlib.events.event import ref_ids as _ref_ids
from fedlib.events.hashing import event_id_with
from fedlib.events.redaction import redact_with
from fedlib.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion, get_room_version
from fedlib.rooms.verify import check_pdu_format, verify_pdus
from fedlib.storage.interface import (
    EventStatus,
    PersistItem,
    StateKey,
    StrippedKind,
    StrippedRoom,
)

__all__ = [
    "HandshakeConfig",
    "HandshakeError",
    "Handshakes",
    "JoinResult",
    "KnockResult",
    "check_join_response",
]

log = logging.getLogger(__name__)

#: Checks over more events than this (a big room's send_join answer or state) run
#: in the reactor's thread pool, off the reactor.
PURE_IN_THREAD_ABOVE = 2000


class HandshakeError(MatrixError):
    """Every candidate server failed; ``failures`` says how, per server."""

    def __init__(self, what: str, failures: Mapping[str, MatrixError]) -> None:
        codes = {(e.code, e.errcode) for e in failures.values()}
        # One shared verdict (say every server said 403) is worth passing on as is.
        code, errcode = codes.pop() if len(codes) == 1 else (502, "M_UNKNOWN")
        detail = "; ".join(f"{s}: {e.errcode} {e.msg}" for s, e in failures.items())
        super().__init__(code, errcode, f"{what} failed: {detail or 'no server to ask'}"[:2000])
        self.failures = dict(failures)


@attrs.frozen(slots=True)
class HandshakeConfig:
    """Limits of :class:`Handshakes`; times in seconds."""

    #: ``make_*`` and ``send_knock``/``send_leave``/``invite`` requests.
    request_timeout: float = 60.0
    #: ``send_join`` (the answer of a big room is large and slow to build).
    send_join_timeout: float = 900.0
    #: Most events accepted from one ``send_join`` answer (state plus auth chain).
    max_join_events: int = 500_000
    #: Most stripped state events kept from ``send_knock``.
    max_stripped_state: int = 100
    #: Attempts (over the servers in the room) to fetch the full state after a
    #: partial-state join, and the first delay between them.
    resync_attempts: int = 5
    resync_retry_delay: float = 30.0


@attrs.frozen(slots=True)
class JoinResult:
    """A completed join: the join event is persisted with ``state_before``."""

    room_id: str
    room_version: str
    event_id: str
    event: Mapping[str, Any]
    #: The resident server that helped.
    via: str
    state_before: Mapping[StateKey, str]
    #: Members were omitted (``omit_members``): the full state is being fetched in
    #: the background (:meth:`Handshakes.wait_for_full_state`).
    partial_state: bool
    servers_in_room: tuple[str, ...]


@attrs.frozen(slots=True)
class KnockResult:
    room_id: str
    room_version: str
    event_id: str
    event: Mapping[str, Any]
    via: str
    knock_room_state: tuple[Mapping[str, Any], ...]


def _server_of(identifier: str) -> str:
    _, sep, server = identifier.partition(":")
    if not sep or not server:
        raise BadJsonError(f"No server name in {identifier!r}", errcode="M_INVALID_PARAM")
    return server


def _check_template(
    template: Mapping[str, Any], room_id: str, user_id: str, membership: str
) -> None:
    """The spec's MUST for templates: type, room_id, sender, state_key and membership
    are what we asked for (a resident cannot make us sign something else)."""
    expected = {
        "type": "m.room.member",
        "room_id": room_id,
        "sender": user_id,
        "state_key": user_id,
    }
    for key, value in expected.items():
        if template.get(key) != value:
            raise BadJsonError(f"Template has {key}={template.get(key)!r}, expected {value!r}")
    content = template.get("content")
    if not isinstance(content, dict) or content.get("membership") != membership:
        raise BadJsonError(f"Template is not a {membership} membership event")
    for key in ("prev_events", "auth_events"):
        if not isinstance(template.get(key), list):
            raise BadJsonError(f"Template has no {key} list")
    depth = template.get("depth")
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise BadJsonError("Template has no integer depth")


def _auth_map(
    version: RoomVersion,
    event: Mapping[str, Any],
    auth_ids: Iterable[str],
    events: Mapping[str, Mapping[str, Any]],
    create: tuple[str, Mapping[str, Any]] | None,
) -> dict[StateKey, Mapping[str, Any]]:
    listed = []
    for auth_id in auth_ids:
        auth_event = events.get(auth_id)
        if auth_event is None:
            raise AuthError(f"Auth event {auth_id} is missing")
        listed.append(auth_event)
    return check_auth_events_list(
        version.identifier, event, listed, create_event=create[1] if create else None
    )


def _topological(events: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Event IDs with every event after its auth events; :class:`AuthError` when an
    auth event is missing or the auth graph has a cycle."""
    children: dict[str, list[str]] = {}
    pending: dict[str, int] = {}
    for event_id, event in events.items():
        auth_ids = set(_ref_ids(event.get("auth_events")))
        for auth_id in auth_ids:
            if auth_id not in events:
                raise AuthError(f"Auth event {auth_id} of {event_id} is missing")
            children.setdefault(auth_id, []).append(event_id)
        pending[event_id] = len(auth_ids)
    ready = sorted(e for e, n in pending.items() if n == 0)
    order: list[str] = []
    while ready:
        current = ready.pop()
        order.append(current)
        for child in children.get(current, ()):
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    if len(order) != len(events):
        raise AuthError("The auth events form a cycle")
    return order


def _check_fetched_state(
    version: RoomVersion,
    fetched: Mapping[str, Mapping[str, Any]],
    stored: Mapping[str, Any],
    everything: Mapping[str, Mapping[str, Any]],
    create: tuple[str, Mapping[str, Any]],
) -> list[str]:
    """Check fetched state events (partial-state resync) against their auth events,
    in topological order; returns the order. Raises :class:`AuthError`."""
    order = _topological(
        {e: everything[e] for e in fetched}
        # Stored events were checked when stored: only order against them.
        | {e: {**s.event, "auth_events": []} for e, s in stored.items()}
    )
    for event_id in order:
        if event_id not in fetched:
            continue
        event = fetched[event_id]
        auth = _auth_map(version, event, _ref_ids(event.get("auth_events")), everything, create)
        check_auth_with(version, event, auth, create[0])
    return order


def check_join_response(
    room_version: str,
    room_id: str,
    join_event_id: str,
    join_event: Mapping[str, Any],
    state_events: Mapping[str, Mapping[str, Any]],
    events: Mapping[str, Mapping[str, Any]],
    members_omitted: bool = False,
) -> tuple[dict[StateKey, str], list[str]]:
    """Check a ``send_join`` answer whose events already passed :func:`verify_pdus`.

    ``state_events`` are the ``state`` events by ID, ``events`` those and the
    ``auth_chain`` together. Every event must pass the auth rules against its own
    auth events (all present); the state must hold one event per key and the
    room's create event, whose room version must be ``room_version``; the join
    must pass the auth rules against its auth events and against the returned
    state (when members were omitted, missing membership keys are taken from the
    join's own auth events). Returns the state map and the events in topological
    order. Raises :class:`AuthError` or :class:`BadJsonError`.
    """
    version = get_room_version(room_version)
    state: dict[StateKey, str] = {}
    for event_id, event in state_events.items():
        etype, skey = event.get("type"), event.get("state_key")
        if not isinstance(etype, str) or not isinstance(skey, str):
            raise BadJsonError(f"State holds {event_id}, which is not a state event")
        if (etype, skey) in state:
            raise BadJsonError(f"State holds two events for {(etype, skey)}")
        state[(etype, skey)] = event_id
    create_id = state.get(CREATE_KEY)
    if create_id is None:
        raise BadJsonError("State has no m.room.create event")
    create_event = state_events[create_id]
    create_content = create_event.get("content")
    claimed = create_content.get("room_version", "1") if isinstance(create_content, dict) else None
    if claimed != room_version:
        raise BadJsonError(f"The create event says room version {claimed!r}, not {room_version!r}")
    create = (create_id, create_event)
    order = _topological(events)
    for event_id in order:
        event = events[event_id]
        auth = _auth_map(version, event, _ref_ids(event.get("auth_events")), events, create)
        try:
            check_auth_with(version, event, auth, create_id)
        except AuthError as e:
            raise AuthError(f"{event_id} fails the auth rules: {e.msg}") from None
    own = _auth_map(version, join_event, _ref_ids(join_event.get("auth_events")), events, create)
    try:
        check_auth_with(version, join_event, own, create_id)
    except AuthError as e:
        raise AuthError(f"The join fails the auth rules against its auth events: {e.msg}") from None
    for key in own:
        if (
            key not in state
            and key != CREATE_KEY
            and not (members_omitted and key[0] == "m.room.member")
        ):
            raise AuthError(f"The state lacks {key}, which the join's auth events have")
    by_state: dict[StateKey, Mapping[str, Any]] = {}
    for key in auth_types_for_event(room_version, join_event):
        if key in state:
            by_state[key] = events[state[key]]
        elif members_omitted and key[0] == "m.room.member" and key in own:
            by_state[key] = own[key]
    by_state[CREATE_KEY] = create_event
    try:
        check_auth_with(version, join_event, by_state, create_id)
    except AuthError as e:
        raise AuthError(f"The join fails the auth rules against the state: {e.msg}") from None
    return state, order


class Handshakes:
    """Join, knock, leave and invite with rooms this server is not (fully) in.

    ``client`` is a ``fedlib.client.transport.FederationClient``; ``store`` provides
    ``IFederationStore``; ``keyring`` provides ``IKeyring``; ``hooks`` (optional)
    provides ``IFederationHooks`` and hears ``on_room_joined``; ``local_rooms``
    (optional) is the ``fedlib.rooms.local.LocalRooms`` used by :meth:`invite_user`.
    """

    def __init__(
        self,
        *,
        server_name: str,
        signing_key: Any,
        client: Any,
        store: Any,
        keyring: Any,
        clock: IReactorTime,
        hooks: Any = None,
        gaps: Any = None,
        local_rooms: Any = None,
        config: HandshakeConfig | None = None,
        room_versions: Iterable[str] | None = None,
    ) -> None:
        self.server_name = server_name
        self._key = signing_key
        self._client = client
        self._store = store
        self._keyring = keyring
        self._clock = clock
        self._hooks = hooks
        self._gaps = gaps if gaps is not None else GapFiller(client, store, keyring, clock)
        self._local_rooms = local_rooms
        self.config = config or HandshakeConfig()
        self.room_versions = sorted(
            room_versions if room_versions is not None else KNOWN_ROOM_VERSIONS
        )
        #: room_id -> Deferred of the running full-state fetch (one per partial room).
        self._resyncs: dict[str, defer.Deferred[None]] = {}
        self._waiters: dict[str, list[defer.Deferred[None]]] = {}
        #: room_id -> lock serialising join handshakes into that room.
        self._join_locks: dict[str, defer.DeferredLock] = {}

    # -- helpers ----------------------------------------------------------------

    def _pure(self, size: int, fn: Any, *args: Any) -> defer.Deferred[Any]:
        """``fn(*args)``, pure CPU work over ``size`` events: in the reactor's thread
        pool when it is big and the clock is a reactor with threads (the reactor
        stays responsive), else here and now."""
        if size > PURE_IN_THREAD_ABOVE and IReactorThreads.providedBy(self._clock):
            reactor = cast(IReactorThreads, self._clock)
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)  # type: ignore[arg-type]
        return defer.maybeDeferred(fn, *args)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _candidates(self, room_id: str, via: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
        servers = list(via) + list(extra)
        if ":" in room_id:  # pre-v12 room IDs name the creating server
            servers.append(room_id.split(":", 1)[1])
        return [s for s in dict.fromkeys(servers) if s and s != self.server_name]

    def _remote(self, server: str, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        timeout = kw.pop("_timeout", self.config.request_timeout)
        return call_remote(self._clock, timeout, server, what, fn, server, *args, **kw)

    def _complete(
        self,
        version: RoomVersion,
        template: Mapping[str, Any],
        content_extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Fill in and sign a template: our origin, timestamp and (v1/v2) event ID,
        the template's prev/auth events and depth."""
        event = {
            k: v
            for k, v in template.items()
            if k not in ("signatures", "hashes", "unsigned", "event_id", "origin_server_ts")
        }
        if content_extra:
            event["content"] = {**event["content"], **content_extra}
        event["origin"] = self.server_name
        event["origin_server_ts"] = self._now_ms()
        if version.event_id_in_event:
            event["event_id"] = f"${secrets.token_urlsafe(18)}:{self.server_name}"
        signed = sign_event(version.identifier, event, self.server_name, self._key)
        # A resident could hand us a template that is not a valid event (too many
        # prev_events, oversized content); never sign and send such a thing.
        check_pdu_format(version.identifier, signed)
        return event_id_with(version, signed), signed

    @defer.inlineCallbacks
    def _make(self, kind: str, server: str, room_id: str, user_id: str, membership: str) -> Any:
        if kind == "leave":
            resp = yield self._remote(
                server, "make_leave", self._client.make_leave, room_id, user_id
            )
        else:
            fn = getattr(self._client, f"make_{kind}")
            resp = yield self._remote(
                server, f"make_{kind}", fn, room_id, user_id, self.room_versions
            )
        if resp.room_version not in self.room_versions:
            raise UnsupportedRoomVersionError(resp.room_version, "M_INCOMPATIBLE_ROOM_VERSION")
        version = get_room_version(resp.room_version)
        if kind == "knock" and not version.knock_join_rule:
            raise BadJsonError(f"Room version {version.identifier} does not allow knocking")
        _check_template(resp.event, room_id, user_id, membership)
        return version, resp.event

    # -- join -------------------------------------------------------------------

    @defer.inlineCallbacks
    def join_room(
        self,
        room_id_or_alias: str,
        user_id: str,
        via_servers: Sequence[str] = (),
        omit_members: bool = False,
        content: Mapping[str, Any] | None = None,
    ) -> Any:
        """Deferred[JoinResult]: join ``user_id`` (ours) to a remote room.

        ``room_id_or_alias`` may be an alias, resolved with ``/query/directory`` on
        its server (whose answer adds candidates). Servers are tried in order:
        ``via_servers``, then the directory's, then the room ID's server. With
        ``omit_members`` the join completes with partial state and the members are
        fetched in the background. ``content`` adds fields (e.g. ``displayname``) to
        the membership content. Fails with :class:`HandshakeError` after every
        candidate failed; nothing is persisted for a failed attempt.
        """
        _check_local(user_id, self.server_name)
        extra: list[str] = []
        room_id = room_id_or_alias
        if room_id_or_alias.startswith("#"):
            alias_server = _server_of(room_id_or_alias)
            try:
                directory = yield self._remote(
                    alias_server, "query_directory", self._client.query_directory, room_id_or_alias
                )
            except MatrixError as e:
                raise HandshakeError(f"Resolving {room_id_or_alias}", {alias_server: e}) from None
            room_id = directory.room_id
            extra = list(directory.servers)
        # One handshake per room at a time: two joins persisting the room's state
        # side by side would race on its current state.
        lock = self._join_locks.get(room_id)
        if lock is None:
            lock = self._join_locks[room_id] = defer.DeferredLock()
        yield lock.acquire()
        try:
            result = yield self._join_locked(
                room_id, user_id, via_servers, extra, omit_members, content
            )
        finally:
            lock.release()
            if not lock.locked and not lock.waiting and self._join_locks.get(room_id) is lock:
                del self._join_locks[room_id]
        return result

    @defer.inlineCallbacks
    def _join_locked(
        self,
        room_id: str,
        user_id: str,
        via_servers: Sequence[str],
        extra: Sequence[str],
        omit_members: bool,
        content: Mapping[str, Any] | None,
    ) -> Any:
        failures: dict[str, MatrixError] = {}
        for server in self._candidates(room_id, via_servers, extra):
            try:
                result = yield self._join_via(server, room_id, user_id, omit_members, content)
            except Exception as e:
                failures[server] = _as_matrix_error(server, e, "join")
                log.info("Joining %s via %s failed: %s", room_id, server, failures[server].msg)
                continue
            return result
        raise HandshakeError(f"Joining {room_id}", failures)

    @defer.inlineCallbacks
    def _join_via(
        self,
        server: str,
        room_id: str,
        user_id: str,
        omit_members: bool,
        content: Mapping[str, Any] | None,
    ) -> Any:
        version, template = yield self._make("join", server, room_id, user_id, "join")
        extra = {k: v for k, v in (content or {}).items() if k != "membership"}
        join_id, join_event = self._complete(version, template, extra)
        resp = yield self._remote(
            server,
            "send_join",
            self._client.send_join,
            room_id,
            join_id,
            join_event,
            room_version=version.identifier,
            omit_members=omit_members,
            _timeout=self.config.send_join_timeout,
        )
        join_event = yield self._signed_join(server, version, join_id, join_event, resp.event)
        total = len(resp.state) + len(resp.auth_chain)
        if total > self.config.max_join_events:
            raise BadJsonError(f"{server}: send_join answer has {total} events; too many")
        vid = version.identifier
        # With the clock, the reactor gets a turn between chunks of a big answer.
        state_checks = yield verify_pdus(
            self._keyring, vid, resp.state, room_id=room_id, clock=self._clock
        )
        chain_checks = yield verify_pdus(
            self._keyring, vid, resp.auth_chain, room_id=room_id, clock=self._clock
        )
        # Events failing format or signature checks are dropped, as the spec says
        # (a departed server's key may be unobtainable). Whatever needed a dropped
        # event then fails the auth checks below, and the join with it.
        dropped: list[str] = []
        state_events: dict[str, Mapping[str, Any]] = {}
        events: dict[str, Mapping[str, Any]] = {}
        for checks, into in ((chain_checks, events), (state_checks, state_events)):
            for r in checks:
                if r.ok and r.event_id and r.event is not None:
                    into[r.event_id] = r.event
                elif r.event_id in events:
                    # A bad copy of an event whose good copy we have: keep the good one.
                    into[r.event_id] = events[r.event_id]
                else:
                    dropped.append(str(r.event_id))
                    log.info("%s: dropped event %s: %s", server, r.event_id, r.error)
        if len(dropped) > max(10, total // 2):
            raise MatrixError(
                502, "M_UNKNOWN", f"{server}: {len(dropped)} of {total} events fail verification"
            )
        events.update(state_events)
        try:
            state, order = yield self._pure(
                len(events),
                check_join_response,
                vid,
                room_id,
                join_id,
                join_event,
                state_events,
                events,
                resp.members_omitted,
            )
        except MatrixError as e:
            raise MatrixError(
                502, e.errcode, f"{server}: inconsistent send_join answer: {e.msg}"
            ) from None
        partial = bool(resp.members_omitted)
        yield self._persist_join(room_id, vid, join_id, join_event, state, order, events, partial)
        # The join completes any invite or knock we kept for this user and room.
        for kind in (StrippedKind.INVITE, StrippedKind.KNOCK):
            yield self._store.delete_stripped_room(kind, room_id, user_id)
        servers_in_room = tuple(resp.servers_in_room or ())
        result = JoinResult(
            room_id=room_id,
            room_version=vid,
            event_id=join_id,
            event=join_event,
            via=server,
            state_before=state,
            partial_state=partial,
            servers_in_room=servers_in_room,
        )
        yield self._notify_joined(result)
        if partial:
            self._start_resync(result)
        return result

    @defer.inlineCallbacks
    def _signed_join(
        self,
        server: str,
        version: RoomVersion,
        join_id: str,
        ours: dict[str, Any],
        returned: Mapping[str, Any] | None,
    ) -> Any:
        """The join event to persist: ours, or for a restricted join the resident's
        copy carrying the authorising server's signature (checked)."""
        content = ours.get("content", {})
        authoriser = content.get("join_authorised_via_users_server")
        if returned is None:
            if version.restricted_join_rule and isinstance(authoriser, str):
                raise BadJsonError(f"{server}: restricted join answered without the signed event")
            return ours
        if not isinstance(returned, dict):
            raise BadJsonError(f"{server}: the returned join event is not an object")
        try:
            returned_id = event_id_with(version, dict(returned))
        except MatrixError:
            returned_id = None
        if returned_id != join_id:
            raise BadJsonError(f"{server}: the returned join event is not the one we sent")
        sigs = returned.get("signatures")
        merged = dict(ours)
        merged["signatures"] = {**(sigs if isinstance(sigs, dict) else {}), **ours["signatures"]}
        if version.restricted_join_rule and isinstance(authoriser, str):
            auth_server = _server_of(authoriser)
            yield self._keyring.verify_json_for_server(
                auth_server, redact_with(version, merged), ours["origin_server_ts"]
            )
        return merged

    @defer.inlineCallbacks
    def _persist_join(
        self,
        room_id: str,
        room_version: str,
        join_id: str,
        join_event: Mapping[str, Any],
        state: Mapping[StateKey, str],
        order: Sequence[str],
        events: Mapping[str, Mapping[str, Any]],
        partial: bool,
    ) -> Any:
        existing = yield self._store.get_room_version(room_id)
        if existing is not None and existing != room_version:
            raise BadJsonError(f"{room_id} is stored with room version {existing}")
        yield self._store.store_room(room_id, room_version, partial_state=partial)
        if partial:
            yield self._store.set_partial_state(room_id, True)
        items = [
            PersistItem(event=events[e], event_id=e, status=EventStatus.OUTLIER) for e in order
        ]
        items.append(
            PersistItem(
                event=join_event,
                event_id=join_id,
                status=EventStatus.ACCEPTED,
                state_before=dict(state),
            )
        )
        # One atomic batch: either the whole join is stored or nothing is.
        yield self._store.persist_events(room_id, items)

    @defer.inlineCallbacks
    def _notify_joined(self, result: JoinResult) -> Any:
        if self._hooks is None:
            return
        state = dict(result.state_before)
        state[("m.room.member", result.event["state_key"])] = result.event_id
        try:
            yield defer.maybeDeferred(
                self._hooks.on_room_joined, result.room_id, result.room_version, state
            )
        except Exception:
            # The join is done and stored: a failing hook must not undo that.
            log.exception("on_room_joined hook failed for %s", result.room_id)

    # -- partial state ------------------------------------------------------------

    def wait_for_full_state(self, room_id: str) -> defer.Deferred[None]:
        """Fires when the background fetch of the full state of ``room_id`` is over
        (at once when none is running). Check ``store.is_partial_state`` for the
        outcome."""
        if room_id not in self._resyncs:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.setdefault(room_id, []).append(waiter)
        return waiter

    def _start_resync(self, result: JoinResult) -> None:
        if result.room_id in self._resyncs:
            return
        d = self._resync(result)
        self._resyncs[result.room_id] = d

        def done(outcome: Any) -> None:
            self._resyncs.pop(result.room_id, None)
            for waiter in self._waiters.pop(result.room_id, []):
                waiter.callback(None)
            if hasattr(outcome, "getErrorMessage"):
                log.warning(
                    "Full state of %s not fetched: %s", result.room_id, outcome.getErrorMessage()
                )

        d.addBoth(done)

    @defer.inlineCallbacks
    def _resync(self, result: JoinResult) -> Any:
        """Fetch the state before our join with ``/state_ids`` (then only the events
        we lack), check it, store it and clear the partial-state flag."""
        servers = [result.via] + [s for s in result.servers_in_room if s != self.server_name]
        servers = list(dict.fromkeys(servers))
        delay = self.config.resync_retry_delay
        last: MatrixError | None = None
        for attempt in range(self.config.resync_attempts):
            server = servers[attempt % len(servers)]
            try:
                yield self._resync_from(server, result)
                return
            except Exception as e:
                last = e if isinstance(e, MatrixError) else remote_error(server, e, "state_ids")
                log.info(
                    "Fetching full state of %s from %s failed: %s", result.room_id, server, last.msg
                )
            yield _sleep(self._clock, delay)
            delay = min(delay * 2, 3600.0)
        raise last or MatrixError(502, "M_UNKNOWN", "No server to fetch the state from")

    @defer.inlineCallbacks
    def _resync_from(self, server: str, result: JoinResult) -> Any:
        room_id, vid = result.room_id, result.room_version
        version = get_room_version(vid)
        answer = yield self._gaps.fetch_state_at(server, room_id, result.event_id)
        # What the server sent must agree with what the join already established.
        for key, event_id in result.state_before.items():
            if answer.state.get(key) != event_id:
                raise MatrixError(502, "M_UNKNOWN", f"{server}: state disagrees at {key}")
        fetched = {e: r.event for e, r in answer.events.items() if r.event is not None}
        missing_auth = {
            a
            for ev in fetched.values()
            for a in _ref_ids(ev.get("auth_events"))
            if a not in fetched
        }
        stored = yield self._store.get_events(missing_auth)
        lacking = [a for a in missing_auth if a not in stored]
        if lacking:
            more = yield self._gaps.fetch_auth_events(server, room_id, lacking)
            fetched.update({e: r.event for e, r in more.items() if r.event is not None})
            if len(more) != len(lacking):
                raise MatrixError(502, "M_UNKNOWN", f"{server}: auth events missing from state")
        everything: dict[str, Mapping[str, Any]] = {e: s.event for e, s in stored.items()}
        everything.update(fetched)
        create_id = result.state_before[CREATE_KEY]
        create_rows = yield self._store.get_events([create_id])
        create = (create_id, create_rows[create_id].event)
        try:
            order = yield self._pure(
                len(fetched), _check_fetched_state, version, fetched, stored, everything, create
            )
        except AuthError as e:
            raise MatrixError(
                502, "M_UNKNOWN", f"{server}: state fails the auth rules: {e.msg}"
            ) from None
        current = yield self._store.get_current_state(room_id)
        full = dict(answer.state)
        # Events accepted since the join are newer than the state before it.
        full.update(current)
        items = [
            PersistItem(event=fetched[e], event_id=e, status=EventStatus.OUTLIER)
            for e in order
            if e in fetched
        ]
        yield self._store.persist_events(room_id, items, current_state=full)
        yield self._store.set_partial_state(room_id, False)

    # -- knock, leave, invite ----------------------------------------------------------

    @defer.inlineCallbacks
    def knock_room(
        self,
        room_id: str,
        user_id: str,
        via_servers: Sequence[str] = (),
        reason: str | None = None,
    ) -> Any:
        """Deferred[KnockResult]: knock on a remote room; the ``knock_room_state`` is
        stored (``StrippedKind.KNOCK``) for the embedder."""

        def check(server: str, answer: object) -> tuple[Mapping[str, Any], ...]:
            return _check_stripped(server, answer, self.config.max_stripped_state)

        server, version, event_id, event, stripped = yield self._make_and_send(
            "knock", room_id, user_id, via_servers, reason, self._client.send_knock, check
        )
        yield self._store.store_stripped_room(
            StrippedRoom(
                kind=StrippedKind.KNOCK,
                room_id=room_id,
                user_id=user_id,
                room_version=version.identifier,
                event=event,
                stripped_state=stripped,
            )
        )
        return KnockResult(room_id, version.identifier, event_id, event, server, stripped)

    @defer.inlineCallbacks
    def leave_room(
        self,
        room_id: str,
        user_id: str,
        via_servers: Sequence[str] = (),
        reason: str | None = None,
    ) -> Any:
        """Deferred[event_id]: leave a room this server is *not* in (reject an invite,
        rescind a knock) with ``make_leave``/``send_leave``. A room we are in is left
        with a local event instead (``LocalRooms.leave``). Any stored invite or knock
        of ``user_id`` for the room is forgotten."""
        _, _, event_id, _, _ = yield self._make_and_send(
            "leave", room_id, user_id, via_servers, reason, self._client.send_leave
        )
        for kind in (StrippedKind.INVITE, StrippedKind.KNOCK):
            yield self._store.delete_stripped_room(kind, room_id, user_id)
        return event_id

    @defer.inlineCallbacks
    def _make_and_send(
        self,
        membership: str,
        room_id: str,
        user_id: str,
        via_servers: Sequence[str],
        reason: str | None,
        send: Any,
        check_answer: Any = None,
    ) -> Any:
        """The make_/send_ handshake for a knock or leave, trying each candidate
        server in turn. Deferred[(server, version, event_id, event, checked answer)];
        :class:`HandshakeError` naming every server's failure when none succeeds."""
        _check_local(user_id, self.server_name)
        failures: dict[str, MatrixError] = {}
        extra = {"reason": reason} if reason is not None else None
        for server in self._candidates(room_id, via_servers):
            try:
                version, template = yield self._make(
                    membership, server, room_id, user_id, membership
                )
                event_id, event = self._complete(version, template, extra)
                answer = yield self._remote(
                    server, f"send_{membership}", send, room_id, event_id, event
                )
                if check_answer is not None:
                    answer = check_answer(server, answer)
            except Exception as e:
                failures[server] = _as_matrix_error(server, e, membership)
                continue
            return server, version, event_id, event, answer
        what = "Knocking on" if membership == "knock" else "Leaving"
        raise HandshakeError(f"{what} {room_id}", failures)

    @defer.inlineCallbacks
    def reject_invite(
        self,
        room_id: str,
        user_id: str,
        via: Sequence[str] = (),
        reason: str | None = None,
    ) -> Any:
        """Deferred[event_id]: reject ``user_id``'s invite (or rescind its knock) to a
        room we are not in. Besides ``via``, asks the inviting server and the
        servers of the stripped state's senders."""
        hints: list[str] = []
        for kind in (StrippedKind.INVITE, StrippedKind.KNOCK):
            stripped = yield self._store.get_stripped_room(kind, room_id, user_id)
            if stripped is None:
                continue
            for ev in [stripped.event, *stripped.stripped_state]:
                sender = ev.get("sender") if isinstance(ev, Mapping) else None
                if isinstance(sender, str) and ":" in sender:
                    hints.append(sender.split(":", 1)[1])
        result = yield self.leave_room(room_id, user_id, list(via) + hints, reason)
        return result

    @defer.inlineCallbacks
    def remote_invite(
        self,
        destination: str,
        room_version: str,
        event: Mapping[str, Any],
        invite_room_state: Sequence[Mapping[str, Any]],
    ) -> Any:
        """Deferred[dict]: send our signed invite to the invitee's server
        (``/invite`` v2) and return it with that server's signature added, after
        checking the signature (with a key valid at the event's time) and that the
        event was not altered. Usable as ``LocalRooms``' ``remote_inviter``."""
        version = get_room_version(room_version)
        event_id = event_id_with(version, dict(event))
        returned = yield self._remote(
            destination,
            "invite",
            self._client.invite,
            event["room_id"],
            event_id,
            event,
            room_version,
            list(invite_room_state),
        )
        if not isinstance(returned, dict):
            raise BadJsonError(f"{destination}: the invite answer is not an event")
        try:
            same = event_id_with(version, dict(returned)) == event_id
        except MatrixError:
            same = False
        if not same:
            raise BadJsonError(f"{destination}: the returned invite is not the one we sent")
        sigs = returned.get("signatures")
        theirs = sigs.get(destination) if isinstance(sigs, dict) else None
        if not isinstance(theirs, dict) or not theirs:
            raise AuthError(f"{destination} did not sign the invite")
        merged = dict(event)
        merged["signatures"] = {**event.get("signatures", {}), destination: theirs}
        try:
            yield self._keyring.verify_json_for_server(
                destination, redact_with(version, merged), event.get("origin_server_ts")
            )
        except MatrixError:
            raise
        except Exception as e:
            raise remote_error(destination, e, "checking the invite signature") from None
        return merged

    def invite_user(
        self, room_id: str, inviter: str, invitee: str, reason: str | None = None
    ) -> defer.Deferred[str]:
        """Deferred[event_id]: invite a (remote) user into a room we are in. The
        event is built, sent to the invitee's server (:meth:`remote_invite` via
        ``LocalRooms``' ``remote_inviter``), persisted and sent to the room."""
        if self._local_rooms is None:
            return defer.fail(MatrixError(500, "M_UNKNOWN", "No LocalRooms to send invites"))
        d: defer.Deferred[str] = self._local_rooms.invite(room_id, inviter, invitee, reason)
        return d


def _as_matrix_error(server: str, exc: BaseException, what: str) -> MatrixError:
    if isinstance(exc, MatrixError):
        return exc
    # Not a remote verdict: a bug or a store failure. Keep the traceback in the log.
    log.error("%s via %s failed unexpectedly", what, server, exc_info=exc)
    return remote_error(server, exc, what)


def _check_local(user_id: str, server_name: str) -> None:
    if not isinstance(user_id, str) or not user_id.startswith("@"):
        raise BadJsonError(f"Not a user ID: {user_id!r}", errcode="M_INVALID_PARAM")
    if _server_of(user_id) != server_name:
        raise MatrixError(400, "M_INVALID_PARAM", f"{user_id} is not a user of {server_name}")


def _check_stripped(server: str, stripped: object, limit: int) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(stripped, list | tuple):
        raise BadJsonError(f"{server}: knock_room_state is not a list")
    out = []
    for item in list(stripped)[:limit]:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise BadJsonError(f"{server}: knock_room_state holds a malformed event")
        out.append(item)
    return tuple(out)


def _sleep(clock: IReactorTime, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    clock.callLater(seconds, d.callback, None)
    return d
