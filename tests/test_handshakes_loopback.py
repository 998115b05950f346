"""Handshakes and gap filling between two real fedlib servers on loopback (TLS)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from fedlib.client.handshakes import HandshakeError, JoinResult
from fedlib.storage.interface import StrippedKind
from fedlib.testing import quiet_dns, start_loopback


class TwoServersTests(unittest.TestCase):
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
        self.hb = self.b.service.handshakes

    @defer.inlineCallbacks
    def wait(self, predicate: Any) -> Any:
        from twisted.internet import reactor, task

        # Generous: the machine running the tests may be busy.
        for _ in range(1200):
            if (yield predicate()):
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.fail("condition not reached")

    @defer.inlineCallbacks
    def test_join_leave_and_backfill(self) -> Any:
        svc_a = self.a.service
        room_id = yield svc_a.create_room(self.alice, "10", name="r", preset=_public())
        for i in range(5):
            yield svc_a.send_event(room_id, self.alice, "m.room.message", {"body": str(i)})
        result = yield self.hb.join_room(room_id, self.bob, [self.a.server_name])
        self.assertIsInstance(result, JoinResult)
        store_b = self.b.service.store
        self.assertEqual((yield store_b.get_joined_members(room_id)), {self.alice, self.bob})
        # The resident stored and accepted our join.
        self.assertIn(self.bob, (yield svc_a.store.get_joined_members(room_id)))

        # Backfill history through the gap filler of server b.
        extremities = list((yield svc_a.store.get_forward_extremities(room_id)))
        got = yield self.b.service.gaps.backfill(self.a.server_name, room_id, [result.event_id], 20)
        bodies = sorted(
            r.event["content"]["body"] for r in got if r.event["type"] == "m.room.message"
        )
        self.assertEqual(bodies, ["0", "1", "2", "3", "4"])
        self.assertTrue(extremities)

        # New events from a reach b through a's transaction sender.
        eid = yield svc_a.send_event(room_id, self.alice, "m.room.message", {"body": "live"})

        @defer.inlineCallbacks
        def arrived() -> Any:
            return eid in (yield store_b.have_seen([eid]))

        yield self.wait(arrived)

        # b leaves with a local event (it is in the room), a sees it.
        yield self.b.service.leave(room_id, self.bob)

        @defer.inlineCallbacks
        def left() -> Any:
            return self.bob not in (yield svc_a.store.get_joined_members(room_id))

        yield self.wait(left)

    @defer.inlineCallbacks
    def test_partial_join(self) -> Any:
        svc_a = self.a.service
        room_id = yield svc_a.create_room(self.alice, "10", preset=_public())
        carol = self.a.user("carol")
        yield svc_a.join_room(room_id, carol)
        result = yield self.hb.join_room(room_id, self.bob, [self.a.server_name], omit_members=True)
        self.assertTrue(result.partial_state)
        store_b = self.b.service.store
        yield self.hb.wait_for_full_state(room_id)
        self.assertFalse((yield store_b.is_partial_state(room_id)))
        members = yield store_b.get_joined_members(room_id)
        self.assertEqual(members, {self.alice, carol, self.bob})
        self.assertIsInstance(result, JoinResult)

    @defer.inlineCallbacks
    def test_invite_and_reject(self) -> Any:
        svc_a = self.a.service
        room_id = yield svc_a.create_room(self.alice, "10")
        yield svc_a.invite(room_id, self.alice, self.bob)
        store_b = self.b.service.store
        invite = yield store_b.get_stripped_room(StrippedKind.INVITE, room_id, self.bob)
        self.assertIsNotNone(invite)
        yield self.hb.reject_invite(room_id, self.bob)
        self.assertIsNone((yield store_b.get_stripped_room(StrippedKind.INVITE, room_id, self.bob)))

        @defer.inlineCallbacks
        def rejected() -> Any:
            state = yield svc_a.store.get_current_state_events(room_id, ["m.room.member"])
            ev = state.get(("m.room.member", self.bob))
            return ev is not None and ev.event["content"]["membership"] == "leave"

        yield self.wait(rejected)

    @defer.inlineCallbacks
    def test_join_refused_without_invite(self) -> Any:
        room_id = yield self.a.service.create_room(self.alice, "10")  # private: invite only
        with self.assertRaises(HandshakeError) as ctx:
            yield self.hb.join_room(room_id, self.bob, [self.a.server_name])
        self.assertEqual(ctx.exception.errcode, "M_FORBIDDEN")
        self.assertIsNone((yield self.b.service.store.get_room(room_id)))

    @defer.inlineCallbacks
    def test_knock(self) -> Any:
        from fedlib.rooms.builder import StateTemplate

        room_id = yield self.a.service.create_room(
            self.alice,
            "10",
            initial_state=[StateTemplate("m.room.join_rules", "", {"join_rule": "knock"})],
        )
        result = yield self.hb.knock_room(room_id, self.bob, [self.a.server_name], reason="pls")
        self.assertEqual(result.event["content"]["membership"], "knock")
        stored = yield self.b.service.store.get_stripped_room(StrippedKind.KNOCK, room_id, self.bob)
        self.assertIsNotNone(stored)
        state = yield self.a.service.store.get_current_state_events(room_id, ["m.room.member"])
        self.assertEqual(state[("m.room.member", self.bob)].event["content"]["membership"], "knock")


def _public() -> Any:
    from fedlib.rooms.builder import Preset

    return Preset.PUBLIC_CHAT
