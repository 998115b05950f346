"""Events created by this server's users: new rooms, messages, state, memberships.

:class:`LocalRooms` turns an embedder's request into a PDU (prev_events from the
forward extremities, auth_events by the selection rules, depth, hashes and
signature, all in :mod:`fedlib.rooms.builder`), authorises it against the room's
current state, persists it with its state, tells the hooks, and queues it to
every other server in the room through the transaction sender.

Everything that touches one room is serialised by a per-room lock, so two local
events of the same room never pick the same prev_events and the room's DAG
stays a chain where only this server writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime

from fedlib.auth.rules import select_auth_events
from fedlib.errors import AuthError, MatrixError, NotFoundError
from fedlib.events.room_versions import get_room_version
from fedlib.hooks import NewPdu, NullHooks
from fedlib.rooms.builder import (
    MAX_PREV_EVENTS,
    BuiltEvent,
    Preset,
    StateTemplate,
    authorise,
    build_event,
    build_room,
    new_room_id,
    room_creation_templates,
)
from fedlib.storage.interface import EventStatus, PersistItem

__all__ = ["INVITE_STATE_TYPES", "LocalRooms", "RemoteInviter"]

log = logging.getLogger(__name__)

T = TypeVar("T")
StateKey = tuple[str, str]

#: The state given to an invitee (or knocker) to recognise the room
#: (client-server API "Stripped state"); since Matrix 1.16 as full PDUs.
INVITE_STATE_TYPES = (
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
)

#: Resolutions over more events than this run in a thread, off the reactor.
RESOLVE_IN_THREAD_ABOVE = 2000

#: ``(destination, room_version, invite_event, invite_room_state) -> Deferred[signed event]``:
#: sends ``/invite`` to the invitee's server and returns the event it signed.
RemoteInviter = Callable[[str, str, Mapping[str, Any], Sequence[Mapping[str, Any]]], Any]


def _server_of(user_id: str) -> str:
    _, sep, server = user_id.partition(":")
    if not user_id.startswith("@") or not sep or not server:
        raise MatrixError(400, "M_INVALID_PARAM", f"Not a user ID: {user_id!r}")
    return server


class LocalRooms:
    """Creates and sends this server's events.

    ``store`` provides ``IFederationStore``; ``sender`` has
    ``send_pdu(event_id, destinations)`` (``fedlib.client.sender.TransactionSender``)
    and may be ``None`` for a server that never sends (tests); ``remote_inviter``
    performs the ``/invite`` handshake for invitees on other servers.
    """

    def __init__(
        self,
        *,
        server_name: str,
        signing_key: Any,
        store: Any,
        clock: IReactorTime,
        sender: Any = None,
        hooks: Any = None,
        remote_inviter: RemoteInviter | None = None,
        room_versions: Iterable[str] | None = None,
        default_room_version: str = "12",
        default_server_acl: Mapping[str, Any] | None = None,
    ) -> None:
        self.server_name = server_name
        self._key = signing_key
        self._store = store
        self._clock = clock
        self._sender = sender
        self._hooks = hooks if hooks is not None else NullHooks()
        self._remote_inviter = remote_inviter
        self._room_versions = set(room_versions) if room_versions is not None else None
        self._default_room_version = default_room_version
        self._default_server_acl = default_server_acl
        self._locks: dict[str, defer.DeferredLock] = {}

    # -- serialisation -----------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def run_locked(self, room_id: str, fn: Callable[[], Any]) -> defer.Deferred[Any]:
        """Run ``fn`` (returning a value or Deferred) holding ``room_id``'s lock.

        Exposed so that other code writing to a room on this server's behalf (a
        join handshake completing, say) can order itself with local events.
        """
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = defer.DeferredLock()

        def release(result: Any) -> Any:
            # Drop idle locks so the dict does not grow with every room ever touched.
            if not lock.locked and not lock.waiting and self._locks.get(room_id) is lock:
                del self._locks[room_id]
            return result

        d: defer.Deferred[Any] = lock.run(fn)
        d.addBoth(release)
        return d

    def _check_local(self, user_id: str) -> None:
        if _server_of(user_id) != self.server_name:
            raise MatrixError(
                400, "M_INVALID_PARAM", f"{user_id} is not a user of {self.server_name}"
            )

    # -- room creation -------------------------------------------------------------

    @defer.inlineCallbacks
    def create_room(
        self,
        creator: str,
        room_version: str | None = None,
        *,
        preset: Preset | str = Preset.PRIVATE_CHAT,
        initial_state: Sequence[StateTemplate | Mapping[str, Any]] = (),
        name: str | None = None,
        topic: str | None = None,
        invite: Sequence[str] = (),
        power_level_content_override: Mapping[str, Any] | None = None,
        additional_creators: Sequence[str] = (),
        creation_content: Mapping[str, Any] | None = None,
    ) -> Any:
        """Create a room; Deferred firing with its room ID.

        Events follow the client-server ``createRoom`` order; ``initial_state``
        entries are :class:`StateTemplate` or ``{"type", "state_key", "content"}``
        dicts. Invitees are invited once the room exists (remote invitees through
        the ``/invite`` handshake); a failed invite is logged, not fatal.
        """
        self._check_local(creator)
        version = room_version or self._default_room_version
        if self._room_versions is not None and version not in self._room_versions:
            raise MatrixError(
                400, "M_UNSUPPORTED_ROOM_VERSION", f"Room version {version} is not enabled"
            )
        get_room_version(version)
        templates = room_creation_templates(
            version,
            creator,
            preset=Preset(preset),
            initial_state=[
                t
                if isinstance(t, StateTemplate)
                else StateTemplate(t["type"], t.get("state_key", ""), t.get("content", {}))
                for t in initial_state
            ],
            name=name,
            topic=topic,
            invite=invite,
            power_level_content_override=power_level_content_override,
            additional_creators=additional_creators,
            creation_content=creation_content,
            server_acl=self._default_server_acl,
        )
        room = build_room(
            version,
            creator,
            templates,
            server_name=self.server_name,
            signing_key=self._key,
            origin_server_ts=self._now_ms(),
            room_id=new_room_id(version, self.server_name),
        )

        def persist() -> Any:
            return self._persist_room(room)

        yield self.run_locked(room.room_id, persist)
        for invitee in invite:
            try:
                yield self.invite(room.room_id, creator, invitee)
            except Exception:
                log.exception("Inviting %s into new room %s failed", invitee, room.room_id)
        return room.room_id

    @defer.inlineCallbacks
    def _persist_room(self, room: Any) -> Any:
        yield self._store.store_room(room.room_id, room.room_version)
        items = [
            PersistItem(e.event, e.event_id, EventStatus.ACCEPTED, state_before=s)
            for e, s in zip(room.events, room.states_before, strict=True)
        ]
        orderings = yield self._store.persist_events(room.room_id, items)
        yield self._notify(room.room_id, room.room_version, items, orderings)

    # -- single events ---------------------------------------------------------------

    def send_event(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        *,
        redacts: str | None = None,
    ) -> defer.Deferred[str]:
        """Create, authorise, persist and send one event; Deferred[event_id].

        Fails with :class:`~fedlib.errors.AuthError` (nothing stored) when the
        room's current state does not allow it, :class:`NotFoundError` for a room
        this server is not in.
        """
        self._check_local(sender)
        return self.run_locked(
            room_id,
            lambda: self._send_locked(room_id, sender, event_type, content, state_key, redacts),
        )

    @defer.inlineCallbacks
    def _prepare(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None,
        redacts: str | None,
    ) -> Any:
        info = yield self._store.get_room(room_id)
        if info is None:
            raise NotFoundError(f"Unknown room {room_id}")
        if info.partial_state:
            # Auth against a partial state could accept what the full state refuses.
            raise MatrixError(
                409, "M_UNKNOWN", f"Room {room_id} is still being joined (partial state)"
            )
        version = info.room_version
        extremities = sorted((yield self._store.get_forward_extremities(room_id)))
        if not extremities:
            raise NotFoundError(f"Room {room_id} has no events")
        prev_stored = yield self._store.get_events(extremities)
        # Newest first, so the cap keeps the events closest to the present.
        prev = sorted(prev_stored.values(), key=lambda e: (-e.depth, e.event_id))
        prev = prev[:MAX_PREV_EVENTS]
        state = yield self._state_before(room_id, version, [e.event_id for e in prev])
        stub: dict[str, Any] = {"type": event_type, "sender": sender, "content": content}
        if state_key is not None:
            stub["state_key"] = state_key
        auth_ids = select_auth_events(version, stub, state)
        wanted = set(auth_ids) | {p.event_id for p in prev}
        create_id = state.get(("m.room.create", ""))
        if create_id is not None:
            wanted.add(create_id)
        stored = yield self._store.get_events(wanted)
        events = {eid: s.event for eid, s in stored.items()}
        depth = max(e.depth for e in prev) + 1
        built = build_event(
            version,
            room_id=room_id,
            sender=sender,
            event_type=event_type,
            content=content,
            state_key=state_key,
            prev_event_ids=[e.event_id for e in prev],
            auth_event_ids=auth_ids,
            depth=depth,
            origin_server_ts=self._now_ms(),
            server_name=self.server_name,
            signing_key=self._key,
            redacts=redacts,
            referenced_events=events,
        )
        authorise(version, built.event, state, events)
        return version, built, state

    @defer.inlineCallbacks
    def _state_before(self, room_id: str, room_version: str, prev_ids: list[str]) -> Any:
        if len(prev_ids) == 1:
            state = yield self._store.get_state_after(prev_ids[0])
            if state is not None:
                return state
        states = yield self._store.get_state_after_events(prev_ids)
        maps = [states[e] for e in prev_ids if e in states]
        if maps and all(m == maps[0] for m in maps[1:]):
            return maps[0]
        resolved = yield self._resolve(room_id, room_version, maps)
        if resolved is not None:
            return resolved
        # No prev event has state (cannot happen for a room we are in): the
        # store's current state is the best answer.
        current = yield self._store.get_current_state(room_id)
        return current

    @defer.inlineCallbacks
    def _resolve(self, room_id: str, room_version: str, maps: list[Any]) -> Any:
        """The state before an event whose prev_events have different states:
        state resolution over the states after each (as the incoming pipeline
        does for remote events)."""
        if not maps:
            return None
        from fedlib.state import resolve

        ids: set[str] = set()
        for m in maps:
            ids.update(m.values())
        chain = yield self._store.get_auth_chain(ids)
        stored = yield self._store.get_events(ids | set(chain))
        rejected = yield self._store.get_rejected(list(stored))
        event_map = {eid: e.event for eid, e in stored.items() if eid not in rejected}
        # Rejected events drop out of the state sets rather than fail the resolution.
        sets = [{k: v for k, v in m.items() if v in event_map} for m in maps]
        if len(event_map) > RESOLVE_IN_THREAD_ABOVE:
            resolved = yield threads.deferToThread(resolve, room_version, sets, event_map)
        else:
            resolved = resolve(room_version, sets, event_map)
        return resolved

    @defer.inlineCallbacks
    def _send_locked(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None,
        redacts: str | None,
        extra_destinations: Iterable[str] = (),
        before_persist: Callable[[str, BuiltEvent], Any] | None = None,
    ) -> Any:
        version, built, state = yield self._prepare(
            room_id, sender, event_type, content, state_key, redacts
        )
        if before_persist is not None:
            replaced = yield before_persist(version, built)
            if replaced is not None:
                built = replaced
        destinations = set((yield self._store.get_joined_servers(room_id)))
        destinations.update(extra_destinations)
        item = PersistItem(built.event, built.event_id, EventStatus.ACCEPTED, state_before=state)
        orderings = yield self._store.persist_events(room_id, [item])
        destinations.update((yield self._store.get_joined_servers(room_id)))
        destinations.discard(self.server_name)
        if self._sender is not None and destinations:
            yield self._sender.send_pdu(built.event_id, sorted(destinations))
        yield self._notify(room_id, version, [item], orderings)
        return built.event_id

    @defer.inlineCallbacks
    def _notify(
        self,
        room_id: str,
        room_version: str,
        items: Sequence[PersistItem],
        orderings: Mapping[str, int] | None,
    ) -> Any:
        pdus = [
            NewPdu(
                event_id=i.event_id,
                room_id=room_id,
                room_version=room_version,
                event=i.event,
                state_before=i.state_before if isinstance(i.state_before, Mapping) else {},
                stream_ordering=(orderings or {}).get(i.event_id, 0),
                local=True,
            )
            for i in items
        ]
        try:
            yield defer.maybeDeferred(self._hooks.on_new_pdus, room_id, pdus)
        except Exception:
            # The events are stored and sent: a failing hook must not undo that.
            log.exception("on_new_pdus hook failed for %s", room_id)

    # -- memberships ------------------------------------------------------------------

    def _membership(
        self,
        room_id: str,
        sender: str,
        target: str,
        membership: str,
        reason: str | None,
        extra: Mapping[str, Any] | None = None,
        before_persist: Callable[[str, BuiltEvent], Any] | None = None,
    ) -> defer.Deferred[str]:
        self._check_local(sender)
        content: dict[str, Any] = {"membership": membership}
        if reason is not None:
            content["reason"] = reason
        content.update(extra or {})
        # The target's server must see its user being kicked or banned even
        # when it has no other member left in the room.
        return self.run_locked(
            room_id,
            lambda: self._send_locked(
                room_id,
                sender,
                "m.room.member",
                content,
                target,
                None,
                extra_destinations=[_server_of(target)],
                before_persist=before_persist,
            ),
        )

    def invite(
        self, room_id: str, sender: str, target: str, reason: str | None = None
    ) -> defer.Deferred[str]:
        """Invite ``target``; for a user of another server, its server signs the
        invite first (``/invite``). Deferred[event_id]."""
        self._check_local(sender)
        target_server = _server_of(target)
        before: Callable[[str, BuiltEvent], Any] | None = None
        if target_server != self.server_name:
            if self._remote_inviter is None:
                raise MatrixError(
                    500, "M_UNKNOWN", "No federation client configured for remote invites"
                )
            before = self._remote_invite(room_id, target_server)
        return self._membership(room_id, sender, target, "invite", reason, before_persist=before)

    def _remote_invite(self, room_id: str, destination: str) -> Callable[[str, BuiltEvent], Any]:
        @defer.inlineCallbacks
        def go(room_version: str, built: BuiltEvent) -> Any:
            invite_state = yield self.invite_room_state(room_id, built.event)
            assert self._remote_inviter is not None
            signed = yield self._remote_inviter(
                destination, room_version, built.event, invite_state
            )
            if not isinstance(signed, Mapping):
                raise MatrixError(502, "M_UNKNOWN", "Bad /invite response")
            # The invitee's server adds its signature and nothing else; keep our
            # own fields and take only the signatures, so a misbehaving server
            # cannot alter the event (its ID would change).
            sigs = signed.get("signatures")
            if not isinstance(sigs, Mapping) or destination not in sigs:
                raise AuthError(f"{destination} did not sign the invite")
            merged = dict(built.event)
            merged["signatures"] = {**built.event["signatures"], destination: sigs[destination]}
            return BuiltEvent(built.event_id, merged)

        return go

    @defer.inlineCallbacks
    def invite_room_state(self, room_id: str, event: Mapping[str, Any] | None = None) -> Any:
        """The PDUs that let an invitee recognise the room (``invite_room_state``):
        the create, join rules, name, avatar, alias, encryption and topic events and
        the inviter's membership."""
        wanted: list[str] = list(INVITE_STATE_TYPES)
        current = yield self._store.get_current_state_events(room_id, wanted + ["m.room.member"])
        out = []
        sender = event.get("sender") if event is not None else None
        for (etype, skey), stored in sorted(current.items()):
            if etype == "m.room.member" and skey != sender:
                continue
            if etype != "m.room.member" and skey != "":
                continue
            out.append(stored.event)
        return out

    def kick(
        self, room_id: str, sender: str, target: str, reason: str | None = None
    ) -> defer.Deferred[str]:
        """Kick ``target`` (a ``leave`` sent by someone else). Deferred[event_id]."""
        return self._membership(room_id, sender, target, "leave", reason)

    def ban(
        self, room_id: str, sender: str, target: str, reason: str | None = None
    ) -> defer.Deferred[str]:
        """Ban ``target``. Deferred[event_id]."""
        return self._membership(room_id, sender, target, "ban", reason)

    def unban(
        self, room_id: str, sender: str, target: str, reason: str | None = None
    ) -> defer.Deferred[str]:
        """Lift ``target``'s ban (membership back to ``leave``). Deferred[event_id]."""
        return self._membership(room_id, sender, target, "leave", reason)

    def leave(self, room_id: str, user_id: str, reason: str | None = None) -> defer.Deferred[str]:
        """``user_id`` leaves a room this server is in. Deferred[event_id].

        (Rejecting an invite to a room this server is not in needs the
        ``make_leave``/``send_leave`` handshake instead.)"""
        return self._membership(room_id, user_id, user_id, "leave", reason)

    def join_local(self, room_id: str, user_id: str) -> defer.Deferred[str]:
        """A local user joins a room this server is already in. Deferred[event_id]."""
        return self._membership(room_id, user_id, user_id, "join", None)
