"""The client API over HTTP: accounts and tokens, rooms, memberships, errors."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from tests.clientapi_helpers import SERVER, ClientTestCase, q


class Basics(ClientTestCase):
    @defer.inlineCallbacks
    def test_versions(self) -> Any:
        code, body = yield self.call("GET", "/_matrix/client/versions")
        self.assertEqual(code, 200)
        self.assertIn("v1.1", body["versions"])

    @defer.inlineCallbacks
    def test_unknown_endpoint_and_method(self) -> Any:
        code, body = yield self.call("GET", "nonsense/here")
        self.assertEqual((code, body["errcode"]), (404, "M_UNRECOGNIZED"))
        code, body = yield self.call("GET", "/_matrix/other")
        self.assertEqual((code, body["errcode"]), (404, "M_UNRECOGNIZED"))
        code, body = yield self.call("DELETE", "login")
        self.assertEqual((code, body["errcode"]), (405, "M_UNRECOGNIZED"))

    @defer.inlineCallbacks
    def test_tokens_checked(self) -> Any:
        code, body = yield self.call("GET", "account/whoami")
        self.assertEqual((code, body["errcode"]), (401, "M_MISSING_TOKEN"))
        code, body = yield self.call("GET", "account/whoami", token="nope")
        self.assertEqual((code, body["errcode"]), (401, "M_UNKNOWN_TOKEN"))
        self.assertIs(body["soft_logout"], False)
        code, body = yield self.call("GET", "account/whoami?access_token=nope")
        self.assertEqual((code, body["errcode"]), (401, "M_UNKNOWN_TOKEN"))
        for method, path in [
            ("POST", "createRoom"),
            ("GET", "sync"),
            ("GET", "joined_rooms"),
            ("PUT", "rooms/!a:b/send/m.room.message/1"),
            ("POST", "logout"),
        ]:
            code, body = yield self.call(method, path, {}, token="bad")
            self.assertEqual((code, body["errcode"]), (401, "M_UNKNOWN_TOKEN"), path)


class Accounts(ClientTestCase):
    @defer.inlineCallbacks
    def test_register_login_whoami_logout(self) -> Any:
        code, body = yield self.call("POST", "register", {"username": "alice", "password": "pw"})
        self.assertEqual(code, 401)
        self.assertEqual(body["flows"], [{"stages": ["m.login.dummy"]}])
        self.assertIn("session", body)
        self.assertIsNone((yield self.client_store.get_account(f"@alice:{SERVER}")))
        user_id, token = yield self.register("alice", "s3cret")
        self.assertEqual(user_id, f"@alice:{SERVER}")
        me = yield self.ok("GET", "account/whoami", token=token)
        self.assertEqual(me["user_id"], user_id)
        flows = yield self.ok("GET", "login")
        self.assertEqual(flows["flows"], [{"type": "m.login.password"}])
        login = yield self.ok(
            "POST",
            "login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": "s3cret",
                "device_id": "DEV",
            },
        )
        self.assertEqual((login["user_id"], login["device_id"]), (user_id, "DEV"))
        token2 = login["access_token"]
        me = yield self.ok("GET", "account/whoami", token=token2)
        self.assertEqual(me["device_id"], "DEV")
        # Legacy "user" field and full user ID.
        yield self.ok(
            "POST", "login", {"type": "m.login.password", "user": user_id, "password": "s3cret"}
        )
        yield self.ok("POST", "logout", {}, token=token2)
        code, body = yield self.call("GET", "account/whoami", token=token2)
        self.assertEqual(body["errcode"], "M_UNKNOWN_TOKEN")
        yield self.ok("GET", "account/whoami", token=token)
        yield self.ok("POST", "logout/all", {}, token=token)
        code, _ = yield self.call("GET", "account/whoami", token=token)
        self.assertEqual(code, 401)

    @defer.inlineCallbacks
    def test_register_errors_store_nothing(self) -> Any:
        yield self.register("bob")
        dummy = {"type": "m.login.dummy"}
        code, body = yield self.call(
            "POST", "register", {"username": "bob", "password": "x", "auth": dummy}
        )
        self.assertEqual((code, body["errcode"]), (400, "M_USER_IN_USE"))
        code, body = yield self.call(
            "POST", "register", {"username": "Bad Name!", "password": "x", "auth": dummy}
        )
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_USERNAME"))
        code, body = yield self.call("POST", "register", raw=b"{not json")
        self.assertEqual((code, body["errcode"]), (400, "M_NOT_JSON"))
        code, body = yield self.call("POST", "register", [1, 2])
        self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"))
        code, body = yield self.call(
            "POST", "register", {"username": 5, "password": "x", "auth": dummy}
        )
        self.assertEqual((code, body["errcode"]), (400, "M_BAD_JSON"))
        code, body = yield self.call(
            "POST", "register?kind=guest", {"username": "g", "password": "x", "auth": dummy}
        )
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
        for name in ("g", "Bad Name!", "5"):
            self.assertIsNone((yield self.client_store.get_account(f"@{name}:{SERVER}")))
        code, body = yield self.call("GET", "register/available?username=bob")
        self.assertEqual(body["errcode"], "M_USER_IN_USE")
        yield self.ok("GET", "register/available?username=carol")

    @defer.inlineCallbacks
    def test_bad_logins(self) -> Any:
        user_id, _ = yield self.register("alice", "right")
        before = yield self.client_store.list_sessions(user_id)
        for body in [
            {"type": "m.login.password", "user": "alice", "password": "wrong"},
            {"type": "m.login.password", "user": "nobody", "password": "right"},
        ]:
            code, answer = yield self.call("POST", "login", body)
            self.assertEqual((code, answer["errcode"]), (403, "M_FORBIDDEN"))
        code, answer = yield self.call("POST", "login", {"type": "m.login.token", "token": "x"})
        self.assertEqual((code, answer["errcode"]), (400, "M_UNKNOWN"))
        code, answer = yield self.call("POST", "login", {"type": "m.login.password"})
        self.assertEqual((code, answer["errcode"]), (400, "M_MISSING_PARAM"))
        code, answer = yield self.call("POST", "login", raw=b"\xff")
        self.assertEqual((code, answer["errcode"]), (400, "M_NOT_JSON"))
        self.assertEqual((yield self.client_store.list_sessions(user_id)), before)

    @defer.inlineCallbacks
    def test_failed_logins_rate_limited(self) -> Any:
        yield self.register("alice", "right")
        bad = {"type": "m.login.password", "user": "alice", "password": "wrong"}
        codes = []
        for _ in range(12):
            code, answer = yield self.call("POST", "login", bad)
            codes.append(code)
        self.assertIn(429, codes)
        self.assertEqual(answer["errcode"], "M_LIMIT_EXCEEDED")
        self.assertGreater(answer["retry_after_ms"], 0)


class RegistrationDisabled(ClientTestCase):
    enable_registration = False

    @defer.inlineCallbacks
    def test_register_refused(self) -> Any:
        code, body = yield self.call(
            "POST",
            "register",
            {"username": "a", "password": "x", "auth": {"type": "m.login.dummy"}},
        )
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
        self.assertIsNone((yield self.client_store.get_account(f"@a:{SERVER}")))


class Rooms(ClientTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.alice, self.at = yield self.register("alice")
        self.bob, self.bt = yield self.register("bob")

    @defer.inlineCallbacks
    def create(self, **body: Any) -> Any:
        answer = yield self.ok("POST", "createRoom", body, token=self.at)
        return answer["room_id"]

    @defer.inlineCallbacks
    def test_create_room_options(self) -> Any:
        room = yield self.create(
            name="Hello",
            topic="Things",
            preset="public_chat",
            room_version="10",
            initial_state=[
                {"type": "m.room.guest_access", "content": {"guest_access": "forbidden"}}
            ],
            invite=[self.bob],
        )
        self.assertTrue(room.startswith("!") and room.endswith(":" + SERVER))
        name = yield self.ok("GET", f"rooms/{q(room)}/state/m.room.name", token=self.at)
        self.assertEqual(name, {"name": "Hello"})
        topic = yield self.ok("GET", f"rooms/{q(room)}/state/m.room.topic/", token=self.at)
        self.assertEqual(topic["topic"], "Things")
        state = yield self.ok("GET", f"rooms/{q(room)}/state", token=self.at)
        types = {e["type"] for e in state}
        self.assertLessEqual({"m.room.create", "m.room.guest_access", "m.room.join_rules"}, types)
        create = next(e for e in state if e["type"] == "m.room.create")
        self.assertEqual(create["content"]["room_version"], "10")
        members = yield self.ok("GET", f"rooms/{q(room)}/members", token=self.at)
        got = {e["state_key"]: e["content"]["membership"] for e in members["chunk"]}
        self.assertEqual(got, {self.alice: "join", self.bob: "invite"})
        joined = yield self.ok("GET", "joined_rooms", token=self.at)
        self.assertEqual(joined["joined_rooms"], [room])
        code, body = yield self.call("GET", f"rooms/{q(room)}/state/m.room.avatar", token=self.at)
        self.assertEqual((code, body["errcode"]), (404, "M_NOT_FOUND"))

    @defer.inlineCallbacks
    def test_create_room_errors_store_nothing(self) -> Any:
        bad_bodies = [
            ({"preset": "nope"}, "M_BAD_JSON"),
            ({"room_version": "99"}, "M_UNSUPPORTED_ROOM_VERSION"),
            ({"name": 5}, "M_BAD_JSON"),
            ({"invite": ["not-a-user"]}, "M_INVALID_PARAM"),
            ({"initial_state": [{"type": "x"}]}, "M_BAD_JSON"),
            ({"visibility": "secret"}, "M_BAD_JSON"),
        ]
        for body, errcode in bad_bodies:
            code, answer = yield self.call("POST", "createRoom", body, token=self.at)
            self.assertEqual((code, answer["errcode"]), (400, errcode), body)
        code, answer = yield self.call("POST", "createRoom", raw=b"[", token=self.at)
        self.assertEqual((code, answer["errcode"]), (400, "M_NOT_JSON"))
        self.assertEqual((yield self.fed_store.list_rooms()), [])

    @defer.inlineCallbacks
    def test_send_is_idempotent_per_token(self) -> Any:
        room = yield self.create()
        path = f"rooms/{q(room)}/send/m.room.message/txn1"
        body = {"msgtype": "m.text", "body": "once"}
        first, second = yield defer.gatherResults(
            [self.ok("PUT", path, body, token=self.at), self.ok("PUT", path, body, token=self.at)]
        )
        third = yield self.ok("PUT", path, body, token=self.at)
        self.assertEqual(first["event_id"], second["event_id"])
        self.assertEqual(first["event_id"], third["event_id"])
        self.assertEqual((yield self.messages(room)), ["once"])
        # Another login of the same user is another transaction namespace.
        login = yield self.ok(
            "POST", "login", {"type": "m.login.password", "user": "alice", "password": "pw"}
        )
        other = yield self.ok("PUT", path, body, token=login["access_token"])
        self.assertNotEqual(other["event_id"], first["event_id"])
        self.assertEqual((yield self.messages(room)), ["once", "once"])

    @defer.inlineCallbacks
    def test_send_txn_id_scoped_to_endpoint(self) -> Any:
        room_a = yield self.create()
        room_b = yield self.create()
        body = {"msgtype": "m.text", "body": "x"}
        in_a = yield self.ok("PUT", f"rooms/{q(room_a)}/send/m.room.message/t", body, token=self.at)
        in_b = yield self.ok("PUT", f"rooms/{q(room_b)}/send/m.room.message/t", body, token=self.at)
        typed = yield self.ok("PUT", f"rooms/{q(room_a)}/send/org.example.x/t", body, token=self.at)
        ids = {in_a["event_id"], in_b["event_id"], typed["event_id"]}
        self.assertEqual(len(ids), 3)
        self.assertEqual((yield self.messages(room_b)), ["x"])
        again = yield self.ok(
            "PUT", f"rooms/{q(room_b)}/send/m.room.message/t", body, token=self.at
        )
        self.assertEqual(again["event_id"], in_b["event_id"])

    @defer.inlineCallbacks
    def test_public_room_directory(self) -> Any:
        public = yield self.create(visibility="public", name="Lobby", topic="Hello")
        private = yield self.create(name="Secret")
        listed = yield self.ok("GET", "publicRooms")
        self.assertEqual([e["room_id"] for e in listed["chunk"]], [public])
        entry = listed["chunk"][0]
        self.assertEqual((entry["name"], entry["topic"]), ("Lobby", "Hello"))
        self.assertEqual(entry["num_joined_members"], 1)
        self.assertEqual(entry["join_rule"], "public")
        self.assertIs(entry["world_readable"], False)
        self.assertEqual(listed["total_room_count_estimate"], 1)
        # What other servers get from fedlib's /publicRooms: the same directory.
        hooked = yield self.client.hooks.get_public_rooms(None, None, None)
        self.assertEqual(hooked["chunk"], listed["chunk"])
        # Visibility of each room; publishing needs the power to set its alias.
        got = yield self.ok("GET", f"directory/list/room/{q(private)}")
        self.assertEqual(got, {"visibility": "private"})
        got = yield self.ok("GET", f"directory/list/room/{q(public)}")
        self.assertEqual(got, {"visibility": "public"})
        yield self.ok("POST", f"join/{q(public)}", {}, token=self.bt)
        code, body = yield self.call(
            "PUT", f"directory/list/room/{q(public)}", {"visibility": "private"}, token=self.bt
        )
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
        code, body = yield self.call(
            "PUT", f"directory/list/room/{q(private)}", {"visibility": "public"}, token=self.bt
        )
        self.assertEqual((code, body["errcode"]), (403, "M_FORBIDDEN"))
        code, body = yield self.call(
            "PUT", f"directory/list/room/{q(private)}", {"visibility": "odd"}, token=self.at
        )
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
        yield self.ok(
            "PUT", f"directory/list/room/{q(private)}", {"visibility": "public"}, token=self.at
        )
        listed = yield self.ok("GET", "publicRooms")
        self.assertEqual([e["room_id"] for e in listed["chunk"]], [public, private])
        # Search, paging and the POST form.
        found = yield self.ok(
            "POST", "publicRooms", {"filter": {"generic_search_term": "secr"}}, token=self.at
        )
        self.assertEqual([e["room_id"] for e in found["chunk"]], [private])
        page = yield self.ok("GET", "publicRooms?limit=1")
        self.assertEqual([e["room_id"] for e in page["chunk"]], [public])
        rest = yield self.ok("GET", f"publicRooms?limit=1&since={page['next_batch']}")
        self.assertEqual([e["room_id"] for e in rest["chunk"]], [private])
        self.assertNotIn("next_batch", rest)
        code, body = yield self.call("GET", "publicRooms?since=bogus")
        self.assertEqual((code, body["errcode"]), (400, "M_INVALID_PARAM"))
        yield self.ok(
            "PUT", f"directory/list/room/{q(public)}", {"visibility": "private"}, token=self.at
        )
        listed = yield self.ok("GET", "publicRooms")
        self.assertEqual([e["room_id"] for e in listed["chunk"]], [private])

    @defer.inlineCallbacks
    def test_send_refusals_store_nothing(self) -> Any:
        room = yield self.create()
        before = yield self.room_snapshot(room)
        msg = {"msgtype": "m.text", "body": "x"}
        # Not in the room.
        code, answer = yield self.call(
            "PUT", f"rooms/{q(room)}/send/m.room.message/1", msg, token=self.bt
        )
        self.assertEqual((code, answer["errcode"]), (403, "M_FORBIDDEN"))
        # Unknown room.
        code, answer = yield self.call(
            "PUT", f"rooms/{q('!nope:' + SERVER)}/send/m.room.message/1", msg, token=self.at
        )
        self.assertEqual((code, answer["errcode"]), (404, "M_NOT_FOUND"))
        code, answer = yield self.call(
            "PUT", "rooms/nope/send/m.room.message/1", msg, token=self.at
        )
        self.assertEqual((code, answer["errcode"]), (400, "M_INVALID_PARAM"))
        # Bad JSON.
        for raw, errcode in [(b"{", "M_NOT_JSON"), (b"[]", "M_BAD_JSON"), (b"NaN", "M_BAD_JSON")]:
            code, answer = yield self.call(
                "PUT", f"rooms/{q(room)}/send/m.room.message/2", raw=raw, token=self.at
            )
            self.assertEqual((code, answer["errcode"]), (400, errcode))
        self.assertEqual((yield self.room_snapshot(room)), before)
        self.assertIsNone((yield self.client_store.get_txn("x", "2")))

    @defer.inlineCallbacks
    def test_state_put_and_permissions(self) -> Any:
        room = yield self.create(preset="public_chat")
        put = yield self.ok(
            "PUT", f"rooms/{q(room)}/state/m.room.topic", {"topic": "new"}, token=self.at
        )
        self.assertTrue(put["event_id"].startswith("$"))
        topic = yield self.ok("GET", f"rooms/{q(room)}/state/m.room.topic", token=self.at)
        self.assertEqual(topic, {"topic": "new"})
        yield self.ok("PUT", f"rooms/{q(room)}/state/org.example/key", {"a": 1}, token=self.at)
        got = yield self.ok("GET", f"rooms/{q(room)}/state/org.example/key", token=self.at)
        self.assertEqual(got, {"a": 1})
        yield self.ok("POST", f"join/{q(room)}", {}, token=self.bt)
        before = yield self.room_snapshot(room)
        # Bob has power 0: no power levels, no topic in a public_chat room.
        code, answer = yield self.call(
            "PUT",
            f"rooms/{q(room)}/state/m.room.power_levels",
            {"users": {self.bob: 100}},
            token=self.bt,
        )
        self.assertEqual((code, answer["errcode"]), (403, "M_FORBIDDEN"))
        code, answer = yield self.call(
            "PUT", f"rooms/{q(room)}/state/m.room.name", [1], token=self.at
        )
        self.assertEqual((code, answer["errcode"]), (400, "M_BAD_JSON"))
        self.assertEqual((yield self.room_snapshot(room)), before)
        code, answer = yield self.call("GET", f"rooms/{q(room)}/state", token="bad")
        self.assertEqual(code, 401)

    @defer.inlineCallbacks
    def test_memberships(self) -> Any:
        room = yield self.create(preset="private_chat")
        # Bob cannot join an invite-only room uninvited.
        before = yield self.room_snapshot(room)
        code, answer = yield self.call("POST", f"join/{q(room)}", {}, token=self.bt)
        self.assertEqual((code, answer["errcode"]), (403, "M_FORBIDDEN"))
        self.assertEqual((yield self.room_snapshot(room)), before)
        # Bob cannot invite to a room he is not in.
        code, answer = yield self.call(
            "POST", f"rooms/{q(room)}/invite", {"user_id": self.bob}, token=self.bt
        )
        self.assertEqual((code, answer["errcode"]), (403, "M_FORBIDDEN"))
        code, answer = yield self.call(
            "POST", f"rooms/{q(room)}/invite", {"user_id": "bob"}, token=self.at
        )
        self.assertEqual((code, answer["errcode"]), (400, "M_INVALID_PARAM"))
        code, answer = yield self.call("POST", f"rooms/{q(room)}/invite", {}, token=self.at)
        self.assertEqual((code, answer["errcode"]), (400, "M_MISSING_PARAM"))
        self.assertEqual((yield self.room_snapshot(room)), before)
        yield self.ok("POST", f"rooms/{q(room)}/invite", {"user_id": self.bob}, token=self.at)
        yield self.ok("POST", f"rooms/{q(room)}/join", {}, token=self.bt)
        joined = yield self.ok("GET", f"rooms/{q(room)}/joined_members", token=self.at)
        self.assertEqual(set(joined["joined"]), {self.alice, self.bob})
        self.assertEqual(
            (yield self.ok("GET", "joined_rooms", token=self.bt))["joined_rooms"], [room]
        )
        # Bob (power 0) may not kick Alice.
        before = yield self.room_snapshot(room)
        code, answer = yield self.call(
            "POST", f"rooms/{q(room)}/kick", {"user_id": self.alice}, token=self.bt
        )
        self.assertEqual((code, answer["errcode"]), (403, "M_FORBIDDEN"))
        self.assertEqual((yield self.room_snapshot(room)), before)
        yield self.ok(
            "POST", f"rooms/{q(room)}/kick", {"user_id": self.bob, "reason": "r"}, token=self.at
        )
        self.assertEqual((yield self.ok("GET", "joined_rooms", token=self.bt))["joined_rooms"], [])
        code, _ = yield self.call("GET", f"rooms/{q(room)}/state", token=self.bt)
        self.assertEqual(code, 403)
        yield self.ok("POST", f"rooms/{q(room)}/ban", {"user_id": self.bob}, token=self.at)
        members = yield self.ok("GET", f"rooms/{q(room)}/members?membership=ban", token=self.at)
        self.assertEqual([e["state_key"] for e in members["chunk"]], [self.bob])
        yield self.ok("POST", f"rooms/{q(room)}/unban", {"user_id": self.bob}, token=self.at)
        yield self.ok("POST", f"rooms/{q(room)}/invite", {"user_id": self.bob}, token=self.at)
        yield self.ok("POST", f"join/{q(room)}", {}, token=self.bt)
        yield self.ok("POST", f"rooms/{q(room)}/leave", {}, token=self.bt)
        code, answer = yield self.call("POST", f"rooms/{q(room)}/leave", {}, token=self.bt)
        self.assertEqual((code, answer["errcode"]), (403, "M_FORBIDDEN"))
        code, answer = yield self.call(
            "POST", f"rooms/{q('!nope:' + SERVER)}/leave", {}, token=self.bt
        )
        self.assertEqual((code, answer["errcode"]), (404, "M_NOT_FOUND"))

    @defer.inlineCallbacks
    def test_local_knock(self) -> Any:
        room = yield self.create(
            room_version="10",
            initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
        )
        yield self.ok("POST", f"knock/{q(room)}", {"reason": "hi"}, token=self.bt)
        members = yield self.ok("GET", f"rooms/{q(room)}/members", token=self.at)
        got = {e["state_key"]: e["content"]["membership"] for e in members["chunk"]}
        self.assertEqual(got[self.bob], "knock")
        sync = yield self.ok("GET", "sync", token=self.bt)
        self.assertIn(room, sync["rooms"]["knock"])

    @defer.inlineCallbacks
    def test_aliases(self) -> Any:
        room = yield self.create(room_alias_name="lobby", preset="public_chat")
        alias = f"#lobby:{SERVER}"
        got = yield self.ok("GET", f"directory/room/{q(alias)}")
        self.assertEqual(got["room_id"], room)
        self.assertIn(SERVER, got["servers"])
        canonical = yield self.ok(
            "GET", f"rooms/{q(room)}/state/m.room.canonical_alias", token=self.at
        )
        self.assertEqual(canonical["alias"], alias)
        code, answer = yield self.call(
            "POST", "createRoom", {"room_alias_name": "lobby"}, token=self.at
        )
        self.assertEqual((code, answer["errcode"]), (400, "M_ROOM_IN_USE"))
        other = f"#other:{SERVER}"
        yield self.ok("PUT", f"directory/room/{q(other)}", {"room_id": room}, token=self.at)
        code, answer = yield self.call(
            "PUT", f"directory/room/{q(other)}", {"room_id": room}, token=self.at
        )
        self.assertEqual((code, answer["errcode"]), (409, "M_UNKNOWN"))
        for path_alias, body, errcode in [
            ("#x:elsewhere.example", {"room_id": room}, "M_INVALID_PARAM"),
            ("nope", {"room_id": room}, "M_INVALID_PARAM"),
            (f"#y:{SERVER}", {}, "M_MISSING_PARAM"),
        ]:
            code, answer = yield self.call(
                "PUT", f"directory/room/{q(path_alias)}", body, token=self.at
            )
            self.assertEqual((code, answer["errcode"]), (400, errcode), path_alias)
        # Bob is not in the room: he may neither alias it nor delete Alice's alias.
        code, answer = yield self.call(
            "PUT", f"directory/room/{q('#z:' + SERVER)}", {"room_id": room}, token=self.bt
        )
        self.assertEqual(code, 403)
        code, answer = yield self.call("DELETE", f"directory/room/{q(other)}", token=self.bt)
        self.assertEqual((code, answer["errcode"]), (403, "M_FORBIDDEN"))
        self.assertIsNotNone((yield self.client_store.get_alias(other)))
        # Join by alias.
        yield self.ok("POST", f"join/{q(alias)}", {}, token=self.bt)
        yield self.ok("DELETE", f"directory/room/{q(other)}", token=self.at)
        code, answer = yield self.call("GET", f"directory/room/{q(other)}")
        self.assertEqual((code, answer["errcode"]), (404, "M_NOT_FOUND"))
        code, answer = yield self.call("DELETE", f"directory/room/{q(other)}", token=self.at)
        self.assertEqual((code, answer["errcode"]), (404, "M_NOT_FOUND"))
        for alias_name in ("#z:" + SERVER, "#y:" + SERVER):
            self.assertIsNone((yield self.client_store.get_alias(alias_name)))
        # The federation side answers from the same table.
        answer = yield self.fed.hooks.query_directory(alias)
        self.assertEqual(answer[0], room)
