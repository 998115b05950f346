"""Properties of state resolution over generated forked rooms (hypothesis)."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from fedlib.auth import check_auth
from fedlib.errors import AuthError, StateResolutionError
from fedlib.state import auth_chain, auth_events_from_state, resolve
from tests.fixtures.stateres_rooms import RoomBuilder, State, forked_room, user_id

VERSIONS = ("1", "2", "3", "6", "8", "10", "11", "12")
V2_VERSIONS = tuple(v for v in VERSIONS if v != "1")

rooms = st.builds(
    lambda version, seed, members, branches, steps, nested: (
        version,
        *forked_room(version, seed, members=members, branches=branches, steps=steps, nested=nested),
    ),
    st.sampled_from(VERSIONS),
    st.integers(0, 2**32),
    st.integers(2, 8),
    st.integers(2, 3),
    st.integers(1, 12),
    st.booleans(),
)

SETTINGS = settings(max_examples=40, deadline=None)


def _conflicted(sets: list[State]) -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set().union(*sets)
    return {k for k in keys if len({s.get(k) for s in sets}) > 1}


class ResolutionProperties(unittest.TestCase):
    @SETTINGS
    @given(rooms, st.randoms(use_true_random=False))
    def test_deterministic_and_order_independent(
        self, room: tuple[str, dict[str, Any], list[State]], rnd: random.Random
    ) -> None:
        version, events, sets = room
        expected = resolve(version, sets, events)
        self.assertEqual(resolve(version, sets, events), expected)
        shuffled_sets = list(sets)
        rnd.shuffle(shuffled_sets)
        items = list(events.items())
        rnd.shuffle(items)
        # Each state map's own iteration order must not matter either.
        reordered = []
        for s in shuffled_sets:
            entries = list(s.items())
            rnd.shuffle(entries)
            reordered.append(dict(entries))
        self.assertEqual(resolve(version, reordered, dict(items)), expected)

    @SETTINGS
    @given(rooms)
    def test_idempotent(self, room: tuple[str, dict[str, Any], list[State]]) -> None:
        version, events, sets = room
        for s in sets:
            self.assertEqual(resolve(version, [s], events), s)
            self.assertEqual(resolve(version, [s, s], events), s)
            self.assertEqual(resolve(version, [s, dict(s), s], events), s)

    @SETTINGS
    @given(rooms)
    def test_unconflicted_survive_and_results_come_from_inputs(
        self, room: tuple[str, dict[str, Any], list[State]]
    ) -> None:
        version, events, sets = room
        result = resolve(version, sets, events)
        conflicted = _conflicted(sets)
        for key, eid in sets[0].items():
            if key not in conflicted:
                self.assertEqual(result.get(key), eid)
        # Every resolved event is from a state set or from the auth chain of one.
        inputs = {eid for s in sets for eid in s.values()}
        reachable = inputs | auth_chain(inputs, events, version)
        self.assertLessEqual(set(result.values()), reachable)
        for key, eid in result.items():
            event = events[eid]
            self.assertEqual((event["type"], event["state_key"]), key)
        if version == "1":
            # v1 picks among the conflicting events themselves (v2 may also fall
            # back to an event of their auth chains).
            for key in conflicted:
                if key in result:
                    self.assertIn(result[key], {s.get(key) for s in sets})

    @SETTINGS
    @given(st.sampled_from(V2_VERSIONS), st.integers(0, 2**32), st.integers(1, 10))
    def test_resolved_events_pass_auth_against_resolved_state(
        self, version: str, seed: int, steps: int
    ) -> None:
        # Rooms whose history cannot invalidate an accepted event after the fact:
        # a public room that stays public, state changed by the creator only
        # (who never loses power), users only joining or renaming themselves.
        # There, every event of the resolved state passes the auth rules against
        # the auth events selected from the resolved state.
        b = RoomBuilder(version, seed)
        rng = b.rng
        trunk = b.create()
        counter = iter(range(1, 10**6))
        for _ in range(3):
            b.join(trunk, user_id(next(counter)))
        lines = [trunk.fork(rng.randrange(3)) for _ in range(rng.choice((2, 3)))]
        for line in lines:
            for _ in range(steps):
                roll = rng.random()
                if roll < 0.3:
                    b.join(line, user_id(next(counter)))
                elif roll < 0.5:
                    user = rng.choice(b.members(line))
                    b.join(line, user, displayname=f"d{rng.randrange(100)}")
                elif roll < 0.7:
                    b.build(line, "m.room.topic", b.creator, {"topic": str(rng.random())}, "")
                elif roll < 0.8:
                    b.build(line, "m.room.name", b.creator, {"name": str(rng.random())}, "")
                else:
                    content = dict(b.power_levels(line))
                    users = dict(content["users"])
                    users[rng.choice(b.members(line))] = rng.choice((10, 50))
                    users.pop(b.creator, None)
                    if not b.version.privileged_creators:
                        users[b.creator] = 100
                    content["users"] = users
                    b.build(line, "m.room.power_levels", b.creator, content, "")
        sets = [line.state for line in lines]
        result = resolve(version, sets, b.events)
        create_id = result[("m.room.create", "")]
        for key, eid in result.items():
            if key == ("m.room.create", ""):
                continue
            event = b.events[eid]
            picked = auth_events_from_state(version, result, event)
            auth_events = {k: b.events[v] for k, v in picked.items()}
            auth_events[("m.room.create", "")] = b.events[create_id]
            try:
                check_auth(version, event, auth_events, create_event_id=create_id)
            except AuthError as e:  # pragma: no cover - reported by the assertion
                self.fail(f"{key} {eid} fails against the resolved state: {e}")


def _closure(events: dict[str, Any], roots: set[str], version: str) -> set[str]:
    """Reflexive auth closure, straight from the definition (v12: the create
    event is an implicit auth event of every other event)."""
    seen = set(roots)
    stack = list(roots)
    while stack:
        event = events[stack.pop()]
        auth = [a[0] if isinstance(a, list) else a for a in event.get("auth_events", [])]
        if version == "12" and event["type"] != "m.room.create":
            auth.append("$" + event["room_id"][1:])
        for aid in auth:
            if aid not in seen:
                seen.add(aid)
                stack.append(aid)
    return seen


class FullConflictedSetProperties(unittest.TestCase):
    """The optimised full conflicted set against the definitions computed by
    brute force: auth difference over whole-state auth chains, and (v12) every
    event on an auth path between two conflicted events."""

    @SETTINGS
    @given(rooms)
    def test_matches_definition(self, room: tuple[str, dict[str, Any], list[State]]) -> None:
        from fedlib.events.room_versions import get_room_version
        from fedlib.state._events import EventGraph
        from fedlib.state.v2 import _full_conflicted_set, separate

        version, events, sets = room
        if version == "1":
            return
        unconflicted, keys = separate(sets)
        conflicted = {s[k] for s in sets for k in keys if k in s}
        chains = [_closure(events, set(s.values()), version) for s in sets]
        expected = set().union(*chains) - chains[0].intersection(*chains[1:])
        if version == "12":
            for x in set().union(*[_closure(events, {c}, version) for c in conflicted]):
                if _closure(events, {x}, version) & conflicted:
                    expected.add(x)
        expected |= conflicted
        graph = EventGraph(get_room_version(version), events)
        got = _full_conflicted_set(graph, sets, keys, conflicted, unconflicted) | conflicted
        self.assertEqual(got, expected)


_JUNK = (None, 1, "x", [], {}, [1], [["$x"]], {"a": 1}, -5, 1.5, True)
_FIELDS = ("type", "state_key", "sender", "content", "auth_events", "origin_server_ts", "depth")


class MalformedInputProperties(unittest.TestCase):
    @settings(max_examples=150, deadline=None)
    @given(rooms, st.randoms(use_true_random=False))
    def test_never_crashes(
        self, room: tuple[str, dict[str, Any], list[State]], rnd: random.Random
    ) -> None:
        """Broken fields and auth cycles (forgeable with v1/v2 event IDs) give a
        state map or a StateResolutionError, the same one whatever the order."""
        version, events, sets = room
        events = {eid: dict(ev) for eid, ev in events.items()}
        ids = sorted(events)
        for _ in range(rnd.randint(1, 4)):
            event = events[rnd.choice(ids)]
            if rnd.random() < 0.5:
                field = rnd.choice(_FIELDS)
                if rnd.random() < 0.3:
                    event.pop(field, None)
                else:
                    event[field] = rnd.choice(_JUNK)
            elif isinstance(event.get("auth_events"), list):
                other = rnd.choice(ids)
                link = [other, {"sha256": "x"}] if version in ("1", "2") else other
                event["auth_events"] = [*event["auth_events"], link]
        outcomes = []
        for order in (1, -1):
            try:
                outcomes.append(
                    resolve(version, sets[::order], dict(list(events.items())[::order]))
                )
            except StateResolutionError as e:
                outcomes.append(e.missing_event_ids)
        self.assertEqual(outcomes[0], outcomes[1])


class SeparateProperties(unittest.TestCase):
    """``separate`` compares maps side by side while their keys line up; maps
    that share a prefix of keys, diverge, or differ only in length all split as
    the definition says."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.dictionaries(st.integers(0, 12), st.sampled_from("abc")),
        st.lists(st.tuples(st.integers(0, 12), st.sampled_from("abc") | st.none()), max_size=6),
        st.integers(0, 3),
        st.randoms(use_true_random=False),
    )
    def test_matches_definition(
        self,
        base: dict[int, str],
        edits: list[tuple[int, str | None]],
        extra_sets: int,
        rnd: random.Random,
    ) -> None:
        from fedlib.state.v2 import separate

        def derive() -> dict[tuple[str, str], str]:
            out = {("t", str(k)): v for k, v in base.items()}
            for k, v in rnd.sample(edits, rnd.randint(0, len(edits))):
                if v is None:
                    out.pop(("t", str(k)), None)
                else:
                    out[("t", str(k))] = v
            if rnd.random() < 0.3:
                entries = list(out.items())
                rnd.shuffle(entries)
                out = dict(entries)
            return out

        sets = [derive() for _ in range(1 + extra_sets)]
        keys: set[tuple[str, str]] = set().union(*sets)
        conflicted = {k for k in keys if len({s.get(k) for s in sets}) > 1}
        unconflicted = {k: v for k, v in sets[0].items() if k not in conflicted}
        self.assertEqual(separate(sets), (unconflicted, conflicted))
