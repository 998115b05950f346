"""fedlib.rooms.pipeline: state before an event over forks, per-room serialisation,
threaded resolution, outcomes."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from fedlib.rooms.pipeline import IncomingPduPipeline
from fedlib.storage.interface import EventStatus
from tests.server_helpers import OUR_NAME, Harness, Remote, RoomBuilder

ALICE = "@alice:us.test"
BOB = "@bob:remote.test"
MISSING = "$" + "B" * 43


class HangingGaps:
    def __init__(self) -> None:
        self.pending: list[defer.Deferred[Any]] = []

    def fetch_missing_prev_events(self, *a: Any, **kw: Any) -> Any:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d

    def fetch_state_at(self, *a: Any, **kw: Any) -> Any:
        return self.fetch_missing_prev_events()


class PipelineBase(unittest.TestCase):
    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.h = Harness(self.remote)
        self.notified: list[tuple[str, Any]] = []
        self.rb = self.room()

    def room(self, version: str = "10") -> RoomBuilder:
        rb = RoomBuilder(version, {OUR_NAME: self.h.us, "remote.test": self.remote})
        rb.create_room(ALICE, extra_members=[BOB])
        self.successResultOf(rb.persist_all(self.h.store))
        return rb

    def pipeline(self, gaps: Any = None, **kw: Any) -> IncomingPduPipeline:
        async def notify(name: str, *args: Any) -> None:
            self.notified.append((name, args))

        return IncomingPduPipeline(self.h.store, self.h.clock, notify, gaps, **kw)

    def run_pdus(
        self, p: IncomingPduPipeline, rb: RoomBuilder, *pdus: tuple[str, dict[str, Any]]
    ) -> Any:
        return defer.ensureDeferred(p.process("remote.test", rb.room_id, rb.version, list(pdus)))


class PipelineTests(PipelineBase):
    def test_fork_resolves_state(self) -> None:
        head, depth = list(self.rb.head), self.rb.depth
        topic = self.rb.make("m.room.topic", ALICE, {"topic": "t"}, "")
        self.rb.accept(*topic)
        self.rb.head, self.rb.depth = head, depth
        msg = self.rb.make("m.room.message", BOB, {"body": "x"})
        self.rb.accept(*msg)
        merge = self.rb.make("m.room.message", BOB, {"body": "y"}, prev=[topic[0], msg[0]])
        p = self.pipeline()
        out = self.successResultOf(self.run_pdus(p, self.rb, topic, msg, merge))
        self.assertTrue(all(o.status is EventStatus.ACCEPTED for o in out.values()), out)
        before = self.successResultOf(self.h.store.get_state_before(merge[0]))
        self.assertEqual(before[("m.room.topic", "")], topic[0])
        extremities = self.successResultOf(self.h.store.get_forward_extremities(self.rb.room_id))
        self.assertEqual(extremities, {merge[0]})

    def test_fork_resolved_in_a_thread(self) -> Any:
        return self._threaded(self.pipeline(thread_threshold=0))

    def _threaded(self, p: IncomingPduPipeline) -> Any:
        rb = self.room()
        head, depth = list(rb.head), rb.depth
        topic = rb.make("m.room.topic", ALICE, {"topic": "t"}, "")
        rb.accept(*topic)
        rb.head, rb.depth = head, depth
        name = rb.make("m.room.name", ALICE, {"name": "n"}, "")
        rb.accept(*name)
        merge = rb.make("m.room.message", BOB, {"body": "y"}, prev=[topic[0], name[0]])
        d = self.run_pdus(p, rb, topic, name, merge)

        def check(out: Any) -> None:
            self.assertIs(out[merge[0]].status, EventStatus.ACCEPTED)
            before = self.successResultOf(self.h.store.get_state_before(merge[0]))
            self.assertEqual(before[("m.room.topic", "")], topic[0])
            self.assertEqual(before[("m.room.name", "")], name[0])

        return d.addCallback(check)

    def test_same_room_serialised_other_rooms_parallel(self) -> None:
        gaps = HangingGaps()
        p = self.pipeline(gaps, pdu_timeout=30)
        stuck = self.rb.make("m.room.message", BOB, {"body": "x"}, prev=[MISSING])
        d1 = self.run_pdus(p, self.rb, stuck)
        queued = self.rb.make("m.room.message", BOB, {"body": "z"})
        d2 = self.run_pdus(p, self.rb, queued)
        other = self.room()
        d3 = self.run_pdus(p, other, other.make("m.room.message", BOB, {"body": "o"}))
        self.assertNoResult(d1)
        self.assertNoResult(d2)  # waits for the room's lock
        self.assertTrue(self.successResultOf(d3))
        self.h.clock.advance(31)
        out1 = self.successResultOf(d1)
        self.assertIsNone(out1[stuck[0]].status)
        out2 = self.successResultOf(d2)
        self.assertIs(out2[queued[0]].status, EventStatus.ACCEPTED)
        self.assertEqual(p._locks, {})

    def test_resubmitted_event_reports_stored_status(self) -> None:
        p = self.pipeline()
        msg = self.rb.make("m.room.message", BOB, {"body": "x"})
        self.successResultOf(self.run_pdus(p, self.rb, msg))
        self.notified.clear()
        out = self.successResultOf(self.run_pdus(p, self.rb, msg))
        self.assertIs(out[msg[0]].status, EventStatus.ACCEPTED)
        self.assertEqual(self.notified, [])

    def test_rejected_auth_event_rejects_dependant(self) -> None:
        p = self.pipeline()
        # Bob has no power to change the power levels: rejected.
        bad = self.rb.make("m.room.power_levels", BOB, {"users": {BOB: 100}}, "")
        out = self.successResultOf(self.run_pdus(p, self.rb, bad))
        self.assertIs(out[bad[0]].status, EventStatus.REJECTED)
        self.assertEqual(self.notified[-1][0], "on_rejected")
        auth = [self.rb.state[("m.room.create", "")], bad[0], self.rb.state[("m.room.member", BOB)]]
        dep = self.rb.make("m.room.message", BOB, {"body": "x"}, auth=auth)
        out = self.successResultOf(self.run_pdus(p, self.rb, dep))
        self.assertIs(out[dep[0]].status, EventStatus.REJECTED)


class BatchTests(PipelineBase):
    def test_linear_run_is_one_write_and_one_notification(self) -> None:
        p = self.pipeline()
        writes: list[int] = []
        real = self.h.store.persist_events

        def counting(room_id: str, items: Any) -> Any:
            items = list(items)
            writes.append(len(items))
            return real(room_id, items)

        self.h.store.persist_events = counting  # type: ignore[method-assign]
        pdus = []
        for i in range(5):
            eid, ev = self.rb.make("m.room.message", BOB, {"body": str(i)})
            self.rb.accept(eid, ev)
            pdus.append((eid, ev))
        # A rejected event in the middle ends the run; what follows starts another.
        bad = self.rb.make("m.room.power_levels", BOB, {"users": {BOB: 100}}, "")
        good_state = dict(self.rb.state)
        self.rb.accept(*bad)
        self.rb.state = good_state
        after = self.rb.make("m.room.message", BOB, {"body": "after"})
        out = self.successResultOf(self.run_pdus(p, self.rb, *pdus, bad, after))
        self.assertIs(out[bad[0]].status, EventStatus.REJECTED)
        self.assertIs(out[after[0]].status, EventStatus.ACCEPTED)
        self.assertEqual(writes, [6, 1])
        new = [args for name, args in self.notified if name == "on_new_pdus"]
        self.assertEqual([len(args[1]) for args in new], [5, 1])
        before = self.successResultOf(self.h.store.get_state_before(after[0]))
        self.assertNotEqual(before[("m.room.power_levels", "")], bad[0])
        extremities = self.successResultOf(self.h.store.get_forward_extremities(self.rb.room_id))
        # The rejected event is no extremity, so the run's last event stays one.
        self.assertEqual(extremities, {after[0], pdus[-1][0]})


class PartialStateTests(PipelineBase):
    def _room_without_bobs_membership_in_state(self) -> tuple[RoomBuilder, Any]:
        from fedlib.storage.interface import PersistItem

        rb = RoomBuilder("10", {OUR_NAME: self.h.us, "remote.test": self.remote})
        rb.create_room(ALICE, extra_members=[BOB])
        bob_join = rb.state[("m.room.member", BOB)]
        # Our own later event, the kind whose stored state stays partial.
        rb.add("m.room.topic", ALICE, {"topic": "after bob"}, "")
        self.successResultOf(self.h.store.store_room(rb.room_id, "10", True))
        # As after a partial-state join: Bob's membership is known (an outlier)
        # but missing from the state we hold.
        items, state = [], {}
        for eid, ev in rb.events.items():
            if eid == bob_join:
                items.append(PersistItem(event=ev, event_id=eid, status=EventStatus.OUTLIER))
                continue
            items.append(PersistItem(event=ev, event_id=eid, state_before=dict(state)))
            state[(ev["type"], ev["state_key"])] = eid
        self.successResultOf(self.h.store.persist_events(rb.room_id, items))
        head = [e for e in rb.events if e != bob_join][-1]
        msg = rb.make("m.room.message", BOB, {"body": "x"}, prev=[head])
        return rb, msg

    def test_partial_state_checks_fall_back_to_auth_events(self) -> None:
        rb, msg = self._room_without_bobs_membership_in_state()
        out = self.successResultOf(self.run_pdus(self.pipeline(), rb, msg))
        self.assertIs(out[msg[0]].status, EventStatus.ACCEPTED, out)

    def test_full_state_rejects_the_same_event(self) -> None:
        rb, msg = self._room_without_bobs_membership_in_state()
        self.successResultOf(self.h.store.set_partial_state(rb.room_id, False))
        out = self.successResultOf(self.run_pdus(self.pipeline(), rb, msg))
        self.assertIs(out[msg[0]].status, EventStatus.REJECTED)

    def test_state_left_partial_after_resync(self) -> None:
        """The resync replaced the current state but not the state stored for older
        events: the sender's membership is taken from its auth events."""
        rb, msg = self._room_without_bobs_membership_in_state()
        current = self.successResultOf(self.h.store.get_current_state(rb.room_id))
        full = {**current, ("m.room.member", BOB): rb.state[("m.room.member", BOB)]}
        self.successResultOf(self.h.store.persist_events(rb.room_id, [], current_state=full))
        self.successResultOf(self.h.store.set_partial_state(rb.room_id, False))
        out = self.successResultOf(self.run_pdus(self.pipeline(), rb, msg))
        self.assertIs(out[msg[0]].status, EventStatus.ACCEPTED, out)
        # The state stored for the new event is the full one, so the current
        # state does not regress to the partial one.
        before = self.successResultOf(self.h.store.get_state_before(msg[0]))
        self.assertEqual(before, full)
        self.assertEqual(self.successResultOf(self.h.store.get_current_state(rb.room_id)), full)

    def test_event_placed_before_its_senders_join_still_rejected(self) -> None:
        rb = RoomBuilder("10", {OUR_NAME: self.h.us, "remote.test": self.remote})
        rb.create_room(ALICE)
        early = list(rb.head)
        early_state = dict(rb.state)
        rb.add("m.room.member", BOB, {"membership": "join"}, BOB)
        self.successResultOf(rb.persist_all(self.h.store))
        auth = [early_state[("m.room.power_levels", "")], rb.state[("m.room.member", BOB)]]
        if ("m.room.create", "") in early_state:
            auth.append(early_state[("m.room.create", "")])
        msg = rb.make("m.room.message", BOB, {"body": "back-dated"}, prev=early, auth=auth)
        out = self.successResultOf(self.run_pdus(self.pipeline(), rb, msg))
        self.assertIs(out[msg[0]].status, EventStatus.REJECTED)
