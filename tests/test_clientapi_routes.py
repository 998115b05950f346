"""Every route of the client API against bad tokens, bad JSON and unknown rooms."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from fedlib.clientapi.resource import ROUTES
from tests.clientapi_helpers import SERVER, ClientTestCase, q

UNKNOWN_ROOM = f"!unknown:{SERVER}"

#: Routes that take no body (or ignore it, as the spec allows).
NO_BODY = {"logout", "logout_all"}


class EveryRoute(ClientTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.alice, self.at = yield self.register("alice")
        self.room = (yield self.ok("POST", "createRoom", {}, token=self.at))["room_id"]

    def fill(self, path: str, room: str) -> str:
        values = {
            "{userId}": q(self.alice),
            "{filterId}": "1",
            "{field}": "displayname",
            "{roomIdOrAlias}": q(room),
            "{roomId}": q(room),
            "{eventType}": "m.room.topic",
            "{stateKey}": "",
            "{txnId}": "t1",
            "{roomAlias}": q(f"#a:{SERVER}"),
        }
        for key, value in values.items():
            path = path.replace(key, value)
        return path

    @defer.inlineCallbacks
    def snapshot(self) -> Any:
        room = yield self.room_snapshot(self.room)
        rooms = yield self.fed_store.list_rooms()
        sessions = yield self.client_store.list_sessions(self.alice)
        alias = yield self.client_store.get_alias(f"#a:{SERVER}")
        return room, sorted(rooms), sessions, alias

    @defer.inlineCallbacks
    def test_tokens(self) -> Any:
        before = yield self.snapshot()
        for method, path, _handler, needs_token in ROUTES:
            if not needs_token:
                continue
            url = self.fill(path, self.room)
            code, body = yield self.call(method, url, {})
            self.assertEqual((code, body["errcode"]), (401, "M_MISSING_TOKEN"), url)
            code, body = yield self.call(method, url, {}, token="wrong")
            self.assertEqual((code, body["errcode"]), (401, "M_UNKNOWN_TOKEN"), url)
            code, body = yield self.call(method, url + "?access_token=wrong", {})
            self.assertEqual((code, body["errcode"]), (401, "M_UNKNOWN_TOKEN"), url)
        self.assertEqual((yield self.snapshot()), before)

    @defer.inlineCallbacks
    def test_bad_json(self) -> Any:
        before = yield self.snapshot()
        for method, path, handler, _auth in ROUTES:
            if method not in ("POST", "PUT") or handler in NO_BODY:
                continue
            url = self.fill(path, self.room)
            for raw, errcode in [(b"{", "M_NOT_JSON"), (b'"text"', "M_BAD_JSON")]:
                code, body = yield self.call(method, url, raw=raw, token=self.at)
                self.assertEqual((code, body["errcode"]), (400, errcode), (url, raw))
        self.assertEqual((yield self.snapshot()), before)

    @defer.inlineCallbacks
    def test_unknown_rooms(self) -> Any:
        before = yield self.snapshot()
        bodies = {
            "invite": {"user_id": self.alice},
            "kick": {"user_id": self.alice},
            "ban": {"user_id": self.alice},
            "unban": {"user_id": self.alice},
            "put_alias": {"room_id": UNKNOWN_ROOM},
        }
        for method, path, handler, _auth in ROUTES:
            if "{roomId" not in path and handler != "put_alias":
                continue
            url = self.fill(path, UNKNOWN_ROOM)
            code, body = yield self.call(method, url, bodies.get(handler, {}), token=self.at)
            self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"), url)
        self.assertEqual((yield self.snapshot()), before)

    @defer.inlineCallbacks
    def test_small_endpoints(self) -> Any:
        caps = yield self.ok("GET", "capabilities", token=self.at)
        self.assertIn("12", caps["capabilities"]["m.room_versions"]["available"])
        rules = yield self.ok("GET", "pushrules/", token=self.at)
        self.assertEqual(rules, {"global": {}})
        profile = yield self.ok("GET", f"profile/{q(self.alice)}")
        self.assertEqual(profile, {"displayname": "alice"})
        field = yield self.ok("GET", f"profile/{q(self.alice)}/displayname")
        self.assertEqual(field, {"displayname": "alice"})
        for path in [f"profile/{q('@nobody:' + SERVER)}", f"profile/{q(self.alice)}/avatar_url"]:
            code, body = yield self.call("GET", path)
            self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"), path)
        made = yield self.ok(
            "POST",
            f"user/{q(self.alice)}/filter",
            {"room": {"timeline": {"limit": 3}}},
            token=self.at,
        )
        got = yield self.ok(
            "GET", f"user/{q(self.alice)}/filter/{made['filter_id']}", token=self.at
        )
        self.assertEqual(got, {"room": {"timeline": {"limit": 3}}})
        code, body = yield self.call("GET", f"user/{q(self.alice)}/filter/999", token=self.at)
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))
        code, body = yield self.call(
            "POST", f"user/{q('@bob:' + SERVER)}/filter", {}, token=self.at
        )
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
        code, body = yield self.call("OPTIONS", "sync")
        self.assertEqual(code, 200)
