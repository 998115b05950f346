"""Build small rooms of any room version for the authorisation tests.

A :class:`Room` keeps a state map and a linear history of plain PDU dicts with
real event IDs (``event_id`` fields in v1/v2, reference hashes from v3, and in
v12 a room ID that is the create event's hash). Events are not signed except
where a test needs a signature to be present.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedlib.auth import check_auth, select_auth_events
from fedlib.events.hashing import compute_event_id, compute_room_id
from fedlib.events.room_versions import get_room_version

ALICE = "@alice:a.test"
BOB = "@bob:b.test"
CAROL = "@carol:c.test"
DAVE = "@dave:d.test"
EVE = "@eve:a.test"

ALL_VERSIONS = ("1", "3", "6", "7", "8", "9", "10", "11", "12")

Event = dict[str, Any]

# Content hashes are not checked by the auth rules; a fixed one keeps the events in
# the shape peers expect, and it is there before the event ID is computed.
_DUMMY_HASH = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
StateKey = tuple[str, str]


def _server(user_id: str) -> str:
    return user_id.split(":", 1)[1]


class Room:
    """A room under construction. ``state`` maps (type, state_key) to event dicts."""

    def __init__(
        self,
        version: str,
        creator: str = ALICE,
        *,
        create_content: Mapping[str, Any] | None = None,
        join_creator: bool = True,
    ) -> None:
        self.version = version
        self.room_version = get_room_version(version)
        self.creator = creator
        self.counter = 0
        self.ts = 1_000_000
        self.state: dict[StateKey, Event] = {}
        self.state_ids: dict[StateKey, str] = {}
        self.ids: dict[str, Event] = {}
        self.last: str | None = None
        content: dict[str, Any] = {"room_version": version}
        if not self.room_version.implicit_room_creator:
            content["creator"] = creator
        content.update(create_content or {})
        create: Event = {
            "type": "m.room.create",
            "state_key": "",
            "sender": creator,
            "content": content,
            "prev_events": [],
            "auth_events": [],
            "depth": 1,
            "origin_server_ts": self.ts,
            "hashes": {"sha256": _DUMMY_HASH},
        }
        if self.room_version.room_id_is_create_hash:
            self.room_id = compute_room_id(create, version)
        else:
            self.room_id = f"!room:{_server(creator)}"
            create["room_id"] = self.room_id
        if self.room_version.event_id_in_event:
            create["event_id"] = f"$create:{_server(creator)}"
        self.create_id = compute_event_id(version, create)
        self.create = create
        self._apply(create, self.create_id)
        if join_creator:
            self.send(_MEMBER, creator, {"membership": "join"}, state_key=creator)

    # -- building -------------------------------------------------------------------

    def make(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any] | None = None,
        *,
        state_key: str | None = None,
        prev_events: list[str] | None = None,
        **extra: Any,
    ) -> Event:
        """A new event on top of the room, with auth events selected from the state."""
        self.counter += 1
        self.ts += 1
        prev = [self.last] if prev_events is None and self.last is not None else prev_events or []
        event: Event = {
            "type": event_type,
            "sender": sender,
            "room_id": self.room_id,
            "content": dict(content or {}),
            "depth": self.counter + 1,
            "origin_server_ts": self.ts,
            "hashes": {"sha256": _DUMMY_HASH},
        }
        if state_key is not None:
            event["state_key"] = state_key
        auth_ids = select_auth_events(self.version, event, self.state_ids)
        if self.room_version.event_id_in_event:
            event["event_id"] = f"${self.counter}:{_server(sender)}"
            event["prev_events"] = [[p, {}] for p in prev]
            event["auth_events"] = [[a, {}] for a in auth_ids]
        else:
            event["prev_events"] = list(prev)
            event["auth_events"] = auth_ids
        event.update(extra)
        return event

    def id_of(self, event: Mapping[str, Any]) -> str:
        if event is self.create:
            return self.create_id
        return compute_event_id(self.version, dict(event))

    def _apply(self, event: Event, event_id: str | None = None) -> str:
        event_id = event_id or self.id_of(event)
        self.ids[event_id] = event
        self.last = event_id
        if "state_key" in event:
            key = (event["type"], event["state_key"])
            self.state[key] = event
            self.state_ids[key] = event_id
        return event_id

    def check(self, event: Mapping[str, Any]) -> None:
        """check_auth against the current state (raises AuthError when rejected)."""
        check_auth(self.version, dict(event), self.state)

    def send(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any] | None = None,
        *,
        state_key: str | None = None,
        **extra: Any,
    ) -> Event:
        """Make an event, require that it passes auth, and apply it."""
        event = self.make(event_type, sender, content, state_key=state_key, **extra)
        self.check(event)
        self._apply(event)
        return event

    def force(
        self,
        event_type: str,
        sender: str,
        content: Mapping[str, Any] | None = None,
        *,
        state_key: str | None = None,
        **extra: Any,
    ) -> Event:
        """Apply an event to the state without checking it (to set up a scenario)."""
        event = self.make(event_type, sender, content, state_key=state_key, **extra)
        self._apply(event)
        return event

    # -- shortcuts --------------------------------------------------------------------

    def member(
        self, user: str, membership: str, sender: str | None = None, **content: Any
    ) -> Event:
        """Force ``user``'s membership (sent by ``sender``, default the user)."""
        body = {"membership": membership, **content}
        return self.force(_MEMBER, sender or user, body, state_key=user)

    def power_levels(self, content: Mapping[str, Any], sender: str | None = None) -> Event:
        return self.force("m.room.power_levels", sender or self.creator, content, state_key="")

    def join_rule(self, rule: str, **content: Any) -> Event:
        return self.force(
            "m.room.join_rules", self.creator, {"join_rule": rule, **content}, state_key=""
        )

    def creator_levels(self, level: int = 100) -> dict[str, int]:
        """``users`` entries giving the creator ``level``: none in v12 (creators are
        infinitely powerful and may not be listed)."""
        return {} if self.room_version.privileged_creators else {self.creator: level}


_MEMBER = "m.room.member"


def standard_room(
    version: str,
    *,
    join_rule: str = "public",
    members: Mapping[str, str] | None = None,
    users: Mapping[str, int] | None = None,
    levels: Mapping[str, Any] | None = None,
    create_content: Mapping[str, Any] | None = None,
) -> Room:
    """A room with the creator joined, power levels (creator 100, plus ``users`` and
    the named ``levels``), the join rule, and ``members`` forced to their memberships."""
    room = Room(version, create_content=create_content)
    pl: dict[str, Any] = {"users": {**room.creator_levels(), **(users or {})}}
    pl.update(levels or {})
    room.power_levels(pl)
    room.join_rule(join_rule)
    for user, membership in (members or {}).items():
        room.member(user, membership)
    return room
