"""Reading power levels and room creators, as the authorisation rules see them.

Everything here reads a plain ``m.room.power_levels`` / ``m.room.create`` event
dict lazily: a lookup parses the one value it needs, never the whole ``users``
map, so the cost of a check does not grow with the size of the room.

Value parsing follows the room version:

* v1-v9 accept integers, strings that are integers (spec "m.room.power_levels
  events accept values as strings": optional ASCII whitespace, one optional sign,
  decimal digits) and finite floats, truncated toward zero (v1-v5 "accept values
  as floats"; later versions cannot carry floats past canonical JSON parsing, so
  the same rule is harmless there).
* v10+ accept integers only.

Booleans are never power levels, although Python counts them as integers.
A value that does not parse makes the check that needs it fail with
:class:`~fedlib.errors.AuthError`, so junk in a power levels event can only ever
reject, never crash.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from fedlib.errors import AuthError
from fedlib.events.room_versions import RoomVersion, get_room_version

#: The levels named at the top level of power levels content, with the defaults
#: that apply when the key (or the whole event) is missing.
NAMED_LEVEL_DEFAULTS: Mapping[str, int] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
}

# str.isspace() and int() accept Unicode whitespace and digits and "1_000"; the
# spec's grammar for stringy levels is narrower, so it is matched explicitly.
_STRINGY_INT = re.compile(r"[ \t\n\r\f\v]*[+-]?[0-9]+[ \t\n\r\f\v]*")

_USER_ID = re.compile(
    r"@[^:\x00]*:(?:\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.-]{1,255})(?::[0-9]{1,5})?", re.DOTALL
)


def parse_level(version: RoomVersion, value: object) -> int | None:
    """``value`` as a power level in ``version``, or ``None`` when it is not one."""
    if type(value) is int:
        return value
    if version.enforce_int_power_levels:
        return None
    if type(value) is str:
        if _STRINGY_INT.fullmatch(value) is None:
            return None
        return int(value)
    if type(value) is float and math.isfinite(value):
        return int(value)
    return None


def level_or_reject(version: RoomVersion, value: object, what: str) -> int:
    """:func:`parse_level`, raising :class:`AuthError` naming ``what`` when it fails."""
    level = parse_level(version, value)
    if level is None:
        raise AuthError(f"Invalid power level for {what}: {value!r}")
    return level


def is_valid_user_id(user_id: object) -> bool:
    """Whether ``user_id`` is a user ID the auth rules accept.

    The historical grammar: ``@``, a localpart of anything but ``:`` and NUL (possibly
    empty), ``:``, a server name; at most 255 bytes in all.
    """
    if type(user_id) is not str or _USER_ID.fullmatch(user_id) is None:
        return False
    # Up to 63 characters cannot exceed 255 bytes of UTF-8; only longer IDs are encoded.
    return len(user_id) <= 63 or len(user_id.encode("utf-8", "surrogatepass")) <= 255


def domain_of(identifier: object) -> str | None:
    """The part after the first ``:`` of a user, room or (v1/v2) event ID; ``None`` if none."""
    if type(identifier) is not str:
        return None
    _, sep, domain = identifier.partition(":")
    return domain if sep else None


def _content(event: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if event is None:
        return {}
    content = event.get("content")
    return content if isinstance(content, dict) else {}


def creators(room_version: RoomVersion, create_event: Mapping[str, Any]) -> frozenset[str]:
    """The room's creators: ``content.creator`` before v11, the sender from v11, and in
    v12 also every string of ``content.additional_creators``."""
    if not room_version.implicit_room_creator:
        creator = _content(create_event).get("creator")
        return frozenset((creator,)) if type(creator) is str else frozenset()
    sender = create_event.get("sender")
    found = {sender} if type(sender) is str else set()
    if room_version.privileged_creators:
        extra = _content(create_event).get("additional_creators")
        if isinstance(extra, list):
            found.update(u for u in extra if type(u) is str)
    return frozenset(found)


def _is_creator_with(version: RoomVersion, user_id: str, create_event: Mapping[str, Any]) -> bool:
    # Cheaper than building the set: the sender is by far the common match.
    if version.implicit_room_creator:
        if create_event.get("sender") == user_id:
            return True
        if not version.privileged_creators:
            return False
        extra = _content(create_event).get("additional_creators")
        return isinstance(extra, list) and user_id in extra
    return bool(_content(create_event).get("creator") == user_id)


def is_creator(room_version: str, user_id: str, create_event: Mapping[str, Any]) -> bool:
    """Whether ``user_id`` is a creator of the room ``create_event`` creates.

    Before v11 the creator is ``content.creator``; from v11 the create event's
    sender; in v12 also anyone in ``content.additional_creators``.
    """
    return _is_creator_with(get_room_version(room_version), user_id, create_event)


def user_level_with(
    version: RoomVersion,
    user_id: str,
    power_levels_event: Mapping[str, Any] | None,
    create_event: Mapping[str, Any] | None,
) -> int | float:
    """:func:`get_user_power_level` for a resolved :class:`RoomVersion` (the hot path)."""
    if (
        version.privileged_creators
        and create_event is not None
        and _is_creator_with(version, user_id, create_event)
    ):
        return math.inf
    if power_levels_event is not None:
        content = _content(power_levels_event)
        users = content.get("users")
        if isinstance(users, dict) and user_id in users:
            return level_or_reject(version, users[user_id], f"user {user_id}")
        if "users_default" in content:
            return level_or_reject(version, content["users_default"], "users_default")
        return 0
    if (
        create_event is not None
        and not version.privileged_creators
        and _is_creator_with(version, user_id, create_event)
    ):
        return 100
    return 0


def get_user_power_level(
    room_version: str,
    user_id: str,
    power_levels_event: Mapping[str, Any] | None,
    create_event: Mapping[str, Any] | None,
) -> int | float:
    """The power level of ``user_id``.

    Room creators have infinite power in v12 (:data:`math.inf`). Otherwise the
    level is ``users[user_id]``, else ``users_default``, else 0; with no power
    levels event, the creator has 100 and everyone else 0.

    Raises :class:`~fedlib.errors.AuthError` when the value that applies is not a
    valid power level for the room version.
    """
    return user_level_with(
        get_room_version(room_version), user_id, power_levels_event, create_event
    )


def named_level_with(
    version: RoomVersion,
    power_levels_event: Mapping[str, Any] | None,
    name: str,
    default: int | None = None,
) -> int:
    """:func:`get_named_level` for a resolved :class:`RoomVersion` (the hot path)."""
    content = _content(power_levels_event)
    if name in content:
        return level_or_reject(version, content[name], name)
    if default is None:
        default = NAMED_LEVEL_DEFAULTS.get(name, 0)
    return default


def get_named_level(
    room_version: str,
    power_levels_event: Mapping[str, Any] | None,
    name: str,
    default: int | None = None,
) -> int:
    """A top-level level (``ban``, ``kick``, ``invite``, ``redact``, ``state_default``, ...).

    When the key or the event is missing the spec's default applies (see
    :data:`NAMED_LEVEL_DEFAULTS`), or ``default`` when given.
    """
    return named_level_with(get_room_version(room_version), power_levels_event, name, default)


def send_level_with(
    version: RoomVersion,
    power_levels_event: Mapping[str, Any] | None,
    event_type: str,
    is_state: bool,
) -> int:
    """The *required power level* to send ``event_type`` (``events``, then the default)."""
    content = _content(power_levels_event)
    events = content.get("events")
    if events is not None:
        if not isinstance(events, dict):
            raise AuthError(f"Invalid power levels: 'events' is not an object: {events!r}")
        if event_type in events:
            return level_or_reject(version, events[event_type], f"event type {event_type}")
    name = "state_default" if is_state else "events_default"
    return named_level_with(version, power_levels_event, name)


def get_send_level(
    room_version: str,
    power_levels_event: Mapping[str, Any] | None,
    event_type: str,
    is_state: bool,
) -> int:
    """The power level the spec calls the event type's *required power level*."""
    return send_level_with(get_room_version(room_version), power_levels_event, event_type, is_state)
