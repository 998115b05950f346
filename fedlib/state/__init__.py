"""State resolution: the room state at a fork of the event graph.

Pure and synchronous: plain PDU dicts in, a state map out. Every call works on
its own memo tables and keeps nothing afterwards, so :func:`resolve` may run in
a thread (callers with large inputs should, to keep the reactor free).

The algorithm is chosen by the room version's ``state_res`` flag: the original
algorithm for room v1, v2 for v2-v11, v2.1 for v12.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fedlib.auth.rules import auth_types_with
from fedlib.errors import StateResolutionError
from fedlib.events.hashing import event_id_with
from fedlib.events.room_versions import StateResAlgorithm, get_room_version
from fedlib.state._events import Event, EventGraph, StateKey, StateMap, state_key_of
from fedlib.state.v1 import resolve_v1
from fedlib.state.v2 import resolve_v2

__all__ = [
    "StateKey",
    "auth_chain",
    "auth_events_from_state",
    "resolve",
    "state_after",
]


def resolve(
    room_version: str,
    state_sets: Sequence[StateMap],
    event_map: Mapping[str, Event],
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` (maps of (type, state_key) to event ID) into one state.

    ``event_map`` maps event IDs to PDU dicts and must hold the events of the
    state sets and their auth chains (the algorithm reads the conflicted events,
    their auth chains and, when it has to decide whether an event belongs to the
    auth difference, the auth chains of the unconflicted state). Events needed
    but absent raise :class:`~fedlib.errors.StateResolutionError` naming them.

    Events are taken as accepted: whether an event was rejected is not part of a
    PDU, and the caller should not offer rejected events.

    Raises :class:`~fedlib.errors.UnsupportedRoomVersionError` for an unknown
    version and :class:`~fedlib.errors.StateResolutionError` when ``state_sets``
    is empty.
    """
    version = get_room_version(room_version)
    if not state_sets:
        raise StateResolutionError("No state sets to resolve")
    if version.state_res is StateResAlgorithm.V1:
        return resolve_v1(version, state_sets, event_map)
    return resolve_v2(version, state_sets, event_map)


def state_after(
    room_version: str,
    state_before: Mapping[StateKey, str],
    event: Mapping[str, Any],
    event_id: str | None = None,
) -> dict[StateKey, str]:
    """The state after ``event`` given the state before it: the same map, with the
    event's own entry replaced when it is a state event.

    ``event_id`` spares computing the ID of a v3+ event from its reference hash.
    """
    out = dict(state_before)
    key = state_key_of(event)
    if key is not None:
        if event_id is None:
            event_id = event_id_with(get_room_version(room_version), dict(event))
        out[key] = event_id
    return out


def auth_events_from_state(
    room_version: str, state: Mapping[StateKey, str], event: Mapping[str, Any]
) -> dict[StateKey, str]:
    """The entries of ``state`` that the auth events selection picks for ``event``."""
    wanted = auth_types_with(get_room_version(room_version), event)
    return {key: state[key] for key in wanted if key in state}


def auth_chain(
    event_ids: Iterable[str],
    event_map: Mapping[str, Event],
    room_version: str | None = None,
) -> set[str]:
    """The auth chain of ``event_ids``: every event reachable through
    ``auth_events``, not counting the given events unless reachable from another.

    The ``auth_events`` format (ID strings or v1/v2 ``[id, hashes]`` pairs) is
    recognised per entry; give ``room_version`` to have v12's implicit create
    event followed. Missing events raise
    :class:`~fedlib.errors.StateResolutionError`.
    """
    if room_version is not None:
        version = get_room_version(room_version)
    else:
        version = _guess_version(event_map)
    graph = EventGraph(version, event_map)
    starts = set(event_ids)
    direct: set[str] = set()
    for eid in starts:
        direct.update(graph.auth_ids(eid))
    return graph.walk(direct) if direct else set()


def _guess_version(event_map: Mapping[str, Event]) -> Any:
    # Without a room version, pick the format from the first auth_events entry
    # found; no implicit create event.
    for event in event_map.values():
        auth = event.get("auth_events")
        if isinstance(auth, list) and auth:
            return get_room_version("1" if isinstance(auth[0], list) else "11")
    return get_room_version("11")
