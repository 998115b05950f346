"""Building, hashing, signing and authorising this server's own events.

Pure and synchronous: plain dicts in and out, no store, no clock (callers pass
``origin_server_ts``). :func:`build_event` makes one PDU in the shape of its room
version; :func:`build_room` makes the whole sequence of events that creates a room
(spec, client-server API ``POST /createRoom``, "Room creation"), checking each one
against the auth rules as it goes, so an invalid request fails before anything
is stored.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from unpaddedbase64 import encode_base64

from fedlib.auth.rules import check_auth_with, select_auth_events
from fedlib.crypto.signing import sign_event
from fedlib.errors import AuthError, BadJsonError
from fedlib.events.hashing import compute_room_id, event_id_with, reference_hash_with
from fedlib.events.room_versions import EventFormat, RoomVersion, get_room_version

__all__ = [
    "MAX_DEPTH",
    "MAX_PREV_EVENTS",
    "BuiltEvent",
    "BuiltRoom",
    "Preset",
    "StateTemplate",
    "authorise",
    "build_event",
    "build_room",
    "event_refs",
    "new_room_id",
    "room_creation_templates",
]

StateKey = tuple[str, str]

#: The spec caps ``depth`` at the canonical JSON integer maximum.
MAX_DEPTH = 2**63 - 1
#: The most prev_events a new event lists (the spec allows 20; Synapse uses 10).
MAX_PREV_EVENTS = 10


class Preset(enum.Enum):
    """``createRoom`` presets (client-server API)."""

    PRIVATE_CHAT = "private_chat"
    TRUSTED_PRIVATE_CHAT = "trusted_private_chat"
    PUBLIC_CHAT = "public_chat"


@attrs.frozen(slots=True)
class BuiltEvent:
    """A signed PDU ready to persist and send, with its event ID."""

    event_id: str
    event: Mapping[str, Any]

    @property
    def state_key(self) -> StateKey | None:
        sk = self.event.get("state_key")
        return (self.event["type"], sk) if isinstance(sk, str) else None


@attrs.frozen(slots=True)
class StateTemplate:
    """One state event to put into a new room."""

    type: str
    state_key: str
    content: Mapping[str, Any]


@attrs.frozen(slots=True)
class BuiltRoom:
    """The events creating a room, in order, each with the state before it."""

    room_id: str
    room_version: str
    events: tuple[BuiltEvent, ...]
    states_before: tuple[Mapping[StateKey, str], ...]

    @property
    def state(self) -> dict[StateKey, str]:
        """The room state after the last event."""
        state = dict(self.states_before[-1]) if self.states_before else {}
        last = self.events[-1]
        if last.state_key is not None:
            state[last.state_key] = last.event_id
        return state


def _server_of(user_id: str) -> str:
    _, sep, server = user_id.partition(":")
    if not user_id.startswith("@") or not sep or not server:
        raise BadJsonError(f"Not a user ID: {user_id!r}", errcode="M_INVALID_PARAM")
    return server


def event_refs(
    version: RoomVersion, event_ids: Sequence[str], events: Mapping[str, Mapping[str, Any]]
) -> list[Any]:
    """``prev_events``/``auth_events`` in the room version's format: plain IDs, or in
    v1/v2 ``[event_id, {"sha256": reference hash}]`` pairs (needing ``events``)."""
    if version.event_format is not EventFormat.V1:
        return list(event_ids)
    # v1/v2 reference other events together with their reference hashes.
    out: list[Any] = []
    for eid in event_ids:
        referenced = events.get(eid)
        if referenced is None:
            raise ValueError(f"Need event {eid} to reference it in a v1/v2 room")
        digest = reference_hash_with(version, dict(referenced))
        out.append([eid, {"sha256": encode_base64(digest)}])
    return out


def build_event(
    room_version: str | RoomVersion,
    *,
    room_id: str | None,
    sender: str,
    event_type: str,
    content: Mapping[str, Any],
    prev_event_ids: Sequence[str],
    auth_event_ids: Sequence[str],
    depth: int,
    origin_server_ts: int,
    server_name: str,
    signing_key: Any,
    state_key: str | None = None,
    redacts: str | None = None,
    referenced_events: Mapping[str, Mapping[str, Any]] | None = None,
) -> BuiltEvent:
    """One PDU of ``room_version``, hashed and signed by ``server_name``.

    ``room_id`` is ``None`` only for a v12 create event (whose ID names the room).
    ``referenced_events`` holds the prev and auth events for v1/v2 rooms, whose
    references carry the referenced events' hashes. ``redacts`` goes into the
    content from v11 on and at the top level before.
    """
    version = (
        room_version if isinstance(room_version, RoomVersion) else get_room_version(room_version)
    )
    refs = referenced_events or {}
    event: dict[str, Any] = {
        "type": event_type,
        "sender": sender,
        "content": dict(content),
        "prev_events": event_refs(version, prev_event_ids, refs),
        "auth_events": event_refs(version, auth_event_ids, refs),
        "depth": min(depth, MAX_DEPTH),
        "origin_server_ts": origin_server_ts,
    }
    if room_id is not None:
        event["room_id"] = room_id
    elif not (version.room_id_is_create_hash and event_type == "m.room.create"):
        raise ValueError("room_id is required except for a v12 create event")
    if state_key is not None:
        event["state_key"] = state_key
    if redacts is not None:
        if version.redaction_rules.value >= 11:
            event["content"]["redacts"] = redacts
        else:
            event["redacts"] = redacts
    if version.event_id_in_event:
        event["event_id"] = f"${secrets.token_urlsafe(18)}:{server_name}"
    signed = sign_event(version.identifier, event, server_name, signing_key)
    return BuiltEvent(event_id_with(version, signed), signed)


def authorise(
    room_version: str | RoomVersion,
    event: Mapping[str, Any],
    state: Mapping[StateKey, str],
    events: Mapping[str, Mapping[str, Any]],
) -> None:
    """Raise :class:`~fedlib.errors.AuthError` unless ``event`` is allowed by the
    state ``state`` (ids) whose events are in ``events``."""
    version = (
        room_version if isinstance(room_version, RoomVersion) else get_room_version(room_version)
    )
    auth_events: dict[StateKey, Mapping[str, Any]] = {}
    for key, eid in state.items():
        found = events.get(eid)
        if found is not None:
            auth_events[key] = found
    create_id = state.get(("m.room.create", ""))
    check_auth_with(version, event, auth_events, create_id)


def _default_power_levels(
    version: RoomVersion, creator: str, preset: Preset, trusted: Iterable[str]
) -> dict[str, Any]:
    users: dict[str, int] = {}
    if not version.privileged_creators:
        # v12 creators have infinite power and must not be listed (v12 rule 10.4).
        users[creator] = 100
        for user in trusted:
            users[user] = 100
    return {
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 150 if version.privileged_creators else 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        # Private chats let any member invite, as Synapse's presets do.
        "invite": 50 if preset is Preset.PUBLIC_CHAT else 0,
        "notifications": {"room": 50},
    }


def room_creation_templates(
    room_version: str,
    creator: str,
    *,
    preset: Preset = Preset.PRIVATE_CHAT,
    initial_state: Sequence[StateTemplate] = (),
    name: str | None = None,
    topic: str | None = None,
    invite: Sequence[str] = (),
    power_level_content_override: Mapping[str, Any] | None = None,
    additional_creators: Sequence[str] = (),
    creation_content: Mapping[str, Any] | None = None,
    server_acl: Mapping[str, Any] | None = None,
) -> list[StateTemplate]:
    """The state events creating a room, in the order the client-server API gives:
    create, the creator's join, power levels, join rules, history visibility,
    guest access, ``initial_state``, name, topic. (Invites are sent after, as
    membership changes of their own.)"""
    version = get_room_version(room_version)
    _server_of(creator)
    create: dict[str, Any] = dict(creation_content or {})
    create["room_version"] = version.identifier
    if not version.implicit_room_creator:
        create["creator"] = creator
    trusted = list(invite) if preset is Preset.TRUSTED_PRIVATE_CHAT else []
    extra_creators = list(additional_creators)
    if version.privileged_creators:
        # A trusted private chat's invitees are its co-owners: in v12 that is
        # what additional_creators means.
        extra_creators += [u for u in trusted if u not in extra_creators and u != creator]
        if extra_creators:
            for user in extra_creators:
                _server_of(user)
            create["additional_creators"] = extra_creators
    elif additional_creators:
        raise BadJsonError(
            f"additional_creators needs room version 12 or later, not {room_version}",
            errcode="M_BAD_JSON",
        )
    power_levels = _default_power_levels(version, creator, preset, trusted)
    for key, value in (power_level_content_override or {}).items():
        power_levels[key] = value
    public = preset is Preset.PUBLIC_CHAT
    templates = [
        StateTemplate("m.room.create", "", create),
        StateTemplate("m.room.member", creator, {"membership": "join"}),
        StateTemplate("m.room.power_levels", "", power_levels),
        StateTemplate("m.room.join_rules", "", {"join_rule": "public" if public else "invite"}),
        StateTemplate("m.room.history_visibility", "", {"history_visibility": "shared"}),
    ]
    if not public:
        templates.append(StateTemplate("m.room.guest_access", "", {"guest_access": "can_join"}))
    if server_acl is not None:
        templates.append(StateTemplate("m.room.server_acl", "", dict(server_acl)))
    templates.extend(initial_state)
    if name is not None:
        templates.append(StateTemplate("m.room.name", "", {"name": name}))
    if topic is not None:
        templates.append(StateTemplate("m.room.topic", "", {"topic": topic}))
    return templates


def new_room_id(room_version: str, server_name: str) -> str | None:
    """A fresh random room ID on ``server_name`` for :func:`build_room`, or ``None``
    from v12 on, where the room ID is derived from the create event."""
    if get_room_version(room_version).room_id_is_create_hash:
        return None
    return f"!{secrets.token_urlsafe(18)}:{server_name}"


def build_room(
    room_version: str,
    creator: str,
    templates: Sequence[StateTemplate],
    *,
    server_name: str,
    signing_key: Any,
    origin_server_ts: int,
    room_id: str | None = None,
) -> BuiltRoom:
    """Build and authorise the events of ``templates`` (see
    :func:`room_creation_templates`) as a chain: each event's prev_event is the one
    before it, its auth events are selected from the state so far.

    ``room_id`` is required before v12 (where the caller picks it) and ignored in
    v12 (where it is derived from the create event). Raises
    :class:`~fedlib.errors.AuthError` when an event would be rejected.
    """
    version = get_room_version(room_version)
    if not templates or templates[0].type != "m.room.create":
        raise ValueError("A room starts with its m.room.create event")
    if version.room_id_is_create_hash:
        room_id = None
    elif room_id is None:
        raise ValueError(f"room_id is required in room version {room_version}")
    state: dict[StateKey, str] = {}
    events: dict[str, Mapping[str, Any]] = {}
    built: list[BuiltEvent] = []
    states_before: list[Mapping[StateKey, str]] = []
    prev: list[str] = []
    for depth, template in enumerate(templates, start=1):
        stub = {
            "type": template.type,
            "state_key": template.state_key,
            "sender": creator,
            "content": template.content,
        }
        auth_ids = select_auth_events(version.identifier, stub, state)
        event = build_event(
            version,
            room_id=room_id,
            sender=creator,
            event_type=template.type,
            content=template.content,
            state_key=template.state_key,
            prev_event_ids=prev,
            auth_event_ids=auth_ids,
            depth=depth,
            origin_server_ts=origin_server_ts,
            server_name=server_name,
            signing_key=signing_key,
            referenced_events=events,
        )
        if room_id is None:
            room_id = compute_room_id(dict(event.event), version.identifier)
        try:
            authorise(version, event.event, state, events)
        except AuthError as e:
            raise AuthError(
                f"Room creation event {template.type}/{template.state_key!r} is not allowed: "
                f"{e.msg}"
            ) from None
        states_before.append(dict(state))
        built.append(event)
        events[event.event_id] = event.event
        state[(template.type, template.state_key)] = event.event_id
        prev = [event.event_id]
    assert room_id is not None
    return BuiltRoom(room_id, version.identifier, tuple(built), tuple(states_before))
