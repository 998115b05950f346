"""State resolution v2 (room versions 2-11) and v2.1 (room version 12).

Spec: ``rooms/fragments/v2-state-res.md`` and ``rooms/v12.md`` "State resolution".

Where the spec text leaves room for reading, this module reads it as the
reference implementation does, so servers converge (each point is covered by
the differential fixtures):

* the full auth chain of a state set includes the set's own events;
* ``m.room.create`` counts as a power event (it only ever matters with two
  create events, i.e. a broken room);
* the graph for the reverse topological power ordering follows ``auth_events``
  links only while they stay inside the full conflicted set;
* a create event is never re-checked (it has no state-dependent auth rules).

Cost: the work is proportional to the conflicted events and their auth chains.
The one walk that can reach the rest of the room (is an event of the auth
difference also an ancestor of the unconflicted state?) runs only when there is
such a candidate, with C-level set operations, and stops once every candidate
has been found.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from itertools import compress, count, islice
from operator import ne

from fedlib.auth.rules import auth_types_with, check_auth_with
from fedlib.errors import AuthError, StateResolutionError
from fedlib.events.room_versions import RoomVersion, StateResAlgorithm
from fedlib.state._events import (
    CREATE_KEY,
    POWER_LEVELS_KEY,
    Event,
    EventGraph,
    StateKey,
    StateMap,
    missing_error,
)


def separate(state_sets: Sequence[StateMap]) -> tuple[dict[StateKey, str], set[StateKey]]:
    """Split into the unconflicted state map and the conflicted keys.

    A key is unconflicted when every state set has it with the same value. Each
    state set is compared with the first by :func:`_differing_keys`, in C-level
    passes that touch each entry once.
    """
    first = state_sets[0]
    conflicted: set[StateKey] = set()
    for other in state_sets[1:]:
        if other is not first:
            conflicted |= _differing_keys(first, other)
    unconflicted = dict(first)
    for key in conflicted:
        unconflicted.pop(key, None)
    return unconflicted, conflicted


def _differing_keys(a: StateMap, b: StateMap) -> set[StateKey]:
    """The keys that ``a`` and ``b`` do not map to the same value.

    State sets derived from a common state by copying (as :func:`state_after`
    does) list their keys in the same order up to where they diverge, so the maps
    are first walked side by side: while the keys agree position by position only
    the values need comparing, which costs no hashing and reads memory in order.
    The first key that differs is looked for ``_CHUNK`` keys at a time (tuples of
    keys compared in C, cheaper per key than a Python-level comparison each).
    From the first position where the keys differ, the rest of both maps is
    compared as sets of items.
    """
    n = min(len(a), len(b))
    # The first chunk of keys that differs (tuples of keys compared in C), then
    # the first key in it (or in the short tail after the last whole chunk).
    a_chunks = zip(*[iter(a)] * _CHUNK, strict=False)
    b_chunks = zip(*[iter(b)] * _CHUNK, strict=False)
    chunks = map(ne, a_chunks, b_chunks)
    lo = next(compress(count(), chunks), n // _CHUNK) * _CHUNK
    tail = map(ne, islice(a, lo, None), islice(b, lo, None))
    split = lo + next(compress(count(), tail), n - lo)
    out = set(compress(a.keys(), map(ne, islice(a.values(), split), b.values())))
    if split == n:
        # The shorter map's keys are the longer one's first ``n``: the rest of
        # the longer one is in it alone.
        longer = a if len(a) > n else b
        out.update(islice(longer.keys(), n, None))
    else:
        rest = set(islice(a.items(), split, None)) ^ set(islice(b.items(), split, None))
        out.update(key for key, _ in rest)
    return out


# Keys compared at a time by :func:`_differing_keys` while finding where the
# maps' keys stop lining up.
_CHUNK = 64


def resolve_v2(
    version: RoomVersion,
    state_sets: Sequence[StateMap],
    event_map: Mapping[str, Event],
) -> dict[StateKey, str]:
    """Resolve with v2 (or v2.1, by ``version.state_res``)."""
    unconflicted, conflicted_keys = separate(state_sets)
    if not conflicted_keys:
        return unconflicted

    graph = EventGraph(version, event_map)
    # Each state set's conflicted entries (one lookup per key and set).
    per_set_roots: list[set[str]] = []
    for state_set in state_sets:
        roots = set(map(state_set.get, conflicted_keys))
        roots.discard(None)
        per_set_roots.append(roots)  # type: ignore[arg-type]
    conflicted_events: set[str] = set().union(*per_set_roots)

    full_conflicted = _full_conflicted_set(
        graph, state_sets, conflicted_keys, conflicted_events, unconflicted, per_set_roots
    )
    full_conflicted |= conflicted_events

    # Step 1: power events and their auth ancestors inside the full conflicted set.
    power_events = graph.power_events(full_conflicted)
    sorted_power = _reverse_topological_power_sort(graph, power_events, full_conflicted)

    # Step 2. v2 starts from the unconflicted state, v2.1 from nothing; the
    # overlay records what the checks set, lookups fall through to the base.
    base: Mapping[StateKey, str] = (
        {} if version.state_res is StateResAlgorithm.V2_1 else unconflicted
    )
    overlay: dict[StateKey, str] = {}
    _iterative_auth_checks(graph, sorted_power, base, overlay)

    # Steps 3 and 4: everything else, in mainline order of the resolved power levels.
    power_set = set(sorted_power)
    leftover = [eid for eid in full_conflicted if eid not in power_set]
    pl_id = overlay.get(POWER_LEVELS_KEY, base.get(POWER_LEVELS_KEY))
    leftover = _mainline_sort(graph, leftover, pl_id)
    _iterative_auth_checks(graph, leftover, base, overlay)

    # Step 5: the unconflicted state wins over anything resolved.
    # (``unconflicted`` is this call's own copy, so it becomes the result.)
    for key, eid in overlay.items():
        unconflicted.setdefault(key, eid)
    return unconflicted


def _full_conflicted_set(
    graph: EventGraph,
    state_sets: Sequence[StateMap],
    conflicted_keys: set[StateKey],
    conflicted_events: set[str],
    unconflicted: Mapping[StateKey, str],
    per_set_roots: Sequence[set[str]] | None = None,
) -> set[str]:
    """The auth difference, plus (v2.1) the conflicted state subgraph, less the
    conflicted events themselves (the caller adds them). ``per_set_roots``, each
    state set's conflicted entries, spares looking them up again.

    With ``A`` the auth closure of the unconflicted state and ``B_i`` that of the
    conflicted entries of state set ``i``, the full auth chain of set ``i`` is
    ``A | B_i``, so the auth difference is ``union(B_i) - intersection(B_i) - A``:
    only the (small) ``B_i`` need walking, plus a membership test against ``A``
    for the few events that are neither conflicted nor unconflicted state.
    """
    per_set: list[set[str]] = []
    missing: set[str] = set()
    if per_set_roots is None:
        per_set_roots = [{s[k] for k in conflicted_keys if k in s} for s in state_sets]
    for roots in per_set_roots:
        try:
            per_set.append(graph.walk(roots))
        except StateResolutionError as e:
            # Report what every state set lacks, not just the first one walked.
            missing |= e.missing_event_ids
    if missing:
        raise missing_error(missing)
    union: set[str] = set().union(*per_set)
    common: set[str] = per_set[0].intersection(*per_set[1:])

    # Candidates that are unconflicted state are in A, conflicted ones are in
    # the full conflicted set anyway; only the rest need the walk from the
    # unconflicted state, which in a typical fork leaves nothing to walk for.
    unknown: set[str] = set()
    for eid in union - common - conflicted_events:
        key = graph.key_of(eid)
        if key is None or unconflicted.get(key) != eid:
            unknown.add(eid)
    found = unknown
    if unknown:
        found = unknown - graph.reached_targets(unconflicted.values(), unknown, common)

    if graph.version.state_res is StateResAlgorithm.V2_1:
        found |= _conflicted_subgraph(graph, union, conflicted_events)
    return found


def _conflicted_subgraph(graph: EventGraph, closure: set[str], conflicted: set[str]) -> set[str]:
    """Events on auth paths between conflicted events (both ends included).

    Every such event is an ancestor of a conflicted event, so it lies in
    ``closure`` (the auth closure of the conflicted events); the ones that also
    descend from a conflicted event are found by walking the reversed auth links
    inside the closure.
    """
    citers: dict[str, list[str]] = {}
    for eid in closure:
        for aid in graph.auth_ids(eid):
            citers.setdefault(aid, []).append(eid)
    found = set(conflicted)
    stack = list(conflicted)
    while stack:
        for citer in citers.get(stack.pop(), ()):
            if citer not in found:
                found.add(citer)
                stack.append(citer)
    return found & closure


def _reverse_topological_power_sort(
    graph: EventGraph, power_events: Iterable[str], full_conflicted: set[str]
) -> list[str]:
    """Kahn's algorithm over auth links inside the full conflicted set, always
    taking the smallest ready event by (-power level, origin_server_ts, event_id)."""
    out_edges: dict[str, set[str]] = {}
    stack = list(power_events)
    while stack:
        eid = stack.pop()
        if eid in out_edges:
            continue
        edges = {aid for aid in graph.auth_ids(eid) if aid in full_conflicted}
        out_edges[eid] = edges
        stack.extend(aid for aid in edges if aid not in out_edges)

    def order(eid: str) -> tuple[int | float, int, str]:
        return (-graph.power_level(eid), graph.origin_server_ts(eid), eid)

    citers: dict[str, list[str]] = {eid: [] for eid in out_edges}
    pending: dict[str, int] = {}
    ready: list[tuple[int | float, int, str]] = []
    for eid, edges in out_edges.items():
        pending[eid] = len(edges)
        for aid in edges:
            citers[aid].append(eid)
        if not edges:
            ready.append(order(eid))
    heapq.heapify(ready)
    result: list[str] = []
    while ready:
        eid = heapq.heappop(ready)[2]
        result.append(eid)
        for citer in citers[eid]:
            pending[citer] -= 1
            if pending[citer] == 0:
                heapq.heappush(ready, order(citer))
    return result


def _iterative_auth_checks(
    graph: EventGraph,
    event_ids: list[str],
    base: Mapping[StateKey, str],
    overlay: dict[StateKey, str],
) -> None:
    """Apply each event that passes the auth rules against the state so far
    (``overlay`` over ``base``, updated in place), taking auth events missing
    from that state from the event's own ``auth_events``.

    The rules read only the keys the auth events selection picks (and the create
    event's), so the event's own auth events are looked at only when the state
    lacks one of those; the map built then is the one the spec describes.
    """
    version = graph.version
    key_of = graph.key_of
    read = graph.read
    events_get = graph.events.get
    overlay_get = overlay.get
    base_get = base.get
    v12 = version.room_id_is_create_hash
    for eid in event_ids:
        key = key_of(eid)
        if key is None:
            continue
        if key == CREATE_KEY:
            # No state-dependent rule applies to a create event.
            overlay[key] = eid
            continue
        event = read(eid)
        wanted = auth_types_with(version, event)
        if v12:
            # v12's selection leaves the create event out (events do not list
            # it), but it is authorising all the same: the state's one wins over
            # the implicit link, as for any other auth type.
            wanted.add(CREATE_KEY)
        auth_events: dict[StateKey, Event] = {}
        lacking = False
        for akey in wanted:
            current = overlay_get(akey) or base_get(akey)
            if current is None:
                lacking = True
                continue
            auth_event = events_get(current)
            if auth_event is None:
                raise missing_error([current])
            auth_events[akey] = auth_event
        # The create event's ID goes along with it: the rules check the v12 room
        # ID against it, and the ID is the key the event came under.
        create_id: str | None = None
        if CREATE_KEY in auth_events:
            create_id = overlay_get(CREATE_KEY) or base_get(CREATE_KEY)
        if lacking:
            auth_events, create_id = _with_own_auth_events(graph, eid, auth_events, create_id)
        try:
            check_auth_with(version, event, auth_events, create_id)
        except AuthError:
            continue
        overlay[key] = eid


def _with_own_auth_events(
    graph: EventGraph, eid: str, from_state: dict[StateKey, Event], create_id: str | None
) -> tuple[dict[StateKey, Event], str | None]:
    """The event's own auth events by key (the last listed wins), overridden by
    ``from_state``; and the create event's ID, the state's if it has one."""
    key_of = graph.key_of
    events = graph.events
    own: dict[StateKey, Event] = {}
    own_create: str | None = None
    for aid in graph.auth_ids(eid):
        akey = key_of(aid)
        if akey is not None:
            own[akey] = events[aid]
            if akey == CREATE_KEY:
                own_create = aid
    own.update(from_state)
    return own, create_id if CREATE_KEY in from_state else own_create


def _mainline_sort(graph: EventGraph, event_ids: list[str], pl_id: str | None) -> list[str]:
    """Order by (mainline position, origin_server_ts, event_id): events that hang
    off an older power levels event first, then those of newer ones."""
    if not event_ids:
        return []
    mainline: list[str] = []
    seen: set[str] = set()
    current = pl_id
    while current is not None and current not in seen:
        seen.add(current)
        mainline.append(current)
        current = graph.power_levels_auth_event(current)
    # Oldest power levels event is 1; 0 means "no mainline event found", which
    # sorts first like the spec's infinite position.
    depth_of: dict[str, int] = {eid: len(mainline) - i for i, eid in enumerate(mainline)}

    def mainline_depth(eid: str) -> int:
        # Memoised along the chain of power-levels auth events walked.
        walked: list[str] = []
        on_walk: set[str] = set()
        current: str | None = eid
        depth = 0
        while current is not None:
            known = depth_of.get(current)
            if known is not None:
                depth = known
                break
            walked.append(current)
            on_walk.add(current)
            current = graph.power_levels_auth_event(current)
            if current in on_walk:
                break  # an auth cycle (only forgeable with v1/v2 event IDs)
        for w in walked:
            if graph.key_of(w) == POWER_LEVELS_KEY:
                depth_of[w] = depth
        return depth

    parent = graph.power_levels_auth_event
    stamp = graph.origin_server_ts
    keyed = []
    for eid in event_ids:
        # Most events hang directly off a mainline (or already seen) power
        # levels event; the memo is only a shortcut, so skipping it is harmless.
        depth = depth_of.get(eid)
        if depth is None:
            depth = depth_of.get(parent(eid))  # type: ignore[arg-type]
        if depth is None:
            depth = mainline_depth(eid)
        keyed.append((depth, stamp(eid), eid))
    keyed.sort()
    return [k[2] for k in keyed]
