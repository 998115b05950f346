"""The inbound pipeline filling gaps from a real peer: two fedlib servers on loopback.

Server a hosts a room server b has joined. a's sender is stopped while a's users
send events, then only the newest is pushed to b: b must fetch the ones between
with /get_missing_events (served by a's Resource tree) and accept them all.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from fedlib.rooms.builder import Preset
from fedlib.storage.interface import EventStatus
from fedlib.testing import quiet_dns, start_loopback


class GapFillingTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        quiet_dns(self)
        self.a = yield start_loopback(directory=self.mktemp())
        self.addCleanup(self.a.stop)
        self.b = yield start_loopback(directory=self.mktemp())
        self.addCleanup(self.b.stop)
        self.alice = self.a.user("alice")
        self.bob = self.b.user("bob")

    @defer.inlineCallbacks
    def test_missing_prev_events_fetched_from_origin(self) -> Any:
        svc_a = self.a.service
        room_id = yield svc_a.create_room(self.alice, "10", preset=Preset.PUBLIC_CHAT)
        yield self.b.service.handshakes.join_room(room_id, self.bob, [self.a.server_name])
        svc_a.sender.stop()
        ids = []
        for i in range(4):
            eid = yield svc_a.send_event(room_id, self.alice, "m.room.message", {"body": str(i)})
            ids.append(eid)
        latest = (yield svc_a.store.get_events([ids[-1]]))[ids[-1]].event
        results = yield svc_a.client.send_transaction(self.b.server_name, "gap-1", [latest])
        self.assertEqual(results, {ids[-1]: {}})
        stored = yield self.b.service.store.get_events(ids)
        self.assertEqual(
            {e: s.status for e, s in stored.items()}, {e: EventStatus.ACCEPTED for e in ids}
        )
        self.assertEqual((yield self.b.service.store.get_forward_extremities(room_id)), {ids[-1]})

    @defer.inlineCallbacks
    def test_gap_beyond_get_missing_events_uses_state_ids(self) -> Any:
        svc_a = self.a.service
        room_id = yield svc_a.create_room(self.alice, "10", preset=Preset.PUBLIC_CHAT)
        yield self.b.service.handshakes.join_room(room_id, self.bob, [self.a.server_name])
        svc_a.sender.stop()
        ids = []
        for i in range(15):
            eid = yield svc_a.send_event(room_id, self.alice, "m.room.message", {"body": str(i)})
            ids.append(eid)
        yield svc_a.send_event(room_id, self.alice, "m.room.topic", {"topic": "t"}, "")
        last = yield svc_a.send_event(room_id, self.alice, "m.room.message", {"body": "end"})
        latest = (yield svc_a.store.get_events([last]))[last].event
        gaps_b = self.b.service.gaps
        calls: list[str] = []
        real_state_at = gaps_b.fetch_state_at

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args[2])
            return real_state_at(*args, **kwargs)

        self.patch(gaps_b, "fetch_state_at", counting)
        results = yield svc_a.client.send_transaction(self.b.server_name, "gap-2", [latest])
        self.assertEqual(len(calls), 1)
        self.assertEqual(results, {last: {}})
        store_b = self.b.service.store
        stored = yield store_b.get_events([last])
        self.assertIs(stored[last].status, EventStatus.ACCEPTED)
        state_a = yield svc_a.store.get_current_state(room_id)
        state_b = yield store_b.get_current_state(room_id)
        self.assertEqual(state_b, state_a)

    @defer.inlineCallbacks
    def test_pdu_accepted_after_partial_state_join(self) -> Any:
        svc_a = self.a.service
        room_id = yield svc_a.create_room(self.alice, "12", preset=Preset.PUBLIC_CHAT)
        # More members than the heroes a partial-state answer keeps, so the
        # sender's membership is one b does not have.
        for name in ("m1", "m2", "m3", "m4", "m5", "m6"):
            yield svc_a.join_room(room_id, self.a.user(name))
        dave = self.a.user("zed")
        yield svc_a.join_room(room_id, dave)
        hb = self.b.service.handshakes
        result = yield hb.join_room(room_id, self.bob, [self.a.server_name], omit_members=True)
        self.assertTrue(result.partial_state)
        svc_a.sender.stop()
        eid = yield svc_a.send_event(room_id, dave, "m.room.message", {"body": "hi"})
        latest = (yield svc_a.store.get_events([eid]))[eid].event
        results = yield svc_a.client.send_transaction(self.b.server_name, "partial-1", [latest])
        self.assertEqual(results, {eid: {}})
