"""The storage test suite every IFederationStore implementation runs unchanged.

A backend's test case mixes :class:`StoreTestsMixin` into a trial ``TestCase`` and
implements ``make_store(clock)`` returning a Deferred of a fresh, empty store.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer
from zope.interface.verify import verifyObject

from fedlib.storage import (
    EventStatus,
    IFederationStore,
    OwnKey,
    PersistItem,
    ServerKey,
    StateRef,
    StrippedKind,
    StrippedRoom,
    TxnClaimStatus,
)

ROOM = "!room:a.example"
V = "10"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def ev(
    eid: str,
    prev: list[str],
    depth: int,
    *,
    typ: str = "m.room.message",
    state_key: str | None = None,
    auth: list[str] | None = None,
    ts: int | None = None,
    membership: str | None = None,
    room: str = ROOM,
) -> dict[str, Any]:
    """A synthetic PDU (no hashes or signatures: stores do not check them)."""
    e: dict[str, Any] = {
        "type": typ,
        "room_id": room,
        "sender": "@u:a.example",
        "prev_events": prev,
        "auth_events": auth or [],
        "depth": depth,
        "origin_server_ts": ts if ts is not None else 1000 + depth,
        "content": {"body": eid},
    }
    if state_key is not None:
        e["state_key"] = state_key
    if membership is not None:
        e["content"] = {"membership": membership}
    return e


def member(
    eid: str, user: str, prev: list[str], depth: int, membership: str = "join"
) -> dict[str, Any]:
    return ev(
        eid,
        prev,
        depth,
        typ="m.room.member",
        state_key=user,
        membership=membership,
        auth=["$create"],
    )


class StoreTestsMixin:
    """Behaviour every store must show. Needs ``make_store`` and trial assertions."""

    store: Any
    clock: FakeClock

    # Provided by trial's TestCase.
    assertEqual: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    assertIsNone: Callable[..., None]
    assertIn: Callable[..., None]
    assertNotIn: Callable[..., None]
    assertFailure: Callable[..., Any]
    addCleanup: Callable[..., None]

    def make_store(self, clock: FakeClock) -> defer.Deferred[Any]:
        raise NotImplementedError

    @defer.inlineCallbacks
    def setUp(self) -> Generator[Any, Any, None]:
        self.clock = FakeClock()
        self.store = yield self.make_store(self.clock)
        self.addCleanup(self.store.close)

    @defer.inlineCallbacks
    def _create_room(self) -> Generator[Any, Any, None]:
        """$create then $join (@u:a.example) then $pl."""
        yield self.store.store_room(ROOM, V)
        create = ev("$create", [], 1, typ="m.room.create", state_key="")
        join = member("$join", "@u:a.example", ["$create"], 2)
        pl = ev(
            "$pl", ["$join"], 3, typ="m.room.power_levels", state_key="", auth=["$create", "$join"]
        )
        yield self.store.persist_events(
            ROOM,
            [
                PersistItem(create, "$create", state_before={}),
                PersistItem(join, "$join", state_before=StateRef("$create")),
                PersistItem(pl, "$pl", state_before=StateRef("$join")),
            ],
        )

    # -- rooms -----------------------------------------------------------------

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IFederationStore, self.store))

    @defer.inlineCallbacks
    def test_rooms(self) -> Generator[Any, Any, None]:
        self.assertIsNone((yield self.store.get_room_version(ROOM)))
        yield self.store.store_room(ROOM, "10")
        yield self.store.store_room(ROOM, "9")  # the version never changes
        yield self.store.store_room("!other:b", "11", partial_state=True)
        self.assertEqual((yield self.store.get_room_version(ROOM)), "10")
        self.assertEqual(sorted((yield self.store.list_rooms())), ["!other:b", ROOM])
        self.assertFalse((yield self.store.is_partial_state(ROOM)))
        self.assertTrue((yield self.store.is_partial_state("!other:b")))
        yield self.store.set_partial_state("!other:b", False)
        self.assertFalse((yield self.store.is_partial_state("!other:b")))
        info = yield self.store.get_room(ROOM)
        self.assertEqual((info.room_id, info.room_version, info.partial_state), (ROOM, "10", False))

    @defer.inlineCallbacks
    def test_stripped_rooms(self) -> Generator[Any, Any, None]:
        item = StrippedRoom(
            StrippedKind.INVITE,
            ROOM,
            "@me:a",
            "10",
            {"type": "m.room.member", "state_key": "@me:a"},
            ({"type": "m.room.name", "content": {"name": "x"}},),
        )
        yield self.store.store_stripped_room(item)
        got = yield self.store.get_stripped_room(StrippedKind.INVITE, ROOM, "@me:a")
        self.assertEqual(got, item)
        self.assertIsNone((yield self.store.get_stripped_room(StrippedKind.KNOCK, ROOM, "@me:a")))
        yield self.store.delete_stripped_room(StrippedKind.INVITE, ROOM, "@me:a")
        self.assertIsNone((yield self.store.get_stripped_room(StrippedKind.INVITE, ROOM, "@me:a")))

    # -- events and state ------------------------------------------------------

    @defer.inlineCallbacks
    def test_persist_linear(self) -> Generator[Any, Any, None]:
        yield self._create_room()
        msg = ev("$m1", ["$pl"], 4)
        so = yield self.store.persist_events(
            ROOM, [PersistItem(msg, "$m1", state_before=StateRef("$pl"))]
        )
        evs = yield self.store.get_events(["$create", "$m1", "$nope"])
        self.assertEqual(set(evs), {"$create", "$m1"})
        self.assertTrue(evs["$m1"].stream_ordering > evs["$create"].stream_ordering)
        self.assertEqual(so["$m1"], evs["$m1"].stream_ordering)
        self.assertEqual(evs["$m1"].event, msg)
        self.assertEqual(evs["$m1"].room_version, V)
        self.assertEqual(evs["$m1"].depth, 4)
        self.assertEqual(evs["$m1"].status, EventStatus.ACCEPTED)
        self.assertEqual((yield self.store.have_seen(["$m1", "$x"])), {"$m1"})
        self.assertEqual((yield self.store.get_forward_extremities(ROOM)), {"$m1"})
        full = {
            ("m.room.create", ""): "$create",
            ("m.room.member", "@u:a.example"): "$join",
            ("m.room.power_levels", ""): "$pl",
        }
        self.assertEqual((yield self.store.get_current_state(ROOM)), full)
        self.assertEqual((yield self.store.get_state_before("$m1")), full)
        self.assertEqual((yield self.store.get_state_after("$m1")), full)
        before_pl = dict(full)
        del before_pl[("m.room.power_levels", "")]
        self.assertEqual((yield self.store.get_state_before("$pl")), before_pl)
        self.assertEqual((yield self.store.get_state_after("$pl")), full)
        self.assertEqual(
            (yield self.store.get_state_after_events(["$join", "$m1", "$unknown"]))["$join"],
            before_pl,
        )
        self.assertEqual((yield self.store.get_joined_members(ROOM)), {"@u:a.example"})
        self.assertEqual((yield self.store.get_joined_servers(ROOM)), {"a.example"})
        self.assertEqual((yield self.store.get_max_depth(ROOM)), 4)
        self.assertEqual((yield self.store.get_max_stream_ordering()), so["$m1"])
        cse = yield self.store.get_current_state_events(ROOM, types=["m.room.member"])
        self.assertEqual(list(cse), [("m.room.member", "@u:a.example")])
        self.assertEqual(cse[("m.room.member", "@u:a.example")].event_id, "$join")

    @defer.inlineCallbacks
    def test_duplicate_persist_is_skipped(self) -> Generator[Any, Any, None]:
        yield self._create_room()
        before = yield self.store.get_events(["$pl"])
        so = yield self.store.persist_events(
            ROOM, [PersistItem(ev("$pl", [], 99), "$pl", state_before={})]
        )
        self.assertEqual(so, {})
        after = yield self.store.get_events(["$pl"])
        self.assertEqual(after["$pl"], before["$pl"])

    @defer.inlineCallbacks
    def test_rejected_and_soft_failed(self) -> Generator[Any, Any, None]:
        yield self._create_room()
        bad = member("$bad", "@x:b.example", ["$pl"], 4)
        soft = member("$soft", "@y:c.example", ["$pl"], 4)
        yield self.store.persist_events(
            ROOM,
            [
                PersistItem(
                    bad,
                    "$bad",
                    EventStatus.REJECTED,
                    "not allowed",
                    state_before=StateRef("$pl"),
                ),
                PersistItem(soft, "$soft", EventStatus.SOFT_FAILED, state_before=StateRef("$pl")),
            ],
        )
        self.assertEqual(
            (yield self.store.get_rejected(["$bad", "$soft", "$pl"])), {"$bad": "not allowed"}
        )
        self.assertEqual((yield self.store.get_forward_extremities(ROOM)), {"$pl"})
        self.assertEqual((yield self.store.get_joined_members(ROOM)), {"@u:a.example"})
        after_bad = yield self.store.get_state_after("$bad")
        self.assertNotIn(("m.room.member", "@x:b.example"), after_bad)
        after_soft = yield self.store.get_state_after("$soft")
        self.assertEqual(after_soft[("m.room.member", "@y:c.example")], "$soft")
        evs = yield self.store.get_events(["$bad"])
        self.assertTrue(evs["$bad"].rejected)

    @defer.inlineCallbacks
    def test_outlier_then_deoutlier(self) -> Generator[Any, Any, None]:
        yield self._create_room()
        m = ev("$late", ["$pl"], 4)
        yield self.store.persist_events(ROOM, [PersistItem(m, "$late", EventStatus.OUTLIER)])
        evs = yield self.store.get_events(["$late"])
        self.assertTrue(evs["$late"].outlier)
        self.assertIsNone((yield self.store.get_state_before("$late")))
        self.assertEqual((yield self.store.get_max_depth(ROOM)), 3)  # outliers do not count
        self.assertEqual((yield self.store.get_forward_extremities(ROOM)), {"$pl"})
        so = yield self.store.persist_events(
            ROOM, [PersistItem(m, "$late", state_before=StateRef("$pl"))]
        )
        self.assertIn("$late", so)
        evs = yield self.store.get_events(["$late"])
        self.assertEqual(evs["$late"].status, EventStatus.ACCEPTED)
        self.assertEqual((yield self.store.get_forward_extremities(ROOM)), {"$late"})

    @defer.inlineCallbacks
    def test_fork_and_merge(self) -> Generator[Any, Any, None]:
        yield self._create_room()
        a = member("$a", "@a:b.example", ["$pl"], 4)
        b = member("$b", "@b:c.example", ["$pl"], 4)
        yield self.store.persist_events(ROOM, [PersistItem(a, "$a", state_before=StateRef("$pl"))])
        yield self.store.persist_events(ROOM, [PersistItem(b, "$b", state_before=StateRef("$pl"))])
        self.assertEqual((yield self.store.get_forward_extremities(ROOM)), {"$a", "$b"})
        sa = yield self.store.get_state_after("$a")
        sb = yield self.store.get_state_after("$b")
        merged = dict(sa)
        merged.update(sb)
        m = ev("$merge", ["$a", "$b"], 5)
        yield self.store.persist_events(ROOM, [PersistItem(m, "$merge", state_before=merged)])
        self.assertEqual((yield self.store.get_forward_extremities(ROOM)), {"$merge"})
        self.assertEqual((yield self.store.get_state_after("$merge")), merged)
        self.assertEqual((yield self.store.get_current_state(ROOM)), merged)
        self.assertEqual(
            (yield self.store.get_joined_members(ROOM)),
            {"@u:a.example", "@a:b.example", "@b:c.example"},
        )
        self.assertEqual(
            (yield self.store.get_joined_servers(ROOM)), {"a.example", "b.example", "c.example"}
        )

    @defer.inlineCallbacks
    def test_explicit_current_state_and_deletion(self) -> Generator[Any, Any, None]:
        yield self._create_room()
        state = yield self.store.get_state_after("$pl")
        smaller = {k: v for k, v in state.items() if k[0] != "m.room.power_levels"}
        m = ev("$m", ["$pl"], 4)
        yield self.store.persist_events(
            ROOM, [PersistItem(m, "$m", state_before=smaller)], current_state=smaller
        )
        self.assertEqual((yield self.store.get_current_state(ROOM)), smaller)
        self.assertEqual((yield self.store.get_state_before("$m")), smaller)
        cse = yield self.store.get_current_state_events(ROOM)
        self.assertEqual({k: v.event_id for k, v in cse.items()}, smaller)
        # Back to the state after $pl by reference, in a batch of its own.
        m2 = ev("$m2", ["$m"], 5)
        yield self.store.persist_events(
            ROOM, [PersistItem(m2, "$m2", state_before=smaller)], current_state=StateRef("$pl")
        )
        self.assertEqual((yield self.store.get_current_state(ROOM)), state)

    @defer.inlineCallbacks
    def test_batch_is_atomic(self) -> Generator[Any, Any, None]:
        yield self._create_room()
        good = ev("$good", ["$pl"], 4)
        bad = ev("$bad", ["$good"], 5)
        d = self.store.persist_events(
            ROOM,
            [
                PersistItem(good, "$good", state_before=StateRef("$pl")),
                PersistItem(bad, "$bad", state_before=StateRef("$never-stored")),
            ],
        )
        yield self.assertFailure(d, ValueError)
        self.assertEqual((yield self.store.have_seen(["$good", "$bad"])), set())
        self.assertEqual((yield self.store.get_forward_extremities(ROOM)), {"$pl"})
        d = self.store.persist_events("!unknown:x", [PersistItem(good, "$good")])
        yield self.assertFailure(d, ValueError)
        d = self.store.persist_events(ROOM, [PersistItem(good, "$good")])
        yield self.assertFailure(d, ValueError)  # no state_before for a non-outlier

    @defer.inlineCallbacks
    def test_many_state_changes_match_model(self) -> Generator[Any, Any, None]:
        """Hundreds of joins, leaves and renames, a few forks resolved by map: every
        state before/after must equal a plain-dict model (this drives the state-group
        delta chains through several snapshots on the database stores)."""
        yield self._create_room()
        rng = random.Random(4)
        model: dict[str, dict[tuple[str, str], str]] = {}
        model["$pl"] = yield self.store.get_state_after("$pl")
        prev = "$pl"
        depth = 3
        batch: list[PersistItem] = []
        expected_before: dict[str, dict[tuple[str, str], str]] = {}
        contents: dict[str, dict[str, Any]] = {"$join": {"membership": "join"}}
        for i in range(400):
            depth += 1
            eid = f"$e{i}"
            before = model[prev]
            r = rng.random()
            if r < 0.5:
                e = member(
                    eid,
                    f"@m{rng.randrange(150)}:s{rng.randrange(5)}.example",
                    [prev],
                    depth,
                    rng.choice(["join", "join", "leave"]),
                )
            elif r < 0.6:
                e = ev(eid, [prev], depth, typ="m.room.name", state_key="")
            else:
                e = ev(eid, [prev], depth)
            contents[eid] = e["content"]
            after = dict(before)
            if "state_key" in e:
                after[(e["type"], e["state_key"])] = eid
            if i % 97 == 50:
                # A state map from "state resolution": drop the name, add a fake key.
                given = {k: v for k, v in before.items() if k[0] != "m.room.name"}
                given[("m.custom", str(i))] = "$pl"
                batch.append(PersistItem(e, eid, state_before=given))
                before = given
                after = dict(given)
                if "state_key" in e:
                    after[(e["type"], e["state_key"])] = eid
            else:
                batch.append(PersistItem(e, eid, state_before=StateRef(prev)))
            expected_before[eid] = before
            model[eid] = after
            prev = eid
            if len(batch) == 37:
                yield self.store.persist_events(ROOM, batch)
                batch = []
        yield self.store.persist_events(ROOM, batch)
        for eid in list(expected_before)[::7] + [prev]:
            self.assertEqual((yield self.store.get_state_before(eid)), expected_before[eid], eid)
            self.assertEqual((yield self.store.get_state_after(eid)), model[eid], eid)
        self.assertEqual((yield self.store.get_current_state(ROOM)), model[prev])
        expect_joined = {
            sk
            for (t, sk), e in model[prev].items()
            if t == "m.room.member" and contents[e].get("membership") == "join"
        }
        self.assertEqual((yield self.store.get_joined_members(ROOM)), expect_joined)
        self.assertEqual((yield self.store.get_forward_extremities(ROOM)), {prev})

    # -- auth chains -----------------------------------------------------------

    @defer.inlineCallbacks
    def test_auth_chain(self) -> Generator[Any, Any, None]:
        yield self._create_room()
        # A deep chain of power-level changes, each authed by the previous one.
        items = []
        prev_pl = "$pl"
        prev = "$pl"
        for i in range(300):
            e = ev(
                f"$pl{i}",
                [prev],
                4 + i,
                typ="m.room.power_levels",
                state_key="",
                auth=["$create", "$join", prev_pl],
            )
            items.append(PersistItem(e, f"$pl{i}", state_before=StateRef(prev)))
            prev_pl = prev = f"$pl{i}"
        yield self.store.persist_events(ROOM, items)
        chain = yield self.store.get_auth_chain(["$pl299"])
        self.assertEqual(chain, {"$create", "$join", "$pl"} | {f"$pl{i}" for i in range(299)})
        self.assertEqual((yield self.store.get_auth_chain(["$join"])), {"$create"})
        self.assertEqual((yield self.store.get_auth_chain(["$create", "$nope"])), set())
        self.assertEqual(
            (yield self.store.get_auth_chain(["$join", "$pl1"])),
            {"$create", "$join", "$pl", "$pl0"},
        )
        diff = yield self.store.get_auth_chain_difference([{"$pl1"}, {"$pl3"}])
        self.assertEqual(diff, {"$pl2", "$pl3"})
        self.assertEqual((yield self.store.get_auth_chain_difference([])), set())

    @defer.inlineCallbacks
    def test_auth_chain_grows_when_missing_events_arrive(self) -> Generator[Any, Any, None]:
        yield self._create_room()
        x = ev("$x", [], 9, auth=["$create", "$later"])
        yield self.store.persist_events(ROOM, [PersistItem(x, "$x", EventStatus.OUTLIER)])
        self.assertEqual((yield self.store.get_auth_chain(["$x"])), {"$create"})
        later = ev("$later", [], 8, auth=["$pl"])
        yield self.store.persist_events(ROOM, [PersistItem(later, "$later", EventStatus.OUTLIER)])
        self.assertEqual(
            (yield self.store.get_auth_chain(["$x"])), {"$create", "$later", "$pl", "$join"}
        )
        self.assertEqual(
            (yield self.store.get_auth_chain_difference([{"$x"}, {"$join"}])),
            {"$x", "$later", "$pl"},
        )

    # -- history ---------------------------------------------------------------

    @defer.inlineCallbacks
    def _diamond(self) -> Generator[Any, Any, None]:
        """$pl(3) <- $x1(4) <- {$a(5), $b(5)} <- $y(6) <- $z(7)"""
        yield self._create_room()
        yield self.store.persist_events(
            ROOM,
            [
                PersistItem(ev("$x1", ["$pl"], 4, ts=5000), "$x1", state_before=StateRef("$pl")),
                PersistItem(ev("$a", ["$x1"], 5, ts=6000), "$a", state_before=StateRef("$x1")),
                PersistItem(ev("$b", ["$x1"], 5, ts=6000), "$b", state_before=StateRef("$x1")),
                PersistItem(ev("$y", ["$a", "$b"], 6, ts=7000), "$y", state_before=StateRef("$a")),
                PersistItem(ev("$z", ["$y"], 7, ts=9000), "$z", state_before=StateRef("$y")),
            ],
        )

    @defer.inlineCallbacks
    def test_backfill(self) -> Generator[Any, Any, None]:
        yield self._diamond()
        got = yield self.store.backfill(ROOM, ["$z"], 4)
        self.assertEqual([e.event_id for e in got], ["$z", "$y", "$b", "$a"])
        got = yield self.store.backfill(ROOM, ["$y"], 100)
        self.assertEqual(
            [e.event_id for e in got], ["$y", "$b", "$a", "$x1", "$pl", "$join", "$create"]
        )
        self.assertEqual((yield self.store.backfill("!other:x", ["$y"], 10)), [])

    @defer.inlineCallbacks
    def test_get_missing_events(self) -> Generator[Any, Any, None]:
        yield self._diamond()
        got = yield self.store.get_missing_events(ROOM, ["$x1"], ["$z"], 10)
        self.assertEqual([e.event_id for e in got], ["$a", "$b", "$y"])
        got = yield self.store.get_missing_events(ROOM, ["$x1"], ["$z"], 2)
        self.assertEqual([e.event_id for e in got], ["$b", "$y"])
        got = yield self.store.get_missing_events(ROOM, [], ["$z"], 10, min_depth=5)
        self.assertEqual([e.event_id for e in got], ["$a", "$b", "$y"])

    @defer.inlineCallbacks
    def test_event_at_timestamp(self) -> Generator[Any, Any, None]:
        yield self._diamond()
        self.assertEqual((yield self.store.get_event_at_timestamp(ROOM, 6500, "f")), ("$y", 7000))
        self.assertEqual((yield self.store.get_event_at_timestamp(ROOM, 6500, "b")), ("$b", 6000))
        self.assertEqual((yield self.store.get_event_at_timestamp(ROOM, 6000, "f")), ("$a", 6000))
        self.assertEqual((yield self.store.get_event_at_timestamp(ROOM, 9000, "b")), ("$z", 9000))
        self.assertIsNone((yield self.store.get_event_at_timestamp(ROOM, 9001, "f")))
        self.assertIsNone((yield self.store.get_event_at_timestamp(ROOM, 1, "b")))

    # -- received transactions -------------------------------------------------

    @defer.inlineCallbacks
    def test_received_transactions(self) -> Generator[Any, Any, None]:
        s = self.store
        self.assertIsNone((yield s.get_received_transaction("o", "t1")))
        c1 = yield s.claim_received_transaction("o", "t1", "w1", lease_ms=1000)
        self.assertEqual(c1.status, TxnClaimStatus.CLAIMED)
        c2 = yield s.claim_received_transaction("o", "t1", "w2", lease_ms=1000)
        self.assertEqual(c2.status, TxnClaimStatus.IN_PROGRESS)
        self.clock.now += 2000  # w1's claim lapses
        c3 = yield s.claim_received_transaction("o", "t1", "w2", lease_ms=1000)
        self.assertEqual(c3.status, TxnClaimStatus.CLAIMED)
        again = yield s.claim_received_transaction("o", "t1", "w2", lease_ms=1000)
        self.assertEqual(again.status, TxnClaimStatus.CLAIMED)  # a retry by the owner
        self.assertIsNone((yield s.get_received_transaction("o", "t1")))
        yield s.store_received_transaction("o", "t1", {"pdus": {"$e": {}}})
        c4 = yield s.claim_received_transaction("o", "t1", "w1")
        self.assertEqual((c4.status, c4.response), (TxnClaimStatus.DONE, {"pdus": {"$e": {}}}))
        self.assertEqual((yield s.get_received_transaction("o", "t1")), {"pdus": {"$e": {}}})
        self.assertIsNone((yield s.get_received_transaction("other", "t1")))
        # Releasing lets another worker claim at once.
        yield s.claim_received_transaction("o", "t2", "w1")
        yield s.release_received_transaction("o", "t2", "w1")
        c5 = yield s.claim_received_transaction("o", "t2", "w2")
        self.assertEqual(c5.status, TxnClaimStatus.CLAIMED)

    # -- outbound queues -------------------------------------------------------

    @defer.inlineCallbacks
    def test_outbound_queue(self) -> Generator[Any, Any, None]:
        yield self._diamond()
        s = self.store
        yield s.enqueue_pdus(["d1", "d2"], ["$x1", "$a", "$b"])
        yield s.enqueue_pdus(["d1"], ["$x1"])  # queued once only
        yield s.enqueue_edu("d1", {"edu_type": "m.typing", "content": {}})
        yield self.assertFailure(s.enqueue_pdus(["d1"], ["$unknown"]), ValueError)
        self.assertEqual((yield s.get_destinations_with_pending()), {"d1", "d2"})
        b1 = yield s.claim_next_batch("d1", "p1", max_pdus=2)
        self.assertEqual(b1.event_ids, ["$x1", "$a"])
        self.assertEqual(len(b1.edus), 1)
        self.assertEqual(b1.edus[0].edu["edu_type"], "m.typing")
        self.assertIsNone((yield s.claim_next_batch("d1", "p2")))  # p1 holds the lease
        again = yield s.claim_next_batch("d1", "p1", max_pdus=2)
        self.assertEqual(again.event_ids, ["$x1", "$a"])
        yield s.ack_batch("d1", b1)
        evs = yield s.get_events(["$a"])
        self.assertEqual(
            (yield s.get_last_successful_stream_ordering("d1")), evs["$a"].stream_ordering
        )
        b2 = yield s.claim_next_batch("d1", "p2")
        self.assertEqual((b2.event_ids, b2.edus), (["$b"], ()))
        yield s.release_batch("d1", b2)
        b3 = yield s.claim_next_batch("d1", "p3")
        self.assertEqual(b3.event_ids, ["$b"])
        # An expired lease is taken over.
        self.clock.now += 10**9
        b4 = yield s.claim_next_batch("d1", "p4")
        self.assertEqual(b4.event_ids, ["$b"])
        yield s.ack_batch("d1", b4)
        self.assertIsNone((yield s.claim_next_batch("d1", "p4")))
        self.assertEqual((yield s.get_destinations_with_pending()), {"d2"})
        self.assertIsNone((yield s.get_last_successful_stream_ordering("d2")))

    @defer.inlineCallbacks
    def test_collapse_queue_and_retry(self) -> Generator[Any, Any, None]:
        yield self._diamond()
        s = self.store
        yield s.enqueue_pdus(["d"], ["$x1", "$a", "$b", "$y", "$z"])
        self.assertEqual((yield s.collapse_pdu_queue("d")), 4)
        b = yield s.claim_next_batch("d", "p")
        self.assertEqual(b.event_ids, ["$z"])
        self.assertIsNone((yield s.get_destination_retry("d")))
        yield s.set_destination_retry("d", 123, 5000)
        r = yield s.get_destination_retry("d")
        self.assertEqual((r.failure_ts, r.retry_interval_ms), (123, 5000))
        yield s.reset_destination_retry("d")
        self.assertIsNone((yield s.get_destination_retry("d")))

    # -- keys ------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_keys(self) -> Generator[Any, Any, None]:
        s = self.store
        yield s.store_own_key(OwnKey("ed25519:old", "OLD", None, expired_ts=50))
        yield s.store_own_key(OwnKey("ed25519:new", "NEW", "SEED"))
        keys = yield s.get_own_keys()
        self.assertEqual([k.key_id for k in keys], ["ed25519:new", "ed25519:old"])
        self.assertEqual(keys[0].secret_seed_b64, "SEED")
        raw1 = {"server_name": "r", "valid_until_ts": 100}
        raw2 = {"server_name": "r", "valid_until_ts": 200}
        yield s.store_server_keys("r", [ServerKey("r", "ed25519:a", "A", 100)], raw1)
        yield s.store_server_keys(
            "r",
            [ServerKey("r", "ed25519:a", "A", 200), ServerKey("r", "ed25519:b", "B", 200)],
            raw2,
        )
        # An older answer must not replace a newer one.
        yield s.store_server_keys("r", [ServerKey("r", "ed25519:a", "A", 150)], raw1)
        got = yield s.get_server_keys("r", ["ed25519:a", "ed25519:zz"])
        self.assertEqual(list(got), ["ed25519:a"])
        self.assertEqual(got["ed25519:a"].valid_until_ts, 200)
        self.assertEqual(set((yield s.get_server_keys("r"))), {"ed25519:a", "ed25519:b"})
        self.assertEqual((yield s.get_server_keys("nobody")), {})
        self.assertEqual((yield s.get_server_keys_json("r")), [raw2])
        yield s.store_server_keys("r", [ServerKey("r", "ed25519:a", "A", 200, expired_ts=180)])
        got = yield s.get_server_keys("r", ["ed25519:a"])
        self.assertEqual(got["ed25519:a"].expired_ts, 180)
        self.assertEqual((yield s.get_server_keys_json("r", ["ed25519:a"])), [raw2])
