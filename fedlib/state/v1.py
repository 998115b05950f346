"""The original state resolution algorithm (room version 1, spec ``rooms/v1.md``).

Read as the reference implementation reads it, so servers converge:

* a key is conflicted only when two state sets hold *different* events for it
  (a key missing from some sets is not a conflict);
* auth events for the checks are taken from the unconflicted state (for the
  auth types of all conflicting events) plus the conflicts resolved so far, in
  the order power levels, join rules, memberships, everything else;
* for the first three, events are walked by ascending ``depth`` then descending
  ``sha1(event_id)``; the first is taken unchecked and each next one replaces
  it while it passes, the walk stopping at the first failure;
* for the rest, the event with the highest depth and lowest ``sha1(event_id)``
  that passes wins, or the lowest-depth event when none does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from fedlib.auth.rules import auth_types_with, check_auth_with
from fedlib.errors import AuthError
from fedlib.events.room_versions import RoomVersion
from fedlib.state._events import (
    CREATE_KEY,
    POWER_LEVELS_KEY,
    Event,
    StateKey,
    StateMap,
    missing_error,
    parse_int,
    state_key_of,
)

_AUTH_FIRST_TYPES = ("m.room.join_rules", "m.room.member")


def separate_v1(
    state_sets: Sequence[StateMap],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """The union of the state sets without the conflicting keys, and those keys'
    events. Only keys in the symmetric difference of the first set with another
    can be conflicting or missing from the first, so only they are looked at."""
    first = state_sets[0]
    candidates: set[StateKey] = set()
    for other in state_sets[1:]:
        if other is not first:
            candidates.update(key for key, _ in first.items() ^ other.items())
    merged = dict(first)
    conflicted: dict[StateKey, set[str]] = {}
    for key in candidates:
        values = {s[key] for s in state_sets if key in s}
        if len(values) > 1:
            conflicted[key] = values
            merged.pop(key, None)
        else:
            merged[key] = values.pop()
    return merged, conflicted


def resolve_v1(
    version: RoomVersion,
    state_sets: Sequence[StateMap],
    event_map: Mapping[str, Event],
) -> dict[StateKey, str]:
    """Resolve with the room v1 algorithm."""
    if len(state_sets) == 1:
        return dict(state_sets[0])
    unconflicted, conflicted_ids = separate_v1(state_sets)
    if not conflicted_ids:
        return unconflicted

    missing = {eid for ids in conflicted_ids.values() for eid in ids if eid not in event_map}
    if missing:
        raise missing_error(missing)
    conflicted: dict[StateKey, list[_Entry]] = {}
    for key, ids in conflicted_ids.items():
        entries = conflicted[key] = []
        for eid in ids:
            event = _as_dict(event_map[eid])
            entries.append((eid, event, auth_types_with(version, event)))

    auth_ids: dict[StateKey, str] = {}
    for entries in conflicted.values():
        for _, _, types in entries:
            for akey in types:
                if akey not in auth_ids and akey in unconflicted:
                    auth_ids[akey] = unconflicted[akey]
    missing = {eid for eid in auth_ids.values() if eid not in event_map}
    if missing:
        raise missing_error(missing)
    auth_events = {key: _as_dict(event_map[eid]) for key, eid in auth_ids.items()}

    resolved: dict[StateKey, _Entry] = {}
    if POWER_LEVELS_KEY in conflicted:
        resolved[POWER_LEVELS_KEY] = _resolve_auth_conflict(
            version, conflicted[POWER_LEVELS_KEY], auth_events
        )
    auth_events.update((k, e[1]) for k, e in resolved.items())
    for etype in _AUTH_FIRST_TYPES:
        for key, entries in conflicted.items():
            if key[0] == etype:
                resolved[key] = _resolve_auth_conflict(version, entries, auth_events)
        # Each tier is checked against the tiers before it, not against itself.
        auth_events.update((k, e[1]) for k, e in resolved.items())
    for key, entries in conflicted.items():
        if key not in resolved:
            resolved[key] = _resolve_normal_conflict(version, entries, auth_events)

    # (``unconflicted`` is this call's own copy, so it becomes the result.)
    for key, entry in resolved.items():
        unconflicted[key] = entry[0]
    return unconflicted


#: A conflicting event: its ID, the event, and the state keys that authorise it.
_Entry = tuple[str, dict[str, Any], set[StateKey]]


def _as_dict(event: Event) -> dict[str, Any]:
    return event if isinstance(event, dict) else dict(event)


def _newest_first(entries: list[_Entry]) -> list[_Entry]:
    """Highest depth first, ties by lowest sha1(event_id)."""

    def order(entry: _Entry) -> tuple[int, str]:
        digest = hashlib.sha1(entry[0].encode("utf-8", "surrogatepass")).hexdigest()
        return (-parse_int(entry[1].get("depth")), digest)

    return sorted(entries, key=order)


def _passes(
    version: RoomVersion, event: dict[str, Any], auth_events: Mapping[StateKey, dict[str, Any]]
) -> bool:
    if state_key_of(event) == CREATE_KEY:
        # No state-dependent rule applies to a create event.
        return True
    try:
        check_auth_with(version, event, auth_events)
    except AuthError:
        return False
    return True


def _resolve_auth_conflict(
    version: RoomVersion, entries: list[_Entry], auth_events: Mapping[StateKey, dict[str, Any]]
) -> _Entry:
    ordered = list(reversed(_newest_first(entries)))
    keys = {k for _, _, types in entries for k in types}
    local = {k: auth_events[k] for k in keys if k in auth_events}
    chosen = ordered[0]
    for entry in ordered[1:]:
        ckey = state_key_of(chosen[1])
        if ckey is not None:
            local[ckey] = chosen[1]
        if not _passes(version, entry[1], local):
            return chosen
        chosen = entry
    return chosen


def _resolve_normal_conflict(
    version: RoomVersion, entries: list[_Entry], auth_events: Mapping[StateKey, dict[str, Any]]
) -> _Entry:
    ordered = _newest_first(entries)
    for entry in ordered:
        if _passes(version, entry[1], auth_events):
            return entry
    return ordered[-1]
