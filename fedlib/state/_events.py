"""Per-call access to the events of a resolution.

Everything here lives in a :class:`EventGraph` created for one call of
:func:`fedlib.state.resolve` and dropped afterwards: the memo tables make each
event's auth links and each power-levels event's ``users`` map be parsed once per
call, and nothing is shared between calls (or threads).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence, ValuesView
from itertools import chain
from operator import itemgetter
from typing import Any

from fedlib.errors import StateResolutionError
from fedlib.events.room_versions import EventFormat, RoomVersion

Event = Mapping[str, Any]
StateKey = tuple[str, str]
StateMap = Mapping[StateKey, str]

CREATE_KEY: StateKey = ("m.room.create", "")
POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")
JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")
_POWER_TYPES = frozenset(("m.room.power_levels", "m.room.join_rules", "m.room.create"))

_get_auth_events = itemgetter("auth_events")
_first = itemgetter(0)
_is_str = str.__instancecheck__


def missing_error(missing: Iterable[str]) -> StateResolutionError:
    ids = frozenset(missing)
    shown = ", ".join(sorted(map(str, ids))[:10])
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    return StateResolutionError(
        f"State resolution needs {len(ids)} event(s) missing from event_map: {shown}{more}",
        missing_event_ids=ids,
    )


def parse_int(value: object) -> int:
    """``int(value)`` as the reference implementation applies it to power levels
    (so ``"50"`` is 50 in room versions that allow string levels); 0 when that fails."""
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError, OverflowError):
        return 0


def state_key_of(event: Event) -> StateKey | None:
    """``(type, state_key)`` of a state event, ``None`` for anything else."""
    etype = event.get("type")
    skey = event.get("state_key")
    if isinstance(etype, str) and isinstance(skey, str):
        return (etype, skey)
    return None


class EventGraph:
    """The event map of one resolution, with memoised auth links.

    In v12 rooms events do not list the create event, whose ID is the room ID
    with ``$`` for ``!``; it is added as an implicit auth event of every other
    event so auth chains and auth-event lookups see it, as the v12 auth rules
    require.
    """

    __slots__ = (
        "_auth_ids",
        "_implicit_create",
        "_keys",
        "_pl_parent",
        "_pl_users",
        "_read",
        "_ts",
        "events",
        "version",
    )

    def __init__(self, version: RoomVersion, events: Mapping[str, Event]) -> None:
        self.version = version
        self.events = events
        self._auth_ids: dict[str, tuple[str, ...]] = {}
        self._implicit_create = version.room_id_is_create_hash
        self._pl_users: dict[str, tuple[dict[str, Any], int]] = {}
        self._keys: dict[str, StateKey | None] = {}
        self._pl_parent: dict[str, str | None] = {}
        self._ts: dict[str, int] = {}
        # Events already fetched by ID, by the same ID objects the caller will
        # look them up with again (a large map's lookups miss the cache).
        self._read: dict[str, Event] = {}

    def get(self, event_id: str) -> Event:
        try:
            return self.events[event_id]
        except KeyError:
            raise missing_error([event_id]) from None

    def key_of(self, event_id: str) -> StateKey | None:
        """``(type, state_key)`` of an event of the map (``None``: not a state
        event, or not in the map)."""
        try:
            return self._keys[event_id]
        except KeyError:
            event = self.events.get(event_id)
            key = None if event is None else state_key_of(event)
            self._keys[event_id] = key
            return key

    def auth_ids(self, event_id: str) -> tuple[str, ...]:
        """The event's auth event IDs (plus the implicit v12 create event)."""
        ids = self._auth_ids.get(event_id)
        if ids is None:
            ids = self._parse_auth_ids(self.get(event_id))
            self._auth_ids[event_id] = ids
        return ids

    def _parse_auth_ids(self, event: Event) -> tuple[str, ...]:
        raw = event.get("auth_events")
        out: list[str] = []
        if isinstance(raw, list):
            if self.version.event_format is EventFormat.V1:
                for entry in raw:
                    if isinstance(entry, list | tuple) and entry and isinstance(entry[0], str):
                        out.append(entry[0])
            else:
                out.extend(filter(_is_str, raw))
        if self._implicit_create and event.get("type") != "m.room.create":
            room_id = event.get("room_id")
            if isinstance(room_id, str) and room_id.startswith("!"):
                out.append("$" + room_id[1:])
        return tuple(out)

    def power_events(self, event_ids: Iterable[str]) -> list[str]:
        """The power events among ``event_ids`` (which must all be in the map).

        Each event is read once, in one go: its state key, auth links and
        timestamp are memoised here for the sorting and checks that follow, which
        then find them without going back to the (for a large room, cold) event.
        """
        events = self.events
        keys = self._keys
        auth = self._auth_ids
        stamps = self._ts
        read = self._read
        parse = self._parse_auth_ids
        found: list[str] = []
        for eid in event_ids:
            event = read[eid] = events[eid]
            etype = event.get("type")
            skey = event.get("state_key")
            ts = event.get("origin_server_ts")
            stamps[eid] = ts if isinstance(ts, int) else 0
            if eid not in auth:
                auth[eid] = parse(event)
            if not (isinstance(etype, str) and isinstance(skey, str)):
                keys[eid] = None
                continue
            keys[eid] = (etype, skey)
            if etype == "m.room.member":
                if event.get("sender") != skey:
                    content = event.get("content")
                    if isinstance(content, dict) and content.get("membership") in ("leave", "ban"):
                        found.append(eid)
            elif skey == "" and etype in _POWER_TYPES:
                found.append(eid)
        return found

    def read(self, event_id: str) -> Event:
        """The event (which must be in the map), from the events already read
        when it is one of them."""
        event = self._read.get(event_id)
        return self.events[event_id] if event is None else event

    def walk(self, roots: Iterable[str]) -> set[str]:
        """The reflexive auth closure of ``roots``: the roots and every event
        reachable from them through auth links."""
        seen = set(roots)
        closure: set[str] = self._levels(seen, seen, None)
        return closure

    def reached_targets(
        self, roots: Iterable[str], targets: set[str], known_elsewhere: set[str]
    ) -> set[str]:
        """The ``targets`` reachable from ``roots`` through auth links (the caller
        has already taken out targets that are roots themselves).

        ``roots`` may be a whole room's state, so this is the one walk whose cost
        is in the room's size, and it is trimmed three ways: the roots are not
        collected into a set (a root reached again from another root is merely
        expanded twice); auth closures inside ``known_elsewhere`` (a set closed
        under auth links and disjoint from ``targets``) are not entered; and the
        walk stops once every target has been found.
        """
        remaining = set(targets)
        if not remaining:
            return set()
        # The first level goes in the caller's order: for a room's whole state
        # that is roughly the order the event dicts were allocated in, and
        # visiting them in set (hash) order costs several times more in cache
        # misses.
        frontier = roots if isinstance(roots, Sequence | ValuesView) else list(roots)
        seen = set(known_elsewhere)
        left: set[str] = self._levels(frontier, seen, remaining)
        return targets - left

    def _levels(self, frontier: Collection[str], seen: set[str], remaining: set[str] | None) -> Any:
        """Breadth-first over auth links, level by level with C-level ``map`` and
        set operations; returns the closure (``seen`` grown), or with ``remaining`` the
        targets still unseen when the walk ends. Odd input (missing events,
        malformed ``auth_events``) falls back to :meth:`_walk_slowly`, which
        reports exactly what is missing."""
        events = self.events
        v1_format = self.version.event_format is EventFormat.V1
        create_id: str | None = None
        start = frontier
        try:
            while frontier:
                # All of a level's events are fetched first, in one C loop (an
                # ``itemgetter`` of many keys): the lookups, each likely a cache
                # miss in a large map, then overlap instead of waiting on each
                # other's set insertions.
                fetched = (
                    itemgetter(*frontier)(events)
                    if len(frontier) > 1
                    else map(events.__getitem__, frontier)
                )
                raw = chain.from_iterable(map(_get_auth_events, fetched))
                step = set(map(_first, raw) if v1_format else raw)
                if self._implicit_create:
                    if create_id is None:
                        create_id = self._find_create_id(frontier)
                    if create_id is not None:
                        step.add(create_id)
                # ``a - b`` iterates the smaller side; ``a -= b`` would iterate
                # all of ``seen`` on every level.
                step = step - seen
                seen |= step
                frontier = step
                if remaining is not None:
                    remaining = remaining - step
                    if not remaining:
                        return remaining
        except (KeyError, TypeError, IndexError):
            # A non-string ID is no key of ``events`` either, so it lands here too.
            closure = self._walk_slowly(set(start) | seen)
            if remaining is None:
                return closure  # ``seen`` may hold the odd ID that failed
            return remaining - closure
        return seen if remaining is None else remaining

    def _find_create_id(self, ids: Iterable[str]) -> str | None:
        # Every event of one resolution is in the same room, so any event's room
        # ID names the create event.
        for eid in ids:
            room_id = self.events[eid].get("room_id")
            if isinstance(room_id, str) and room_id.startswith("!"):
                return "$" + room_id[1:]
        return None

    def _walk_slowly(self, seen: set[str]) -> set[str]:
        seen = {e for e in seen if isinstance(e, str)}
        stack = list(seen)
        missing: set[str] = set()
        while stack:
            eid = stack.pop()
            if eid not in self.events:
                missing.add(eid)
                continue
            for aid in self.auth_ids(eid):
                if aid not in seen:
                    seen.add(aid)
                    stack.append(aid)
        if missing:
            raise missing_error(missing)
        return seen

    def power_level(self, event_id: str) -> int | float:
        """The sender's power level according to the event's own auth events,
        the first key of the reverse topological power ordering.

        A creator in a room with privileged creators (v12) has infinite power; with
        no power levels event the creator has 100 and everyone else 0.
        """
        event = self._read.get(event_id) or self.get(event_id)
        sender = event.get("sender")
        pl_id: str | None = None
        create: Event | None = None
        first_create: Event | None = None
        for aid in self.auth_ids(event_id):
            key = self.key_of(aid)
            if key == POWER_LEVELS_KEY:
                pl_id = aid
            elif key == CREATE_KEY:
                create = self.events[aid]
                if first_create is None:
                    first_create = create
        if create is not None and self.version.privileged_creators and is_creator(create, sender):
            return math.inf
        if pl_id is None:
            if first_create is None:
                return 0
            if self.version.implicit_room_creator:
                creator = first_create.get("sender")
            else:
                content = first_create.get("content")
                creator = content.get("creator") if isinstance(content, dict) else None
            return 100 if creator is not None and creator == sender else 0
        users, default = self._users_of(pl_id)
        level = users.get(sender) if isinstance(sender, str) else None
        if level is None:
            return default
        return parse_int(level)

    def _users_of(self, pl_id: str) -> tuple[dict[str, Any], int]:
        parsed = self._pl_users.get(pl_id)
        if parsed is None:
            content = self.get(pl_id).get("content")
            if not isinstance(content, dict):
                content = {}
            users = content.get("users")
            default = content.get("users_default", 0)
            parsed = (
                users if isinstance(users, dict) else {},
                0 if default is None else parse_int(default),
            )
            self._pl_users[pl_id] = parsed
        return parsed

    def power_levels_auth_event(self, event_id: str) -> str | None:
        """The first ``m.room.power_levels`` event among the event's auth events."""
        try:
            return self._pl_parent[event_id]
        except KeyError:
            pass
        found = None
        for aid in self.auth_ids(event_id):
            if self.key_of(aid) == POWER_LEVELS_KEY:
                found = aid
                break
        self._pl_parent[event_id] = found
        return found

    def origin_server_ts(self, event_id: str) -> int:
        try:
            return self._ts[event_id]
        except KeyError:
            pass
        ts = self.get(event_id).get("origin_server_ts")
        stamp = self._ts[event_id] = ts if isinstance(ts, int) else 0
        return stamp


def is_creator(create: Event, user_id: object) -> bool:
    """Whether ``user_id`` is the create event's sender or one of its
    ``additional_creators`` (the v12 privileged creators)."""
    if not isinstance(user_id, str):
        return False
    if create.get("sender") == user_id:
        return True
    content = create.get("content")
    extra = content.get("additional_creators") if isinstance(content, dict) else None
    return isinstance(extra, list) and user_id in extra
