"""State resolution: scenario tests (the classic v2 cases, v2.1, v1), API and errors.

Scenarios are small event DAGs. Every event's auth events are selected from the
state before it, which is itself the resolution of the states after its
``prev_events``, as a server computes it; each event must pass the auth rules
there (the builder refuses it otherwise), and the final state is the resolution
of the states after the events the ``END`` marker points at.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from twisted.trial import unittest

from fedlib.errors import StateResolutionError, UnsupportedRoomVersionError
from fedlib.events.room_versions import get_room_version
from fedlib.state import auth_chain, auth_events_from_state, resolve, state_after
from fedlib.state._events import EventGraph
from fedlib.state.v2 import (
    _full_conflicted_set,
    _reverse_topological_power_sort,
    separate,
)
from tests.fixtures.stateres_rooms import Branch, RoomBuilder

ALICE = "@alice:a.example"
BOB = "@bob:b.example"
CHARLIE = "@charlie:c.example"
ZARA = "@zara:z.example"
EVELYN = "@evelyn:e.example"

#: name -> (type, sender, content, state_key)
Spec = tuple[str, str, dict[str, Any], str | None]


def _member(sender: str, membership: str, target: str | None = None) -> Spec:
    return ("m.room.member", sender, {"membership": membership}, target or sender)


def _pl(sender: str, users: dict[str, int]) -> Spec:
    return ("m.room.power_levels", sender, {"users": users}, "")


def _topic(sender: str, text: str = "topic") -> Spec:
    return ("m.room.topic", sender, {"topic": text}, "")


class Scenario:
    """The classic initial room (Alice creates it with power 100, public join
    rules; Bob, Charlie and Zara join) plus the scenario's events."""

    def __init__(
        self,
        room_version: str,
        events: dict[str, Spec],
        edges: Sequence[Sequence[str]],
        creator: str = ALICE,
    ) -> None:
        self.room_version = room_version
        self.builder = RoomBuilder(room_version, seed=0)
        self.builder.creator = creator
        self.ids: dict[str, str] = {}
        self.after: dict[str, dict[tuple[str, str], str]] = {}
        self.ts = 0
        trunk = self.builder.create()
        for user in (BOB, CHARLIE, ZARA):
            self.builder.join(trunk, user)
        self.ids["START"] = trunk.tip[0]
        self.after["START"] = dict(trunk.state)
        self.trunk = trunk

        prevs: dict[str, list[str]] = {}
        for chain in edges:
            for later, earlier in pairwise(chain):
                prevs.setdefault(later, [])
                if earlier not in prevs[later]:
                    prevs[later].append(earlier)
        pending = list(events)
        while pending:
            for name in pending:
                if all(p in self.after for p in prevs.get(name, ["START"])):
                    self._add(name, events[name], prevs.get(name, ["START"]))
                    pending.remove(name)
                    break
            else:
                raise AssertionError(f"Cycle or unknown prev among {pending}")
        self.final = self.resolve_after(prevs["END"])

    def resolve_after(self, names: Sequence[str]) -> dict[tuple[str, str], str]:
        states = [self.after[n] for n in names]
        if len(states) == 1:
            return dict(states[0])
        return resolve(self.room_version, states, self.builder.events)

    def _add(self, name: str, spec: Spec, prev_names: list[str]) -> None:
        etype, sender, content, state_key = spec
        self.ts += 1
        state = self.resolve_after(prev_names)
        branch = Branch(state, [self.ids[p] for p in prev_names], 100, 2_000_000 + self.ts)
        eid = self.builder.build(branch, etype, sender, content, state_key)
        if eid is None:
            raise AssertionError(f"Scenario event {name} is not allowed in its own branch")
        self.ids[name] = eid
        self.after[name] = branch.state

    def holds(self, name: str) -> bool:
        """Whether the final state holds the named event."""
        return self.ids[name] in self.final.values()


class ClassicV2Scenarios(unittest.TestCase):
    """The v2 scenarios every implementation checks, for v2-format and v3+-format
    room versions."""

    versions = ("2", "6", "10", "11")

    def test_ban_vs_power_levels(self) -> None:
        # Alice gives Bob 50 and bans him; concurrently Bob, at 50, changes the
        # power levels. The ban sorts first (Alice has more power), so Bob's
        # change no longer passes.
        for version in self.versions:
            s = Scenario(
                version,
                {
                    "PA": _pl(ALICE, {ALICE: 100, BOB: 50}),
                    "MA": _member(ALICE, "join"),
                    "MB": _member(ALICE, "ban", BOB),
                    "PB": _pl(BOB, {ALICE: 100, BOB: 50}),
                },
                [["END", "MB", "MA", "PA", "START"], ["END", "PB", "PA"]],
            )
            self.assertTrue(s.holds("PA"), version)
            self.assertTrue(s.holds("MA"), version)
            self.assertTrue(s.holds("MB"), version)
            self.assertFalse(s.holds("PB"), version)

    def test_join_rule_evasion(self) -> None:
        # Alice makes the room invite-only while Evelyn joins on another branch:
        # the join rules are a power event and go first, so the join fails.
        for version in self.versions:
            s = Scenario(
                version,
                {
                    "JR": ("m.room.join_rules", ALICE, {"join_rule": "invite"}, ""),
                    "ME": _member(EVELYN, "join"),
                },
                [["END", "JR", "START"], ["END", "ME", "START"]],
            )
            self.assertTrue(s.holds("JR"), version)
            self.assertFalse(s.holds("ME"), version)
            self.assertNotIn(("m.room.member", EVELYN), s.final, version)

    def test_offtopic_power_levels(self) -> None:
        # A chain of power level changes on one branch, the first of them on the
        # other: the latest change in the chain wins.
        for version in self.versions:
            s = Scenario(
                version,
                {
                    "PA": _pl(ALICE, {ALICE: 100, BOB: 50}),
                    "PB": _pl(BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}),
                    "PC": _pl(CHARLIE, {ALICE: 100, BOB: 50, CHARLIE: 0}),
                },
                [["END", "PC", "PB", "PA", "START"], ["END", "PA"]],
            )
            self.assertEqual(s.final[("m.room.power_levels", "")], s.ids["PC"], version)

    def test_topic_basic(self) -> None:
        # Bob, given 50 by Alice, sets a topic on one branch; Alice takes his
        # power away and sets her own topic on the other. Alice's power levels
        # win, so Bob's topic and his attempt to keep his power fail.
        for version in self.versions:
            s = Scenario(
                version,
                {
                    "T1": _topic(ALICE, "t1"),
                    "PA1": _pl(ALICE, {ALICE: 100, BOB: 50}),
                    "T2": _topic(ALICE, "t2"),
                    "PA2": _pl(ALICE, {ALICE: 100, BOB: 0}),
                    "PB": _pl(BOB, {ALICE: 100, BOB: 50}),
                    "T3": _topic(BOB, "t3"),
                },
                [["END", "PA2", "T2", "PA1", "T1", "START"], ["END", "T3", "PB", "PA1"]],
            )
            self.assertEqual(s.final[("m.room.power_levels", "")], s.ids["PA2"], version)
            self.assertEqual(s.final[("m.room.topic", "")], s.ids["T2"], version)

    def test_topic_reset(self) -> None:
        # Bob sets a topic with power Alice gave him, then Alice bans him on the
        # branch that still has her first topic: the ban takes Bob's topic with it.
        for version in self.versions:
            s = Scenario(
                version,
                {
                    "T1": _topic(ALICE, "t1"),
                    "PA": _pl(ALICE, {ALICE: 100, BOB: 50}),
                    "T2": _topic(BOB, "t2"),
                    "MB": _member(ALICE, "ban", BOB),
                },
                [["END", "MB", "T2", "PA", "T1", "START"], ["END", "T1"]],
            )
            self.assertEqual(s.final[("m.room.topic", "")], s.ids["T1"], version)
            self.assertEqual(s.final[("m.room.member", BOB)], s.ids["MB"], version)
            self.assertEqual(s.final[("m.room.power_levels", "")], s.ids["PA"], version)

    def test_topic(self) -> None:
        # As topic_basic, with more events after the fork: Alice's last topic,
        # later in mainline order than Bob's, wins.
        for version in self.versions:
            s = Scenario(
                version,
                {
                    "T1": _topic(ALICE, "t1"),
                    "PA1": _pl(ALICE, {ALICE: 100, BOB: 50}),
                    "T2": _topic(ALICE, "t2"),
                    "PA2": _pl(ALICE, {ALICE: 100, BOB: 0}),
                    "PB": _pl(BOB, {ALICE: 100, BOB: 50}),
                    "T3": _topic(BOB, "t3"),
                    "MZ1": ("m.room.message", ZARA, {"body": "hi"}, None),
                    "T4": _topic(ALICE, "t4"),
                },
                [
                    ["END", "T4", "MZ1", "PA2", "T2", "PA1", "T1", "START"],
                    ["END", "MZ1", "T3", "PB", "PA1"],
                ],
            )
            self.assertEqual(s.final[("m.room.topic", "")], s.ids["T4"], version)
            self.assertEqual(s.final[("m.room.power_levels", "")], s.ids["PA2"], version)

    def test_mainline_sort(self) -> None:
        # Topics that hang off a later power levels event of the mainline sort
        # after those of an earlier one, whatever their timestamps: T3 (after
        # PA2) beats T4 (after PB, which loses to PA2, so T4 hangs off PA1).
        for version in self.versions:
            s = Scenario(
                version,
                {
                    "T1": _topic(ALICE, "t1"),
                    "PA1": _pl(ALICE, {ALICE: 100, BOB: 50}),
                    "T2": _topic(ALICE, "t2"),
                    "PA2": _pl(ALICE, {ALICE: 100, BOB: 50, CHARLIE: 50}),
                    "T3": _topic(ALICE, "t3"),
                    "PB": _pl(BOB, {ALICE: 100, BOB: 50, ZARA: 50}),
                    "T4": _topic(BOB, "t4"),
                },
                [["END", "T3", "PA2", "T2", "PA1", "T1", "START"], ["END", "T4", "PB", "PA1"]],
            )
            self.assertEqual(s.final[("m.room.power_levels", "")], s.ids["PA2"], version)
            self.assertEqual(s.final[("m.room.topic", "")], s.ids["T3"], version)

    def test_unconflicted_kept(self) -> None:
        for version in self.versions:
            s = Scenario(
                version,
                {
                    "N": ("m.room.name", ALICE, {"name": "n"}, ""),
                    "TA": _topic(ALICE, "a"),
                    "TB": _topic(BOB, "b"),
                },
                [["END", "TA", "N", "START"], ["END", "TB", "N"]],
            )
            self.assertEqual(s.final[("m.room.name", "")], s.ids["N"])
            # Same power, TB sent later: later origin_server_ts wins the tie.
            self.assertEqual(s.final[("m.room.topic", "")], s.ids["TB"], version)


class LexicographicalOrderingTests(unittest.TestCase):
    """The reverse topological power ordering on a hand-made auth DAG with equal
    power and timestamps: ties fall to the event ID."""

    def _graph(self, links: dict[str, list[str]], levels: dict[str, int] | None = None) -> Any:
        events: dict[str, dict[str, Any]] = {}
        for name, auth in links.items():
            events["$" + name] = {
                "type": "m.room.member",
                "state_key": "@" + name + ":x",
                "sender": "@" + name + ":x",
                "content": {"membership": "ban"},
                "room_id": "!r:x",
                "auth_events": ["$" + a for a in auth],
                "origin_server_ts": 0,
            }
        return EventGraph(get_room_version("10"), events), set(events)

    def test_ties_by_event_id(self) -> None:
        graph, ids = self._graph({"l": ["o"], "m": ["n", "o"], "n": ["o"], "o": [], "p": ["o"]})
        order = _reverse_topological_power_sort(graph, sorted(ids), ids)
        self.assertEqual(order, ["$o", "$l", "$n", "$m", "$p"])

    def test_power_then_timestamp_then_id(self) -> None:
        create = {
            "type": "m.room.create",
            "state_key": "",
            "sender": "@c:x",
            "content": {"creator": "@c:x"},
            "room_id": "!r:x",
            "auth_events": [],
            "origin_server_ts": 0,
        }
        pl = {
            "type": "m.room.power_levels",
            "state_key": "",
            "sender": "@c:x",
            "content": {"users": {"@c:x": 100, "@high:x": 50}},
            "room_id": "!r:x",
            "auth_events": ["$create"],
            "origin_server_ts": 1,
        }

        def ev(sender: str, ts: int) -> dict[str, Any]:
            return {
                "type": "m.room.join_rules",
                "state_key": "",
                "sender": sender,
                "content": {"join_rule": "invite"},
                "room_id": "!r:x",
                "auth_events": ["$create", "$pl"],
                "origin_server_ts": ts,
            }

        events = {
            "$create": create,
            "$pl": pl,
            "$a": ev("@low:x", 5),
            "$b": ev("@high:x", 9),
            "$c": ev("@low:x", 3),
            "$d": ev("@low:x", 3),
        }
        graph = EventGraph(get_room_version("10"), events)
        ids = {"$a", "$b", "$c", "$d"}
        order = _reverse_topological_power_sort(graph, sorted(ids), ids)
        self.assertEqual(order, ["$b", "$c", "$d", "$a"])


class V21Tests(unittest.TestCase):
    """Room v12's state resolution (v2.1) against v2 (room v11) on the same shapes."""

    def _two_topics_after_ban(self, version: str) -> tuple[dict[Any, str], str, str, str]:
        # Bob, at power 0 with topic level 0, sets a topic on one branch and
        # Alice sets hers on another; both states already hold Bob's ban (it is
        # unconflicted). v2 checks Bob's topic against the unconflicted state, in
        # which Bob is banned; v2.1 starts from the empty state, so Bob's topic
        # is checked against its own auth events and, being later, wins.
        b = RoomBuilder(version, seed=0)
        trunk = b.create()
        b.join(trunk, BOB)
        ban_branch = trunk.fork()
        bob_branch = trunk.fork()
        alice_branch = trunk.fork()
        alice_branch.ts = bob_branch.ts = ban_branch.ts + 10
        ta = b.build(alice_branch, "m.room.topic", b.creator, {"topic": "alice"}, "")
        bob_branch.ts += 1
        tb = b.build(bob_branch, "m.room.topic", BOB, {"topic": "bob"}, "")
        ban = b.build(ban_branch, "m.room.member", b.creator, {"membership": "ban"}, BOB)
        assert ta and tb and ban
        s1 = dict(alice_branch.state)
        s2 = dict(bob_branch.state)
        s1[("m.room.member", BOB)] = s2[("m.room.member", BOB)] = ban
        return resolve(version, [s1, s2], b.events), ta, tb, ban

    def test_v21_starts_from_empty_state(self) -> None:
        v11, ta11, _, ban11 = self._two_topics_after_ban("11")
        self.assertEqual(v11[("m.room.topic", "")], ta11)
        self.assertEqual(v11[("m.room.member", BOB)], ban11)
        v12, _, tb12, ban12 = self._two_topics_after_ban("12")
        self.assertEqual(v12[("m.room.topic", "")], tb12)
        # The unconflicted ban is put back on top.
        self.assertEqual(v12[("m.room.member", BOB)], ban12)

    def test_conflicted_subgraph(self) -> None:
        # Alice's displayname change J2 cites the power levels P, which cites her
        # join J1; J1 and J2 conflict. P lies on an auth path between them, so
        # v2.1 puts it in the full conflicted set; v2 does not (it is in every
        # state's auth chain).
        for version, expect in (("11", False), ("12", True)):
            b = RoomBuilder(version, seed=0)
            trunk = b.create()
            s1 = dict(trunk.state)
            pl = trunk.state[("m.room.power_levels", "")]
            j1 = trunk.state[("m.room.member", b.creator)]
            j2 = b.join(trunk, b.creator, displayname="Alice")
            assert j2 is not None
            s2 = dict(trunk.state)
            graph = EventGraph(get_room_version(version), b.events)
            unconflicted, keys = separate([s1, s2])
            self.assertEqual(keys, {("m.room.member", b.creator)})
            full = _full_conflicted_set(graph, [s1, s2], keys, {j1, j2}, unconflicted)
            self.assertEqual(pl in full, expect, version)
            self.assertEqual(resolve(version, [s1, s2], b.events)[("m.room.member", b.creator)], j2)

    def test_v12_creator_outranks_power_levels(self) -> None:
        # In v12 the creator has infinite power: a ban by the creator sorts
        # before a power levels change by a user at 100 and wins.
        b = RoomBuilder("12", seed=0)
        trunk = b.create()
        b.join(trunk, BOB)
        content = dict(b.power_levels(trunk))
        content["users"] = {BOB: 100}
        assert b.build(trunk, "m.room.power_levels", b.creator, content, "")
        x, y = trunk.fork(), trunk.fork()
        y.ts = x.ts = x.ts + 5
        ban = b.build(x, "m.room.member", b.creator, {"membership": "ban"}, BOB)
        content2 = dict(content, users={BOB: 100, CHARLIE: 50})
        y.ts += 1
        pl_bob = b.build(y, "m.room.power_levels", BOB, content2, "")
        assert ban and pl_bob
        out = resolve("12", [x.state, y.state], b.events)
        self.assertEqual(out[("m.room.member", BOB)], ban)
        self.assertNotEqual(out[("m.room.power_levels", "")], pl_bob)


class V1Tests(unittest.TestCase):
    def test_missing_key_is_not_a_conflict(self) -> None:
        b = RoomBuilder("1", seed=0)
        trunk = b.create()
        x, y = trunk.fork(), trunk.fork()
        tx = b.build(x, "m.room.topic", b.creator, {"topic": "x"}, "")
        ny = b.build(y, "m.room.name", b.creator, {"name": "y"}, "")
        out = resolve("1", [x.state, y.state], b.events)
        self.assertEqual(out[("m.room.topic", "")], tx)
        self.assertEqual(out[("m.room.name", "")], ny)
        # v2 counts a key missing from one state as conflicted, but the one
        # event there is still applied.
        b2 = RoomBuilder("2", seed=0)
        t2 = b2.create()
        x2, y2 = t2.fork(), t2.fork()
        tx2 = b2.build(x2, "m.room.topic", b2.creator, {"topic": "x"}, "")
        self.assertEqual(resolve("2", [x2.state, y2.state], b2.events)[("m.room.topic", "")], tx2)

    def test_deeper_event_wins_normal_conflict(self) -> None:
        b = RoomBuilder("1", seed=0)
        trunk = b.create()
        x, y = trunk.fork(), trunk.fork()
        b.build(x, "m.room.topic", b.creator, {"topic": "x1"}, "")
        deeper = b.build(x, "m.room.topic", b.creator, {"topic": "x2"}, "")
        b.build(y, "m.room.topic", b.creator, {"topic": "y"}, "")
        out = resolve("1", [x.state, y.state], b.events)
        self.assertEqual(out[("m.room.topic", "")], deeper)

    def test_single_state_set_returned_as_is(self) -> None:
        b = RoomBuilder("1", seed=0)
        trunk = b.create()
        self.assertEqual(resolve("1", [trunk.state], {}), trunk.state)


class ApiTests(unittest.TestCase):
    def _room(self, version: str = "10") -> tuple[RoomBuilder, Branch, Branch]:
        b = RoomBuilder(version, seed=0)
        trunk = b.create()
        b.join(trunk, BOB)
        x, y = trunk.fork(), trunk.fork()
        b.build(x, "m.room.topic", BOB, {"topic": "x"}, "")
        b.build(y, "m.room.member", BOB, {"membership": "leave"}, BOB)
        return b, x, y

    def test_missing_events_are_reported(self) -> None:
        for version in ("1", "2", "10", "12"):
            b, x, y = self._room(version)
            leave = y.state[("m.room.member", BOB)]
            events = dict(b.events)
            del events[leave]
            with self.assertRaises(StateResolutionError) as cm:
                resolve(version, [x.state, y.state], events)
            self.assertEqual(cm.exception.missing_event_ids, frozenset({leave}), version)

    def test_missing_auth_event_is_reported(self) -> None:
        b, x, y = self._room("10")
        join_rules = x.state[("m.room.join_rules", "")]
        events = dict(b.events)
        del events[join_rules]
        with self.assertRaises(StateResolutionError) as cm:
            resolve("10", [x.state, y.state], events)
        self.assertIn(join_rules, cm.exception.missing_event_ids)

    def test_unknown_version_and_empty_input(self) -> None:
        with self.assertRaises(UnsupportedRoomVersionError):
            resolve("999", [{}], {})
        with self.assertRaises(StateResolutionError):
            resolve("10", [], {})

    def test_state_after(self) -> None:
        b, x, _ = self._room("10")
        topic = x.state[("m.room.topic", "")]
        before = dict(x.state)
        del before[("m.room.topic", "")]
        self.assertEqual(state_after("10", before, b.events[topic]), x.state)
        message = {"type": "m.room.message", "content": {}, "sender": BOB}
        self.assertEqual(state_after("10", before, message, event_id="$m"), before)

    def test_auth_events_from_state(self) -> None:
        b, x, _ = self._room("10")
        topic = b.events[x.state[("m.room.topic", "")]]
        picked = auth_events_from_state("10", x.state, topic)
        self.assertEqual(
            set(picked),
            {("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", BOB)},
        )

    def test_auth_chain(self) -> None:
        for version in ("2", "10", "12"):
            b, x, _ = self._room(version)
            topic = x.state[("m.room.topic", "")]
            chain = auth_chain([topic], b.events, version)
            self.assertNotIn(topic, chain)
            self.assertIn(x.state[("m.room.create", "")], chain)
            self.assertIn(x.state[("m.room.join_rules", "")], chain)  # via Bob's join
            self.assertIn(x.state[("m.room.member", BOB)], chain)

    def test_auth_chain_recognises_format_without_version(self) -> None:
        for version in ("2", "10"):
            b, x, _ = self._room(version)
            topic = x.state[("m.room.topic", "")]
            self.assertEqual(
                auth_chain([topic], b.events), auth_chain([topic], b.events, version), version
            )

    def test_read_only_mappings(self) -> None:
        from types import MappingProxyType

        for version in ("1", "10", "12"):
            b, x, y = self._room(version)
            expected = resolve(version, [x.state, y.state], b.events)
            got = resolve(
                version,
                [MappingProxyType(x.state), MappingProxyType(y.state)],
                MappingProxyType(b.events),
            )
            self.assertEqual(got, expected, version)


class ConflictedSubgraphDecides(unittest.TestCase):
    def test_subgraph_decides_topic(self) -> None:
        from tests.fixtures.stateres_rooms import subgraph_room

        for version in ("10", "11", "12"):
            events, sets, ids = subgraph_room(version)
            out = resolve(version, sets, events)
            self.assertEqual(out[("m.room.topic", "")], ids["TB"], version)
            self.assertEqual(out[("m.room.power_levels", "")], ids["P2"], version)
            self.assertEqual(out[("m.room.member", "@creator:a.example")], ids["J2"], version)


class ThreadSafetyTests(unittest.TestCase):
    def test_concurrent_resolutions_agree(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from tests.fixtures.stateres_rooms import forked_room

        rooms = [forked_room(v, 7, steps=10, nested=True) for v in ("1", "10", "12")]
        expected = [
            resolve(v, sets, ev) for v, (ev, sets) in zip(("1", "10", "12"), rooms, strict=True)
        ]
        jobs = [(i % 3, ("1", "10", "12")[i % 3]) for i in range(60)]
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(
                pool.map(lambda job: resolve(job[1], rooms[job[0]][1], rooms[job[0]][0]), jobs)
            )
        for (index, _), result in zip(jobs, results, strict=True):
            self.assertEqual(result, expected[index])


class MalformedAuthEventsTests(unittest.TestCase):
    def test_non_string_auth_event_ids_are_ignored(self) -> None:
        # An odd entry in auth_events makes the fast walk fall back to the
        # careful one; the odd entry must not leak into the conflicted set.
        for version in ("2", "10", "12"):
            b = RoomBuilder(version, seed=0)
            trunk = b.create()
            b.join(trunk, BOB)
            x, y = trunk.fork(), trunk.fork()
            topic = b.build(x, "m.room.topic", BOB, {"topic": "x"}, "")
            leave = b.build(y, "m.room.member", BOB, {"membership": "leave"}, BOB)
            assert topic and leave
            expected = resolve(version, [x.state, y.state], b.events)
            events = dict(b.events)
            for junk in (1, 1.5, None, True):
                events[topic] = dict(
                    events[topic], auth_events=[junk, *events[topic]["auth_events"]]
                )
                got = resolve(version, [x.state, y.state], events)
                self.assertEqual(got, expected, (version, junk))
