"""The client API's /sync (initial, incremental, long-polling) and /messages."""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import defer, reactor, task

from tests.clientapi_helpers import SERVER, ClientTestCase, q


def bodies(room_section: dict[str, Any]) -> list[str]:
    return [
        e["content"]["body"]
        for e in room_section["timeline"]["events"]
        if e["type"] == "m.room.message"
    ]


class Sync(ClientTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.alice, self.at = yield self.register("alice")
        self.bob, self.bt = yield self.register("bob")
        answer = yield self.ok("POST", "createRoom", {"preset": "public_chat"}, token=self.at)
        self.room = answer["room_id"]
        self.txn = 0

    @defer.inlineCallbacks
    def say(self, body: str, token: str | None = None) -> Any:
        self.txn += 1
        answer = yield self.ok(
            "PUT",
            f"rooms/{q(self.room)}/send/m.room.message/t{self.txn}",
            {"msgtype": "m.text", "body": body},
            token=token or self.at,
        )
        return answer["event_id"]

    def sync(self, token: str, **params: str) -> Any:
        query = "&".join(f"{k}={q(v)}" for k, v in params.items())
        return self.ok("GET", "sync?" + query, token=token)

    @defer.inlineCallbacks
    def test_initial_and_incremental(self) -> Any:
        yield self.say("one")
        first = yield self.sync(self.at)
        section = first["rooms"]["join"][self.room]
        self.assertEqual(bodies(section), ["one"])
        timeline_types = [e["type"] for e in section["timeline"]["events"]]
        state_types = {e["type"] for e in section["state"]["events"]}
        # Everything is either in the timeline or in the state, never both.
        self.assertIn("m.room.create", set(timeline_types) | state_types)
        ids = [e["event_id"] for e in section["timeline"]["events"]]
        self.assertFalse(set(ids) & {e["event_id"] for e in section["state"]["events"]})
        # Nothing new: an incremental sync without timeout returns at once, empty.
        empty = yield self.sync(self.at, since=first["next_batch"])
        self.assertEqual(empty["rooms"]["join"], {})
        self.assertEqual(empty["next_batch"], first["next_batch"])
        yield self.say("two")
        nxt = yield self.sync(self.at, since=first["next_batch"])
        section = nxt["rooms"]["join"][self.room]
        self.assertEqual(bodies(section), ["two"])
        self.assertFalse(section["timeline"]["limited"])
        self.assertEqual(section["state"]["events"], [])
        # Bob is in no room.
        bob = yield self.sync(self.bt)
        self.assertEqual(bob["rooms"]["join"], {})

    @defer.inlineCallbacks
    def test_long_poll_wakes_on_new_event(self) -> Any:
        first = yield self.sync(self.at)
        started = time.monotonic()
        waiting = self.sync(self.at, since=first["next_batch"], timeout="20000")
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertFalse(waiting.called)
        yield self.say("wake up")
        answer = yield waiting
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(bodies(answer["rooms"]["join"][self.room]), ["wake up"])

    @defer.inlineCallbacks
    def test_long_poll_times_out_empty(self) -> Any:
        first = yield self.sync(self.at)
        started = time.monotonic()
        answer = yield self.sync(self.at, since=first["next_batch"], timeout="300")
        self.assertGreaterEqual(time.monotonic() - started, 0.25)
        self.assertEqual(answer["rooms"]["join"], {})

    @defer.inlineCallbacks
    def test_long_poll_ignores_other_rooms(self) -> Any:
        first = yield self.sync(self.bt)
        waiting = self.sync(self.bt, since=first["next_batch"], timeout="400")
        yield self.say("not for bob")
        answer = yield waiting
        self.assertEqual(answer["rooms"]["join"], {})

    @defer.inlineCallbacks
    def test_timeline_limit_and_pagination(self) -> Any:
        base = yield self.sync(self.at)
        for i in range(5):
            yield self.say(f"m{i}")
        limit = json.dumps({"room": {"timeline": {"limit": 2}}})
        answer = yield self.sync(self.at, since=base["next_batch"], filter=limit)
        section = answer["rooms"]["join"][self.room]
        self.assertEqual(bodies(section), ["m3", "m4"])
        self.assertTrue(section["timeline"]["limited"])
        # A stored filter works the same.
        filt = yield self.ok(
            "POST",
            f"user/{q(self.alice)}/filter",
            {"room": {"timeline": {"limit": 1}}},
            token=self.at,
        )
        answer = yield self.sync(self.at, since=base["next_batch"], filter=filt["filter_id"])
        self.assertEqual(bodies(answer["rooms"]["join"][self.room]), ["m4"])
        code, _ = yield self.call(
            "GET", f"user/{q(self.alice)}/filter/{filt['filter_id']}", token=self.bt
        )
        self.assertEqual(code, 403)
        # Pagination backwards from prev_batch.
        token = section["timeline"]["prev_batch"]
        page = yield self.ok(
            "GET", f"rooms/{q(self.room)}/messages?dir=b&limit=2&from={token}", token=self.at
        )
        self.assertEqual([e["content"].get("body") for e in page["chunk"]], ["m2", "m1"])
        page2 = yield self.ok(
            "GET", f"rooms/{q(self.room)}/messages?dir=b&limit=2&from={page['end']}", token=self.at
        )
        self.assertEqual([e["content"].get("body") for e in page2["chunk"]], ["m0", None])
        # Forwards from there.
        fwd = yield self.ok(
            "GET", f"rooms/{q(self.room)}/messages?dir=f&limit=3&from={page['end']}", token=self.at
        )
        self.assertEqual([e["content"].get("body") for e in fwd["chunk"]], ["m1", "m2", "m3"])
        # Walk back to the room's creation.
        seen: list[str] = []
        frm = None
        for _ in range(20):
            url = f"rooms/{q(self.room)}/messages?dir=b&limit=4" + (f"&from={frm}" if frm else "")
            page = yield self.ok("GET", url, token=self.at)
            seen += [e["type"] for e in page["chunk"]]
            if "end" not in page:
                break
            frm = page["end"]
        self.assertEqual(seen[-1], "m.room.create")

    @defer.inlineCallbacks
    def test_bad_parameters(self) -> Any:
        for params in [
            "since=garbage",
            "timeout=-1",
            "filter=%7Bbad",
            "filter=999",
            "filter=" + q(json.dumps({"room": {"timeline": {"limit": -1}}})),
        ]:
            code, answer = yield self.call("GET", "sync?" + params, token=self.at)
            self.assertEqual((code, answer["errcode"]), (400, "M_INVALID_PARAM"), params)
        for params in ["dir=x", "limit=abc", "from=zzz"]:
            code, answer = yield self.call(
                "GET", f"rooms/{q(self.room)}/messages?{params}", token=self.at
            )
            self.assertEqual((code, answer["errcode"]), (400, "M_INVALID_PARAM"), params)
        code, answer = yield self.call("GET", f"rooms/{q(self.room)}/messages", token=self.bt)
        self.assertEqual((code, answer["errcode"]), (403, "M_FORBIDDEN"))
        code, answer = yield self.call("GET", f"rooms/{q('!x:' + SERVER)}/messages", token=self.at)
        self.assertEqual((code, answer["errcode"]), (404, "M_NOT_FOUND"))

    @defer.inlineCallbacks
    def test_invite_join_leave_sections(self) -> Any:
        base = yield self.sync(self.bt)
        waiting = self.sync(self.bt, since=base["next_batch"], timeout="20000")
        yield self.ok("POST", f"rooms/{q(self.room)}/invite", {"user_id": self.bob}, token=self.at)
        invited = yield waiting
        invite = invited["rooms"]["invite"][self.room]["invite_state"]["events"]
        kinds = {(e["type"], e["state_key"]) for e in invite}
        self.assertIn(("m.room.create", ""), kinds)
        self.assertIn(("m.room.member", self.bob), kinds)
        yield self.ok("POST", f"join/{q(self.room)}", {}, token=self.bt)
        yield self.say("hello bob")
        joined = yield self.sync(self.bt, since=invited["next_batch"])
        section = joined["rooms"]["join"][self.room]
        self.assertIn("hello bob", bodies(section))
        # A newly joined room comes with its state.
        self.assertIn("m.room.create", {e["type"] for e in section["state"]["events"]})
        self.assertNotIn(self.room, joined["rooms"]["invite"])
        yield self.say("bye", token=self.bt)
        yield self.ok("POST", f"rooms/{q(self.room)}/leave", {}, token=self.bt)
        yield self.say("after bob left")
        left = yield self.sync(self.bt, since=joined["next_batch"])
        self.assertIn(self.room, left["rooms"]["leave"])
        self.assertEqual(bodies(left["rooms"]["leave"][self.room]), ["bye"])
        self.assertEqual(left["rooms"]["join"], {})
        # Alice sees Bob's message in her sync.
        alice = yield self.sync(self.at)
        self.assertIn("bye", bodies(alice["rooms"]["join"][self.room]))
