"""What fedlib asks of, and tells, the homeserver embedding it.

:class:`IFederationHooks` is the one interface an embedder implements to learn
about federation traffic (new events, invites, EDUs) and to answer the queries
only it can answer (directory, profiles, public rooms, hierarchy, devices).

Every method may return a plain value or a :class:`~twisted.internet.defer.Deferred`
of it; fedlib calls hooks through ``defer.maybeDeferred``, so an exception (or a
failed Deferred) is logged and treated like the method's neutral answer where
one exists. Hooks are called on the reactor thread; do not block in them.

Subclass :class:`NullHooks` and override only what you need: it implements the
whole interface with answers that are correct for a server with no users.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from zope.interface import Interface, implementer

from fedlib.storage.interface import StateMap

__all__ = [
    "IFederationHooks",
    "NewPdu",
    "NullHooks",
]


@attrs.frozen(slots=True)
class NewPdu:
    """An event that became part of a room, with the state it was accepted against.

    ``state_before`` is the room state before the event (``(type, state_key) ->
    event_id``); the state after it is that plus the event itself when it is a
    state event. ``outlier`` is never true here: outliers do not reach hooks.
    """

    event_id: str
    room_id: str
    room_version: str
    event: Mapping[str, Any]
    state_before: StateMap
    #: The store's stream ordering, a cursor the embedder may persist.
    stream_ordering: int = 0
    #: ``True`` when the event was created by this server (local API calls), so an
    #: embedder that already handled its own event can skip it.
    local: bool = False


class IFederationHooks(Interface):
    """Callbacks from fedlib into the embedding homeserver.

    Any method may return a value or a Deferred of it (see the module docstring).
    """

    # -- notifications -------------------------------------------------------

    def on_new_pdus(room_id: str, pdus: Sequence[NewPdu]) -> Any:
        """Events accepted into ``room_id``, in topological order, each with its
        state. Called once per batch persisted (the PDUs of one room in a
        transaction, a local event); the state a join brings is not reported event by
        event but through :meth:`on_room_joined`. fedlib waits for the returned Deferred before it reports the next batch
        of the same room, so per-room order is preserved."""

    def on_soft_failed(room_id: str, event_id: str, event: Mapping[str, Any], reason: str) -> Any:
        """An event passed the auth checks against its own state but not against the
        room's current state: it is stored but not part of current state."""

    def on_rejected(room_id: str, event_id: str, event: Mapping[str, Any], reason: str) -> Any:
        """An event failed the auth rules (or its signatures/hashes) and was rejected."""

    def on_room_joined(room_id: str, room_version: str, state: StateMap) -> Any:
        """A local user's join of a remote room completed (or another local user
        joined a room we were not in); ``state`` is the room state after the join."""

    # -- decisions -----------------------------------------------------------

    def on_invite(
        room_version: str, event: Mapping[str, Any], invite_room_state: Sequence[Mapping[str, Any]]
    ) -> Any:
        """A remote server invites a local user (``event["state_key"]``).

        Return (or fire) ``True`` to accept: fedlib then signs the invite with this
        server's key and stores it, with the stripped ``invite_room_state``, for the
        user to join or reject later. ``False`` refuses with ``403 M_FORBIDDEN``."""

    def on_edu(origin: str, edu_type: str, content: Mapping[str, Any]) -> Any:
        """An EDU (typing, receipts, presence, to-device, device lists...) arrived in
        a transaction from ``origin``. fedlib does not interpret EDUs."""

    def is_local_user_known(user_id: str) -> Any:
        """Whether ``user_id`` (on this server) exists: unknown users get
        ``M_NOT_FOUND`` for profile, device and invite requests."""

    # -- queries -------------------------------------------------------------

    def query_directory(room_alias: str) -> Any:
        """``(room_id, [server_name, ...])`` for a local alias, or ``None``
        (answered ``404 M_NOT_FOUND``)."""

    def query_profile(user_id: str, field: str | None) -> Any:
        """The profile of a local user as a dict (only ``field`` when given, e.g.
        ``{"displayname": "Alice"}``), or ``None`` for an unknown user."""

    def get_public_rooms(limit: int | None, since: str | None, search_filter: Any) -> Any:
        """A ``/publicRooms`` response dict (``chunk``, ``next_batch``...), or
        ``None`` when this server publishes no room directory (answered as empty).
        ``search_filter`` is the POST body's ``filter`` (``None`` for GET)."""

    def get_hierarchy(room_id: str, suggested_only: bool) -> Any:
        """A ``/hierarchy/{roomId}`` response dict, or ``None`` to let fedlib answer
        from room state (or ``404`` when the room is unknown)."""

    def query_user_devices(user_id: str) -> Any:
        """A ``/user/devices/{userId}`` response dict, or ``None`` for an unknown user."""

    def query_user_keys(device_keys: Mapping[str, Sequence[str]]) -> Any:
        """A ``/user/keys/query`` response dict (``device_keys``, ...)."""

    def claim_user_keys(one_time_keys: Mapping[str, Mapping[str, str]]) -> Any:
        """A ``/user/keys/claim`` response dict (``one_time_keys``)."""

    def query(query_type: str, args: Mapping[str, str]) -> Any:
        """The answer to ``/query/{queryType}`` for types fedlib does not know,
        or ``None`` (answered ``404 M_NOT_FOUND``)."""


@implementer(IFederationHooks)
class NullHooks:
    """Hooks for a server with no users of its own and no directory.

    Notifications are ignored, invites are accepted for every local user ID (the
    server cannot tell which exist), queries answer "nothing here". Subclass and
    override what your homeserver knows.
    """

    def on_new_pdus(self, room_id: str, pdus: Sequence[NewPdu]) -> Any:
        return None

    def on_soft_failed(
        self, room_id: str, event_id: str, event: Mapping[str, Any], reason: str
    ) -> Any:
        return None

    def on_rejected(
        self, room_id: str, event_id: str, event: Mapping[str, Any], reason: str
    ) -> Any:
        return None

    def on_room_joined(self, room_id: str, room_version: str, state: StateMap) -> Any:
        return None

    def on_invite(
        self,
        room_version: str,
        event: Mapping[str, Any],
        invite_room_state: Sequence[Mapping[str, Any]],
    ) -> Any:
        return True

    def on_edu(self, origin: str, edu_type: str, content: Mapping[str, Any]) -> Any:
        return None

    def is_local_user_known(self, user_id: str) -> Any:
        return True

    def query_directory(self, room_alias: str) -> Any:
        return None

    def query_profile(self, user_id: str, field: str | None) -> Any:
        return None

    def get_public_rooms(self, limit: int | None, since: str | None, search_filter: Any) -> Any:
        return {"chunk": [], "total_room_count_estimate": 0}

    def get_hierarchy(self, room_id: str, suggested_only: bool) -> Any:
        return None

    def query_user_devices(self, user_id: str) -> Any:
        return {"user_id": user_id, "stream_id": 0, "devices": []}

    def query_user_keys(self, device_keys: Mapping[str, Sequence[str]]) -> Any:
        return {"device_keys": {user_id: {} for user_id in device_keys}}

    def claim_user_keys(self, one_time_keys: Mapping[str, Mapping[str, str]]) -> Any:
        return {"one_time_keys": {}}

    def query(self, query_type: str, args: Mapping[str, str]) -> Any:
        return None
