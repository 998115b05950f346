"""Read endpoints through the Resource tree: /event, /state, /state_ids, /event_auth,
/backfill, /get_missing_events, /timestamp_to_event."""

from __future__ import annotations

from twisted.trial import unittest

from tests.server_helpers import OUR_NAME, Harness, Remote, RoomBuilder

ALICE = "@alice:us.test"
BOB = "@bob:remote.test"
V1 = "/_matrix/federation/v1"


class ReadTests(unittest.TestCase):
    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.stranger = Remote("stranger.test")
        self.h = Harness(self.remote, self.stranger)
        self.rb = RoomBuilder("10", {OUR_NAME: self.h.us, "remote.test": self.remote})
        self.rb.create_room(ALICE, extra_members=[BOB])
        self.msg = self.rb.add("m.room.message", ALICE, {"body": "hello"})
        self.successResultOf(self.rb.persist_all(self.h.store))
        self.room = self.rb.room_id

    def get(self, path: str, origin: Remote | None = None) -> object:
        return self.h.request("GET", path, origin=origin or self.remote)

    def test_event(self) -> None:
        r = self.h.request("GET", f"{V1}/event/{self.msg}")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.json["pdus"][0]["content"], {"body": "hello"})
        self.assertEqual(r.json["origin"], OUR_NAME)
        r = self.h.request("GET", f"{V1}/event/$nope")
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))
        r = self.h.request("GET", f"{V1}/event/{self.msg}", origin=self.stranger)
        self.assertEqual((r.code, r.errcode), (403, "M_FORBIDDEN"))

    def test_state_and_state_ids(self) -> None:
        r = self.h.request("GET", f"{V1}/state_ids/{self.room}?event_id={self.msg}")
        self.assertEqual(r.code, 200)
        self.assertEqual(set(r.json["pdu_ids"]), set(self.rb.state.values()))
        self.assertIn(self.rb.state[("m.room.create", "")], r.json["auth_chain_ids"])
        r = self.h.request("GET", f"{V1}/state/{self.room}?event_id={self.msg}")
        self.assertEqual(r.code, 200)
        self.assertEqual(len(r.json["pdus"]), len(self.rb.state))
        self.assertTrue(r.json["auth_chain"])

    def test_state_errors(self) -> None:
        r = self.h.request("GET", f"{V1}/state_ids/{self.room}")
        self.assertEqual((r.code, r.errcode), (400, "M_MISSING_PARAM"))
        r = self.h.request("GET", f"{V1}/state_ids/!unknown:x.test?event_id={self.msg}")
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))
        r = self.h.request("GET", f"{V1}/state_ids/{self.room}?event_id=$nope")
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))
        r = self.h.request(
            "GET", f"{V1}/state/{self.room}?event_id={self.msg}", origin=self.stranger
        )
        self.assertEqual((r.code, r.errcode), (403, "M_FORBIDDEN"))

    def test_event_auth(self) -> None:
        r = self.h.request("GET", f"{V1}/event_auth/{self.room}/{self.msg}")
        self.assertEqual(r.code, 200)
        types = {e["type"] for e in r.json["auth_chain"]}
        self.assertIn("m.room.create", types)
        r = self.h.request("GET", f"{V1}/event_auth/{self.room}/{self.msg}", origin=self.stranger)
        self.assertEqual(r.code, 403)

    def test_backfill(self) -> None:
        r = self.h.request("GET", f"{V1}/backfill/{self.room}?v={self.msg}&limit=3")
        self.assertEqual(r.code, 200)
        self.assertEqual(len(r.json["pdus"]), 3)
        r = self.h.request("GET", f"{V1}/backfill/{self.room}?limit=3")
        self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"))
        r = self.h.request("GET", f"{V1}/backfill/{self.room}?v={self.msg}")
        self.assertEqual((r.code, r.errcode), (400, "M_MISSING_PARAM"))
        r = self.h.request(
            "GET", f"{V1}/backfill/{self.room}?v={self.msg}&limit=3", origin=self.stranger
        )
        self.assertEqual(r.code, 403)

    def test_get_missing_events(self) -> None:
        create = self.rb.state[("m.room.create", "")]
        body = {"earliest_events": [create], "latest_events": [self.msg], "limit": 10}
        r = self.h.request("POST", f"{V1}/get_missing_events/{self.room}", body)
        self.assertEqual(r.code, 200)
        self.assertTrue(r.json["events"])
        self.assertNotIn(self.msg, [e.get("content") for e in r.json["events"]])
        for bad in ({"latest_events": [self.msg]}, {**body, "limit": -1}, {**body, "limit": 1.5}):
            r = self.h.request("POST", f"{V1}/get_missing_events/{self.room}", bad)
            self.assertEqual((r.code, r.errcode), (400, "M_BAD_JSON"), bad)
        r = self.h.request(
            "POST", f"{V1}/get_missing_events/{self.room}", body, origin=self.stranger
        )
        self.assertEqual(r.code, 403)

    def test_timestamp_to_event(self) -> None:
        r = self.h.request("GET", f"{V1}/timestamp_to_event/{self.room}?ts=0&dir=f")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.json["event_id"], self.rb.state[("m.room.create", "")])
        r = self.h.request("GET", f"{V1}/timestamp_to_event/{self.room}?ts=9999999999999&dir=f")
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))
        r = self.h.request("GET", f"{V1}/timestamp_to_event/{self.room}?ts=0&dir=x")
        self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"))
        r = self.h.request("GET", f"{V1}/timestamp_to_event/{self.room}?dir=f")
        self.assertEqual((r.code, r.errcode), (400, "M_MISSING_PARAM"))

    def test_acl_denied(self) -> None:
        from fedlib.storage.interface import PersistItem, StateRef

        acl = self.rb.add("m.room.server_acl", ALICE, {"allow": ["*"], "deny": ["remote.*"]}, "")
        self.successResultOf(
            self.h.store.persist_events(
                self.room,
                [
                    PersistItem(
                        event=self.rb.events[acl], event_id=acl, state_before=StateRef(self.msg)
                    )
                ],
            )
        )
        for path in (
            f"{V1}/state_ids/{self.room}?event_id={self.msg}",
            f"{V1}/backfill/{self.room}?v={self.msg}&limit=1",
            f"{V1}/event/{self.msg}",
        ):
            r = self.h.request("GET", path)
            self.assertEqual((r.code, r.errcode), (403, "M_FORBIDDEN"), path)


class HierarchyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.h = Harness(self.remote)
        servers = {OUR_NAME: self.h.us, "remote.test": self.remote}
        self.child = RoomBuilder("10", servers)
        self.child.create_room(ALICE)
        self.child.add("m.room.name", ALICE, {"name": "Child"}, "")
        self.private = RoomBuilder("10", servers)
        self.private.create_room(ALICE, join_rule="invite")
        self.space = RoomBuilder("10", servers)
        self.space.create_room(ALICE)
        for rb in (self.child, self.private):
            self.space.add("m.space.child", ALICE, {"via": [OUR_NAME]}, rb.room_id)
        self.space.add("m.space.child", ALICE, {"via": []}, "!removed:us.test")
        for rb in (self.child, self.private, self.space):
            self.successResultOf(rb.persist_all(self.h.store))

    def test_from_state(self) -> None:
        r = self.h.request("GET", f"{V1}/hierarchy/{self.space.room_id}")
        self.assertEqual(r.code, 200, r.json)
        self.assertEqual(len(r.json["room"]["children_state"]), 2)
        self.assertEqual(r.json["room"]["num_joined_members"], 1)
        self.assertEqual([c["name"] for c in r.json["children"]], ["Child"])
        self.assertEqual(r.json["inaccessible_children"], [self.private.room_id])

    def test_inaccessible_and_unknown(self) -> None:
        r = self.h.request("GET", f"{V1}/hierarchy/{self.private.room_id}")
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))
        r = self.h.request("GET", f"{V1}/hierarchy/!nope:us.test")
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))

    def test_hook_answer_wins(self) -> None:
        self.h.hooks.get_hierarchy = lambda room_id, suggested: {  # type: ignore[method-assign]
            "room": {"room_id": room_id},
            "children": [],
            "inaccessible_children": [],
        }
        r = self.h.request("GET", f"{V1}/hierarchy/!any:us.test?suggested_only=true")
        self.assertEqual(r.json["room"], {"room_id": "!any:us.test"})
