"""make_join/send_join, knocks, leaves and invites through the Resource tree."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.trial import unittest

from fedlib.crypto.keys import get_verify_key, key_id
from fedlib.crypto.signing import verify_event_signatures
from fedlib.events.hashing import compute_event_id
from fedlib.storage.interface import EventStatus, PersistItem, StateRef, StrippedKind
from tests.server_helpers import OUR_NAME, Harness, Remote, RoomBuilder

ALICE = "@alice:us.test"
BOB = "@bob:remote.test"
CAROL = "@carol:remote.test"
V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"


class MembershipBase(unittest.TestCase):
    room_version = "10"
    join_rule = "public"

    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.third = Remote("third.test")
        self.h = Harness(self.remote, self.third)
        self.rb = self.make_room(self.join_rule)
        self.room = self.rb.room_id

    def make_room(self, join_rule: str, **kw: Any) -> RoomBuilder:
        rb = RoomBuilder(
            self.room_version,
            {OUR_NAME: self.h.us, "remote.test": self.remote, "third.test": self.third},
        )
        rb.create_room(ALICE, join_rule=join_rule, extra_members=[BOB, "@t:third.test"], **kw)
        self.successResultOf(rb.persist_all(self.h.store))
        return rb

    def make(self, kind: str, user: str, ver: str = "&ver=10", room: str | None = None) -> Any:
        return self.h.request(
            "GET", f"{V1}/make_{kind}/{room or self.room}/{quote(user)}?{ver.lstrip('&')}"
        )

    def signed_from_template(
        self, template: dict[str, Any], signer: Remote | None = None
    ) -> tuple[str, dict[str, Any]]:
        ev = (signer or self.remote).sign_event(self.room_version, template)
        return compute_event_id(self.room_version, ev), ev

    def put(self, path: str, body: Any, **kw: Any) -> Any:
        return self.h.request("PUT", path, body, **kw)


class JoinTests(MembershipBase):
    def test_make_join(self) -> None:
        r = self.make("join", CAROL)
        self.assertEqual(r.code, 200)
        self.assertEqual(r.json["room_version"], "10")
        ev = r.json["event"]
        self.assertEqual(
            (ev["type"], ev["state_key"], ev["content"]),
            ("m.room.member", CAROL, {"membership": "join"}),
        )
        self.assertEqual(ev["prev_events"], self.rb.head)

    def test_make_join_errors(self) -> None:
        r = self.make("join", CAROL, ver="ver=1&ver=2")
        self.assertEqual(
            (r.code, r.errcode, r.json.get("room_version")),
            (400, "M_INCOMPATIBLE_ROOM_VERSION", "10"),
        )
        r = self.make("join", CAROL, ver="")
        self.assertEqual(r.errcode, "M_INCOMPATIBLE_ROOM_VERSION")
        r = self.make("join", "@dave:third.test")
        self.assertEqual((r.code, r.errcode), (403, "M_FORBIDDEN"))
        r = self.make("join", CAROL, room="!unknown:us.test")
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))

    def test_make_refuses_overlong_user_id(self) -> None:
        # appendices.md, "User Identifiers": at most 255 bytes.
        user = "@" + "u" * 250 + ":remote.test"
        for kind, ver in (("join", "&ver=10"), ("knock", "&ver=10"), ("leave", "")):
            r = self.make(kind, user, ver=ver)
            self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"), kind)

    def test_make_join_invite_only(self) -> None:
        rb = self.make_room("invite")
        r = self.make("join", CAROL, room=rb.room_id)
        self.assertEqual((r.code, r.errcode), (403, "M_FORBIDDEN"))

    def _join(self, path_version: str = V2, query: str = "") -> tuple[str, Any]:
        template = self.make("join", CAROL).json["event"]
        eid, ev = self.signed_from_template(template)
        return eid, self.put(f"{path_version}/send_join/{self.room}/{eid}{query}", ev)

    def test_send_join_v2(self) -> None:
        eid, r = self._join()
        self.assertEqual(r.code, 200)
        self.assertEqual(
            {e["type"] for e in r.json["state"]} >= {"m.room.create", "m.room.member"}, True
        )
        state_ids = {compute_event_id("10", e) for e in r.json["state"]}
        self.assertEqual(state_ids, set(self.rb.state.values()))
        self.assertFalse(r.json["members_omitted"])
        self.assertTrue(r.json["auth_chain"])
        stored = self.successResultOf(self.h.store.get_events([eid]))[eid]
        self.assertIs(stored.status, EventStatus.ACCEPTED)
        current = self.successResultOf(self.h.store.get_current_state(self.room))
        self.assertEqual(current[("m.room.member", CAROL)], eid)
        # Sent out to the other server in the room, not back to the joiner.
        self.assertEqual(
            self.successResultOf(self.h.store.get_destinations_with_pending()), {"third.test"}
        )

    def test_send_join_v1(self) -> None:
        _eid, r = self._join(V1)
        self.assertEqual(r.code, 200)
        self.assertEqual(r.json[0], 200)
        self.assertIn("state", r.json[1])

    def test_send_join_omit_members(self) -> None:
        _eid, r = self._join(V2, "?omit_members=true")
        self.assertEqual(r.code, 200)
        self.assertTrue(r.json["members_omitted"])
        self.assertEqual(r.json["servers_in_room"], ["remote.test", "third.test", "us.test"])
        members = [e for e in r.json["state"] if e["type"] == "m.room.member"]
        self.assertLessEqual(len(members), 5)
        state_ids = {compute_event_id("10", e) for e in r.json["state"]}
        chain_ids = {compute_event_id("10", e) for e in r.json["auth_chain"]}
        self.assertFalse(state_ids & chain_ids)

    def test_send_join_rejections_store_nothing(self) -> None:
        template = self.make("join", CAROL).json["event"]
        eid, ev = self.signed_from_template(template)
        before = self.h.snapshot()
        cases = [
            (f"{V2}/send_join/{self.room}/$wrong", ev, 400),
            (f"{V2}/send_join/{self.room}/{eid}", {**ev, "content": {"membership": "leave"}}, 400),
            (f"{V2}/send_join/{self.room}/{eid}", dict(ev, signatures={}), 400),
            (f"{V2}/send_join/!other:us.test/{eid}", ev, 404),
        ]
        for path, body, code in cases:
            r = self.put(path, body)
            self.assertEqual(r.code, code, (path, r.json))
        # Sender of another server than the requester (joins-v2.yaml: M_INVALID_PARAM).
        r = self.put(f"{V2}/send_join/{self.room}/{eid}", ev, origin=self.third)
        self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"))
        self.assertEqual(self.h.snapshot(), before)

    def test_send_join_banned_user_rejected(self) -> None:
        template = self.make("join", CAROL).json["event"]
        ban = self.rb.add("m.room.member", ALICE, {"membership": "ban"}, CAROL)
        self.successResultOf(
            self.h.store.persist_events(
                self.room,
                [
                    PersistItem(
                        event=self.rb.events[ban],
                        event_id=ban,
                        state_before=StateRef(self.rb.events[ban]["prev_events"][0]),
                    )
                ],
            )
        )
        template["prev_events"] = [ban]
        template["auth_events"] = [
            self.rb.state[k]
            for k in (
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.join_rules", ""),
                ("m.room.member", CAROL),
            )
        ]
        eid, ev = self.signed_from_template(template)
        r = self.put(f"{V2}/send_join/{self.room}/{eid}", ev)
        self.assertEqual((r.code, r.errcode), (403, "M_FORBIDDEN"))
        current = self.successResultOf(self.h.store.get_current_state(self.room))
        self.assertEqual(current[("m.room.member", CAROL)], ban)


class RestrictedJoinTests(MembershipBase):
    def setUp(self) -> None:
        super().setUp()
        self.space = self.make_room("public")
        self.restricted = RoomBuilder("10", {OUR_NAME: self.h.us, "remote.test": self.remote})
        self.restricted.create_room(ALICE, join_rule="public")
        self.restricted.add(
            "m.room.join_rules",
            ALICE,
            {
                "join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": self.space.room_id}],
            },
            "",
        )
        self.successResultOf(self.restricted.persist_all(self.h.store))

    def test_restricted_join_authorised_and_signed(self) -> None:
        r = self.make("join", BOB, room=self.restricted.room_id)
        self.assertEqual(r.code, 200, r.json)
        template = r.json["event"]
        self.assertEqual(template["content"]["join_authorised_via_users_server"], ALICE)
        eid, ev = self.signed_from_template(template)
        r = self.put(f"{V2}/send_join/{self.restricted.room_id}/{eid}", ev)
        self.assertEqual(r.code, 200, r.json)
        returned = r.json["event"]
        verify_event_signatures(
            "10",
            returned,
            {
                OUR_NAME: {key_id(self.h.us.key): get_verify_key(self.h.us.key)},
                "remote.test": {key_id(self.remote.key): get_verify_key(self.remote.key)},
            },
        )

    def test_restricted_join_tampered_content_not_signed(self) -> None:
        template = self.make("join", BOB, room=self.restricted.room_id).json["event"]
        eid, ev = self.signed_from_template(template)
        tampered = dict(ev, content={**ev["content"], "displayname": "evil"})
        before = self.h.snapshot()
        r = self.put(f"{V2}/send_join/{self.restricted.room_id}/{eid}", tampered)
        self.assertEqual((r.code, r.errcode), (400, "M_BAD_JSON"))
        self.assertEqual(self.h.snapshot(), before)

    def test_restricted_join_user_not_allowed(self) -> None:
        r = self.make("join", CAROL, room=self.restricted.room_id)
        self.assertEqual((r.code, r.errcode), (403, "M_FORBIDDEN"))

    def test_restricted_join_unknown_allow_room(self) -> None:
        rb = RoomBuilder("10", {OUR_NAME: self.h.us})
        rb.create_room(ALICE)
        rb.add(
            "m.room.join_rules",
            ALICE,
            {
                "join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": "!elsewhere:x.test"}],
            },
            "",
        )
        self.successResultOf(rb.persist_all(self.h.store))
        r = self.make("join", CAROL, room=rb.room_id)
        self.assertEqual((r.code, r.errcode), (400, "M_UNABLE_TO_AUTHORISE_JOIN"))

    def test_restricted_join_no_local_authoriser(self) -> None:
        rb = RoomBuilder("10", {OUR_NAME: self.h.us, "remote.test": self.remote})
        rb.create_room(BOB)
        rb.add(
            "m.room.join_rules",
            BOB,
            {
                "join_rule": "restricted",
                "allow": [{"type": "m.room_membership", "room_id": self.space.room_id}],
            },
            "",
        )
        self.successResultOf(rb.persist_all(self.h.store))
        r = self.h.request(
            "GET", f"{V1}/make_join/{rb.room_id}/{quote('@t:third.test')}?ver=10", origin=self.third
        )
        self.assertEqual((r.code, r.errcode), (400, "M_UNABLE_TO_GRANT_JOIN"))


class KnockLeaveTests(MembershipBase):
    def test_knock(self) -> None:
        rb = self.make_room("knock")
        r = self.make("knock", CAROL, room=rb.room_id)
        self.assertEqual(r.code, 200, r.json)
        eid, ev = self.signed_from_template(r.json["event"])
        r = self.put(f"{V1}/send_knock/{rb.room_id}/{eid}", ev)
        self.assertEqual(r.code, 200, r.json)
        types = {e["type"] for e in r.json["knock_room_state"]}
        self.assertIn("m.room.create", types)
        self.assertIn("m.room.join_rules", types)
        # knocks.yaml (Matrix 1.16): full PDUs, formatted per the room version.
        for event in r.json["knock_room_state"]:
            for key in ("room_id", "depth", "auth_events", "prev_events", "hashes", "signatures"):
                self.assertIn(key, event)

    def test_knock_forbidden_by_join_rule(self) -> None:
        r = self.make("knock", CAROL)
        self.assertEqual((r.code, r.errcode), (403, "M_FORBIDDEN"))
        rb = self.make_room("knock")
        r = self.make("knock", CAROL, room=rb.room_id, ver="ver=1")
        self.assertEqual(r.errcode, "M_INCOMPATIBLE_ROOM_VERSION")

    def test_leave_v1_and_v2(self) -> None:
        r = self.make("leave", BOB, ver="")
        self.assertEqual(r.code, 200, r.json)
        eid, ev = self.signed_from_template(r.json["event"])
        r = self.put(f"{V2}/send_leave/{self.room}/{eid}", ev)
        self.assertEqual((r.code, r.json), (200, {}))
        current = self.successResultOf(self.h.store.get_current_state(self.room))
        self.assertEqual(current[("m.room.member", BOB)], eid)
        # v1 with the third server's user
        r = self.h.request(
            "GET", f"{V1}/make_leave/{self.room}/{quote('@t:third.test')}", origin=self.third
        )
        eid, ev = self.signed_from_template(r.json["event"], self.third)
        r = self.put(f"{V1}/send_leave/{self.room}/{eid}", ev, origin=self.third)
        self.assertEqual((r.code, r.json), (200, [200, {}]))

    def test_send_leave_wrong_membership(self) -> None:
        r = self.make("leave", BOB, ver="")
        eid, ev = self.signed_from_template(r.json["event"])
        before = self.h.snapshot()
        r = self.put(f"{V1}/send_knock/{self.room}/{eid}", ev)
        self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"))
        self.assertEqual(self.h.snapshot(), before)


class InviteTests(unittest.TestCase):
    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.h = Harness(self.remote)
        self.rb = RoomBuilder("10", {OUR_NAME: self.h.us, "remote.test": self.remote})
        self.rb.create_room(BOB)

    def invite(
        self, invitee: str = "@alice:us.test", version: str = "10"
    ) -> tuple[str, dict[str, Any]]:
        return self.rb.make("m.room.member", BOB, {"membership": "invite"}, invitee)

    def test_invite_v2(self) -> None:
        eid, ev = self.invite()
        body = {
            "room_version": "10",
            "event": ev,
            "invite_room_state": [
                {"type": "m.room.name", "state_key": "", "content": {"name": "x"}, "sender": BOB}
            ],
        }
        r = self.h.request("PUT", f"{V2}/invite/{self.rb.room_id}/{eid}", body)
        self.assertEqual(r.code, 200, r.json)
        signed = r.json["event"]
        self.assertIn(OUR_NAME, signed["signatures"])
        self.assertIn("remote.test", signed["signatures"])
        stored = self.successResultOf(
            self.h.store.get_stripped_room(StrippedKind.INVITE, self.rb.room_id, "@alice:us.test")
        )
        self.assertEqual(len(stored.stripped_state), 1)

    def test_invite_refused_and_invalid(self) -> None:
        eid, ev = self.invite()
        self.h.hooks.accept_invites = False
        before = self.h.snapshot()
        body = {"room_version": "10", "event": ev, "invite_room_state": []}
        r = self.h.request("PUT", f"{V2}/invite/{self.rb.room_id}/{eid}", body)
        self.assertEqual((r.code, r.errcode), (403, "M_FORBIDDEN"))
        r = self.h.request(
            "PUT", f"{V2}/invite/{self.rb.room_id}/{eid}", {**body, "room_version": "99"}
        )
        self.assertEqual((r.code, r.errcode), (400, "M_INCOMPATIBLE_ROOM_VERSION"))
        eid2, ev2 = self.invite("@zed:elsewhere.test")
        r = self.h.request("PUT", f"{V2}/invite/{self.rb.room_id}/{eid2}", {**body, "event": ev2})
        self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"))
        r = self.h.request(
            "PUT",
            f"{V2}/invite/{self.rb.room_id}/{eid}",
            {**body, "event": dict(ev, signatures={})},
        )
        self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"))
        self.assertEqual(self.h.snapshot(), before)

    def test_invite_v1(self) -> None:
        rb = RoomBuilder("1", {OUR_NAME: self.h.us, "remote.test": self.remote})
        rb.create_room(BOB)
        eid, ev = rb.make("m.room.member", BOB, {"membership": "invite"}, "@alice:us.test")
        r = self.h.request("PUT", f"{V1}/invite/{rb.room_id}/{quote(eid)}", ev)
        self.assertEqual(r.code, 200, r.json)
        self.assertEqual(r.json[0], 200)
        self.assertIn(OUR_NAME, r.json[1]["event"]["signatures"])


class InviteV12Tests(unittest.TestCase):
    """invites-v2.yaml: in room version 12, ``invite_room_state`` is checked."""

    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.h = Harness(self.remote)
        self.rb = RoomBuilder("12", {OUR_NAME: self.h.us, "remote.test": self.remote})
        self.rb.create_room(BOB)
        self.create = self.rb.events[self.rb.state[("m.room.create", "")]]

    def put(self, invite_room_state: list[Any]) -> Any:
        eid, ev = self.rb.make("m.room.member", BOB, {"membership": "invite"}, "@alice:us.test")
        body = {"room_version": "12", "event": ev, "invite_room_state": invite_room_state}
        return self.h.request("PUT", f"{V2}/invite/{self.rb.room_id}/{eid}", body)

    def test_valid(self) -> None:
        r = self.put([self.create])
        self.assertEqual(r.code, 200, r.json)

    def test_invalid(self) -> None:
        other = RoomBuilder("12", {OUR_NAME: self.h.us, "remote.test": self.remote})
        other.create_room(BOB)
        other_create = other.events[other.state[("m.room.create", "")]]
        stripped = {k: self.create[k] for k in ("type", "state_key", "sender", "content")}
        cases = {
            "empty": [],
            "no create": [self.rb.events[self.rb.state[("m.room.member", BOB)]]],
            "another room's create": [other_create],
            "stripped create": [stripped],
            "bad signature": [dict(self.create, signatures={"remote.test": {"ed25519:r1": "A"}})],
            "float": [self.create, dict(stripped, depth=1.5)],
        }
        before = self.h.snapshot()
        for name, state in cases.items():
            r = self.put(state)
            self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"), name)
        self.assertEqual(self.h.snapshot(), before)


class JoinV12Tests(MembershipBase):
    room_version = "12"

    def test_make_and_send_join_v12(self) -> None:
        r = self.make("join", CAROL, ver="ver=12")
        self.assertEqual(r.code, 200, r.json)
        template = r.json["event"]
        create_id = self.rb.state[("m.room.create", "")]
        self.assertNotIn(create_id, template["auth_events"])
        eid, ev = self.signed_from_template(template)
        r = self.put(f"{V2}/send_join/{self.room}/{eid}?omit_members=true", ev)
        self.assertEqual(r.code, 200, r.json)
        self.assertTrue(r.json["members_omitted"])
        current = self.successResultOf(self.h.store.get_current_state(self.room))
        self.assertEqual(current[("m.room.member", CAROL)], eid)


class PartialStateTests(MembershipBase):
    def test_partial_state_room_refuses_membership_handshakes(self) -> None:
        self.successResultOf(self.h.store.set_partial_state(self.room, True))
        r = self.make("join", CAROL)
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))
        self.successResultOf(self.h.store.set_partial_state(self.room, False))
        template = self.make("join", CAROL).json["event"]
        eid, ev = self.signed_from_template(template)
        self.successResultOf(self.h.store.set_partial_state(self.room, True))
        before = self.h.snapshot()
        r = self.put(f"{V2}/send_join/{self.room}/{eid}", ev)
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))
        self.assertEqual(self.h.snapshot(), before)
