"""The client API's side of :class:`fedlib.hooks.IFederationHooks`.

Everything the client API learns about rooms comes through these hooks, as it
would for any embedder: events accepted into rooms, joins of remote rooms,
invites from other servers. Each is given a position in the client API's own
stream (:class:`fedlib.clientapi.store.IClientStore`) and wakes the ``/sync``
requests waiting for news (:class:`Notifier`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import defer

from fedlib.hooks import NewPdu, NullHooks
from fedlib.storage.interface import StateMap

__all__ = ["ClientHooks", "Notifier", "strip_event"]

log = logging.getLogger(__name__)


def strip_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The client-server API's stripped state event."""
    return {
        "type": event.get("type"),
        "state_key": event.get("state_key", ""),
        "sender": event.get("sender"),
        "content": event.get("content", {}),
    }


class Notifier:
    """Wakes long-polling ``/sync`` requests when the stream moves on."""

    def __init__(self) -> None:
        self.head = 0
        self._waiters: list[defer.Deferred[int]] = []

    def advance(self, head: int) -> None:
        if head <= self.head:
            return
        self.head = head
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(head)

    def wait(self) -> defer.Deferred[int]:
        """Fires with the new head at the next :meth:`advance`; cancelling it
        (timeout, client gone) just forgets it."""

        def cancel(d: defer.Deferred[int]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        d: defer.Deferred[int] = defer.Deferred(cancel)
        self._waiters.append(d)
        return d


def _member_change(event: Mapping[str, Any], server_suffix: str) -> tuple[str, str] | None:
    if event.get("type") != "m.room.member":
        return None
    target = event.get("state_key")
    content = event.get("content")
    if not isinstance(target, str) or not target.endswith(server_suffix):
        return None
    if not isinstance(content, Mapping) or not isinstance(content.get("membership"), str):
        return None
    return target, str(content["membership"])


class ClientHooks(NullHooks):
    """Hooks that feed the client API. ``store`` is the client API's
    :class:`~fedlib.clientapi.store.IClientStore`; the federation store is set in
    :attr:`federation_store` once the service exists (it is built after its hooks)."""

    def __init__(self, server_name: str, store: Any, notifier: Notifier) -> None:
        self.server_name = server_name
        self.store = store
        self.notifier = notifier
        self.federation_store: Any = None
        self._suffix = ":" + server_name

    @defer.inlineCallbacks
    def _append(
        self,
        room_id: str,
        event_ids: Sequence[str],
        memberships: Sequence[tuple[str, str, str | None]],
    ) -> Any:
        head = yield self.store.append_events(room_id, event_ids, memberships)
        self.notifier.advance(head)

    def on_new_pdus(self, room_id: str, pdus: Sequence[NewPdu]) -> Any:
        changes: list[tuple[str, str, str | None]] = []
        for pdu in pdus:
            change = _member_change(pdu.event, self._suffix)
            if change is not None:
                changes.append((change[0], change[1], pdu.event_id))
        return self._append(room_id, [p.event_id for p in pdus], changes)

    @defer.inlineCallbacks
    def on_room_joined(self, room_id: str, room_version: str, state: StateMap) -> Any:
        # The join event of a remote room arrives here rather than through
        # on_new_pdus: record the local members it names.
        local = [
            eid
            for (etype, skey), eid in state.items()
            if etype == "m.room.member" and skey.endswith(self._suffix)
        ]
        changes: list[tuple[str, str, str | None]] = []
        if self.federation_store is not None and local:
            events = yield self.federation_store.get_events(local)
            for eid in local:
                stored = events.get(eid)
                if stored is None:
                    continue
                change = _member_change(stored.event, self._suffix)
                if change is not None:
                    changes.append((change[0], change[1], eid))
        yield self._append(room_id, [], changes)

    @defer.inlineCallbacks
    def on_invite(
        self,
        room_version: str,
        event: Mapping[str, Any],
        invite_room_state: Sequence[Mapping[str, Any]],
    ) -> Any:
        target = event.get("state_key")
        room_id = event.get("room_id")
        if not isinstance(target, str) or not isinstance(room_id, str):
            return False
        account = yield self.store.get_account(target)
        if account is None:
            return False
        stripped = [strip_event(e) for e in invite_room_state if isinstance(e, Mapping)]
        head = yield self.store.set_stripped_membership(
            room_id, target, "invite", dict(event), stripped
        )
        self.notifier.advance(head)
        return True

    @defer.inlineCallbacks
    def is_local_user_known(self, user_id: str) -> Any:
        return (yield self.store.get_account(user_id)) is not None

    @defer.inlineCallbacks
    def query_directory(self, room_alias: str) -> Any:
        found = yield self.store.get_alias(room_alias)
        if found is None:
            return None
        servers = [self.server_name]
        if self.federation_store is not None:
            joined = yield self.federation_store.get_joined_servers(found[0])
            servers += sorted(s for s in joined if s != self.server_name)
        return found[0], servers

    def get_public_rooms(self, limit: int | None, since: str | None, search_filter: Any) -> Any:
        """The rooms published with ``visibility: public`` (at creation or through
        ``PUT /directory/list/room/{roomId}``), as the client ``/publicRooms`` lists them."""
        from fedlib.clientapi.directory import public_rooms

        if self.federation_store is None:
            return {"chunk": [], "total_room_count_estimate": 0}
        return defer.Deferred.fromCoroutine(
            public_rooms(self.store, self.federation_store, limit, since, search_filter)
        )

    @defer.inlineCallbacks
    def query_profile(self, user_id: str, field: str | None) -> Any:
        if (yield self.store.get_account(user_id)) is None:
            return None
        # No profiles yet: the localpart stands in for a display name.
        profile = {"displayname": user_id[1:].split(":", 1)[0]}
        return {field: profile[field]} if field in profile else ({} if field else profile)
