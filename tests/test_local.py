"""fedlib.rooms.local: local room creation, events and memberships on a MemoryStore."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from fedlib.auth.rules import check_auth, check_auth_events_list
from fedlib.crypto.keys import generate_signing_key
from fedlib.crypto.signing import sign_event
from fedlib.errors import AuthError, MatrixError, NotFoundError
from fedlib.events.event import Event
from fedlib.hooks import NewPdu, NullHooks
from fedlib.rooms.local import LocalRooms
from fedlib.storage.memory import MemoryStore

SERVER = "fed.test"
ALICE = "@alice:fed.test"
CAROL = "@carol:fed.test"
BOB = "@bob:remote.test"
KEY = generate_signing_key("l1")
REMOTE_KEY = generate_signing_key("r1")


class RecordingSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str]]] = []

    def send_pdu(self, event_id: str, destinations: Sequence[str]) -> Any:
        self.sent.append((event_id, list(destinations)))
        return defer.succeed(None)


class RecordingHooks(NullHooks):
    def __init__(self) -> None:
        self.batches: list[list[NewPdu]] = []

    def on_new_pdus(self, room_id: str, pdus: Sequence[NewPdu]) -> Any:
        self.batches.append(list(pdus))


class LocalRoomsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = MemoryStore()
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.sender = RecordingSender()
        self.hooks = RecordingHooks()
        self.invites: list[tuple[str, str, Mapping[str, Any], Sequence[Any]]] = []
        self.rooms = LocalRooms(
            server_name=SERVER,
            signing_key=KEY,
            store=self.store,
            clock=self.clock,
            sender=self.sender,
            hooks=self.hooks,
            remote_inviter=self._remote_invite,
        )

    def _remote_invite(
        self, dest: str, version: str, event: Mapping[str, Any], state: Sequence[Any]
    ) -> Any:
        self.invites.append((dest, version, event, state))
        return defer.succeed(sign_event(version, event, dest, REMOTE_KEY))

    @defer.inlineCallbacks
    def _check_dag(self, room_id: str) -> Any:
        """Every stored event passes the auth rules against its listed auth events."""
        version = yield self.store.get_room_version(room_id)
        extremities = yield self.store.get_forward_extremities(room_id)
        self.assertEqual(len(extremities), 1)
        events = yield self.store.backfill(room_id, extremities, 100)
        by_id = {e.event_id: e.event for e in events}
        create = next(e.event for e in events if e.event["type"] == "m.room.create")
        for stored in events:
            ev = Event.from_pdu(version, stored.event)
            auth = [by_id[a] for a in ev.auth_event_ids()]
            found = check_auth_events_list(version, stored.event, auth, create_event=create)
            check_auth(version, stored.event, found)
        return events

    @defer.inlineCallbacks
    def test_create_room_and_send(self) -> Any:
        for version in ["2", "10", "11", "12"]:
            room_id = yield self.rooms.create_room(ALICE, version, name="Hello")
            state = yield self.store.get_current_state(room_id)
            self.assertIn(("m.room.name", ""), state)
            self.assertIn(("m.room.member", ALICE), state)
            eid = yield self.rooms.send_event(
                room_id, ALICE, "m.room.message", {"msgtype": "m.text", "body": "hi"}
            )
            extremities = yield self.store.get_forward_extremities(room_id)
            self.assertEqual(extremities, {eid})
            events = yield self._check_dag(room_id)
            self.assertEqual(len(events), 8)
        # No remote server in these rooms: nothing sent.
        self.assertEqual(self.sender.sent, [])
        # Hooks saw every creation batch and every message, marked local.
        self.assertEqual(len(self.hooks.batches), 8)
        self.assertTrue(all(p.local for b in self.hooks.batches for p in b))

    @defer.inlineCallbacks
    def test_unauthorised_event_is_refused_and_not_stored(self) -> Any:
        room_id = yield self.rooms.create_room(ALICE, "10")
        before = yield self.store.get_forward_extremities(room_id)
        with self.assertRaises(AuthError):
            yield self.rooms.send_event(room_id, CAROL, "m.room.message", {"body": "x"})
        after = yield self.store.get_forward_extremities(room_id)
        self.assertEqual(before, after)

    @defer.inlineCallbacks
    def test_unknown_room_and_foreign_sender(self) -> Any:
        with self.assertRaises(NotFoundError):
            yield self.rooms.send_event("!nope:fed.test", ALICE, "m.room.message", {})
        self.assertRaises(MatrixError, self.rooms.send_event, "!r:x", BOB, "m.room.message", {})

    @defer.inlineCallbacks
    def test_local_memberships(self) -> Any:
        room_id = yield self.rooms.create_room(ALICE, "11")
        yield self.rooms.invite(room_id, ALICE, CAROL)
        yield self.rooms.join_local(room_id, CAROL)
        members = yield self.store.get_joined_members(room_id)
        self.assertEqual(members, {ALICE, CAROL})
        yield self.rooms.send_event(room_id, CAROL, "m.room.message", {"body": "yo"})
        yield self.rooms.kick(room_id, ALICE, CAROL, reason="bye")
        yield self.rooms.ban(room_id, ALICE, CAROL)
        with self.assertRaises(AuthError):
            yield self.rooms.join_local(room_id, CAROL)
        yield self.rooms.unban(room_id, ALICE, CAROL)
        yield self.rooms.leave(room_id, ALICE)
        members = yield self.store.get_joined_members(room_id)
        self.assertEqual(members, set())
        yield self._check_dag(room_id)

    @defer.inlineCallbacks
    def test_remote_invite_signed_and_queued(self) -> Any:
        yield self.rooms.create_room(ALICE, "12", invite=[BOB], topic="t")
        self.assertEqual(len(self.invites), 1)
        dest, version, event, state = self.invites[0]
        self.assertEqual((dest, version), ("remote.test", "12"))
        self.assertEqual(event["state_key"], BOB)
        self.assertIn("m.room.create", [e["type"] for e in state])
        self.assertIn("m.room.topic", [e["type"] for e in state])
        stored = yield self.store.get_events([self.sender.sent[0][0]])
        invite = next(iter(stored.values())).event
        self.assertIn("remote.test", invite["signatures"])
        self.assertIn(SERVER, invite["signatures"])
        self.assertEqual(self.sender.sent[0][1], ["remote.test"])

    @defer.inlineCallbacks
    def test_remote_invite_refused(self) -> Any:
        room_id = yield self.rooms.create_room(ALICE, "10")
        self.rooms._remote_inviter = lambda *a: defer.fail(AuthError("no thanks"))
        before = yield self.store.get_forward_extremities(room_id)
        with self.assertRaises(AuthError):
            yield self.rooms.invite(room_id, ALICE, BOB)
        after = yield self.store.get_forward_extremities(room_id)
        self.assertEqual(before, after)
        self.assertEqual(self.sender.sent, [])

    @defer.inlineCallbacks
    def test_concurrent_sends_are_serialised(self) -> Any:
        room_id = yield self.rooms.create_room(ALICE, "10")
        ds = [
            self.rooms.send_event(room_id, ALICE, "m.room.message", {"body": str(i)})
            for i in range(20)
        ]
        ids = yield defer.gatherResults(ds)
        self.assertEqual(len(set(ids)), 20)
        events = yield self._check_dag(room_id)
        # A single chain: every message has exactly one prev event and depths grow.
        msgs = sorted(
            (e for e in events if e.event["type"] == "m.room.message"), key=lambda e: e.depth
        )
        self.assertEqual([len(e.event["prev_events"]) for e in msgs], [1] * 20)
        self.assertEqual(len({e.depth for e in msgs}), 20)
        self.assertEqual(self.rooms._locks, {})

    @defer.inlineCallbacks
    def test_hook_failure_does_not_undo(self) -> Any:
        class Broken(NullHooks):
            def on_new_pdus(self, room_id: str, pdus: Sequence[NewPdu]) -> Any:
                raise RuntimeError("boom")

        self.rooms._hooks = Broken()
        room_id = yield self.rooms.create_room(ALICE, "10")
        eid = yield self.rooms.send_event(room_id, ALICE, "m.room.message", {"body": "x"})
        extremities = yield self.store.get_forward_extremities(room_id)
        self.assertEqual(extremities, {eid})


class ForkTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_event_after_a_fork_gets_the_resolved_state(self) -> Any:
        from fedlib.auth.rules import select_auth_events
        from fedlib.rooms.builder import build_event
        from fedlib.storage.interface import EventStatus, PersistItem

        store = MemoryStore()
        clock = task.Clock()
        rooms = LocalRooms(server_name=SERVER, signing_key=KEY, store=store, clock=clock)
        room_id = yield rooms.create_room(ALICE, "10")
        (last,) = yield store.get_forward_extremities(room_id)
        state = yield store.get_state_after(last)
        events = yield store.get_events(list(state.values()) + [last])
        by_id = {eid: e.event for eid, e in events.items()}
        forks = []
        for etype, content in [("m.room.topic", {"topic": "A"}), ("m.room.name", {"name": "B"})]:
            stub = {"type": etype, "state_key": "", "sender": ALICE, "content": content}
            forks.append(
                build_event(
                    "10",
                    room_id=room_id,
                    sender=ALICE,
                    event_type=etype,
                    content=content,
                    state_key="",
                    prev_event_ids=[last],
                    auth_event_ids=select_auth_events("10", stub, state),
                    depth=by_id[last]["depth"] + 1,
                    origin_server_ts=5,
                    server_name=SERVER,
                    signing_key=KEY,
                )
            )
        yield store.persist_events(
            room_id,
            [
                PersistItem(f.event, f.event_id, EventStatus.ACCEPTED, state_before=state)
                for f in forks
            ],
        )
        self.assertEqual(
            (yield store.get_forward_extremities(room_id)), {f.event_id for f in forks}
        )
        eid = yield rooms.send_event(room_id, ALICE, "m.room.message", {"body": "merge"})
        before = yield store.get_state_before(eid)
        self.assertEqual(before[("m.room.topic", "")], forks[0].event_id)
        self.assertEqual(before[("m.room.name", "")], forks[1].event_id)
        stored = yield store.get_events([eid])
        self.assertEqual(
            sorted(stored[eid].event["prev_events"]), sorted(f.event_id for f in forks)
        )
        self.assertEqual((yield store.get_forward_extremities(room_id)), {eid})
