"""fedlib.testing: a loopback FederationService federating with FakeRemoteServer."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from fedlib.errors import MatrixError
from fedlib.testing import FakeRemoteServer, quiet_dns, start_loopback


class LoopbackWithFakeTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        quiet_dns(self)
        self.fed = yield start_loopback(directory=self.mktemp())
        self.addCleanup(self.fed.stop)
        self.fake = yield FakeRemoteServer.start()
        self.addCleanup(self.fake.stop)
        self.alice = self.fed.user("alice")
        self.bob = self.fake.user("bob")

    @defer.inlineCallbacks
    def test_fake_answers_key_and_version(self) -> Any:
        body = yield self.fed.service.client.version(self.fake.server_name)
        self.assertEqual(body["name"], "fedlib-fake")
        keys = yield self.fed.service.keyring.get_verify_keys(
            self.fake.server_name, [f"ed25519:{self.fake.signing_key.version}"]
        )
        self.assertEqual(len(keys), 1)
        self.assertEqual(self.fake.requests("GET", "/_matrix/key/v2/server")[0].origin, None)

    @defer.inlineCallbacks
    def test_scripted_answer_and_record(self) -> Any:
        self.fake.respond(
            "GET", "/_matrix/federation/v1/version", (400, {"errcode": "M_UNKNOWN", "error": "x"})
        )
        with self.assertRaises(MatrixError):
            yield self.fed.service.client.version(self.fake.server_name)
        self.assertEqual(len(self.fake.requests("GET", "/_matrix/federation/v1/version")), 1)
        self.fake.clear_scripts()
        body = yield self.fed.service.client.version(self.fake.server_name)
        self.assertEqual(body["name"], "fedlib-fake")

    @defer.inlineCallbacks
    def test_join_fake_room_and_exchange_messages(self) -> Any:
        room_id = self.fake.create_room(self.bob, "10", name="fake room")
        yield self.fed.service.join_room(room_id, self.alice, [self.fake.server_name])
        store = self.fed.service.store
        members = yield store.get_joined_members(room_id)
        self.assertEqual(members, {self.alice, self.bob})
        self.assertIn(self.alice, self.fake.rooms[room_id].members())
        make_join = self.fake.requests("GET", "/_matrix/federation/v1/make_join/")
        self.assertEqual(make_join[0].origin, self.fed.server_name)
        self.assertEqual(make_join[0].params["userId"], self.alice)

        # fedlib -> fake, through the transaction sender.
        yield self.fed.service.send_event(room_id, self.alice, "m.room.message", {"body": "hi"})
        pdu = yield self.fake.wait_for(
            lambda: [p for p in self.fake.pdus if p["content"].get("body") == "hi"]
        )
        self.assertEqual(pdu[0]["sender"], self.alice)

        # fake -> fedlib, as a transaction.
        built = self.fake.create_event(room_id, self.bob, "m.room.message", {"body": "yo"})
        resp = yield self.fake.send_pdus(self.fed.server_name, [built.event])
        self.assertEqual(resp.get(built.event_id, {}), {})
        stored = yield store.get_events([built.event_id])
        self.assertIn(built.event_id, stored)

    @defer.inlineCallbacks
    def test_remote_invite_goes_through_fake(self) -> Any:
        room_id = yield self.fed.service.create_room(self.alice, "11")
        yield self.fed.service.invite(room_id, self.alice, self.bob)
        self.assertEqual(len(self.fake.invites), 1)
        self.assertEqual(self.fake.invites[0]["state_key"], self.bob)
        state = yield self.fed.service.store.get_current_state(room_id)
        stored = yield self.fed.service.store.get_events([state[("m.room.member", self.bob)]])
        event = next(iter(stored.values())).event
        self.assertIn(self.fake.server_name, event["signatures"])

    @defer.inlineCallbacks
    def test_knock_and_leave_fake_room(self) -> Any:
        room_id = self.fake.create_room(
            self.bob,
            "10",
            preset="private_chat",
            initial_state=[],
            power_level_content_override=None,
        )
        room = self.fake.rooms[room_id]
        rules = self.fake.create_event(
            room_id, self.bob, "m.room.join_rules", {"join_rule": "knock"}, ""
        )
        self.assertEqual(room.state[("m.room.join_rules", "")], rules.event_id)
        yield self.fed.service.knock_room(room_id, self.alice, [self.fake.server_name])
        self.assertEqual(room.members("knock"), {self.alice})
        yield self.fed.service.leave(room_id, self.alice, servers=[self.fake.server_name])
        self.assertEqual(room.members("leave"), {self.alice})
        paths = [
            r.path.split("/")[4] for r in self.fake.requests(path_prefix="/_matrix/federation")
        ]
        self.assertEqual(paths, ["make_knock", "send_knock", "make_leave", "send_leave"])
