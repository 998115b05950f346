"""fedlib.rooms.builder: the events of a new room and of single local events."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from fedlib.auth.rules import check_auth, check_auth_events_list
from fedlib.crypto.keys import generate_signing_key, get_verify_key
from fedlib.crypto.signing import verify_event_signatures
from fedlib.errors import AuthError, BadJsonError
from fedlib.events.event import Event
from fedlib.events.hashing import check_content_hash, compute_event_id
from fedlib.rooms.builder import (
    Preset,
    StateTemplate,
    authorise,
    build_event,
    build_room,
    room_creation_templates,
)

SERVER = "fed.test"
ALICE = "@alice:fed.test"
BOB = "@bob:other.test"
KEY = generate_signing_key("b1")


def _room(version: str, **kw: Any) -> Any:
    templates = room_creation_templates(version, ALICE, **kw)
    return build_room(
        version,
        ALICE,
        templates,
        server_name=SERVER,
        signing_key=KEY,
        origin_server_ts=1_700_000_000_000,
        room_id=None if version == "12" else "!abc:fed.test",
    )


class BuildRoomTests(unittest.TestCase):
    def _check_room(self, version: str, room: Any) -> None:
        by_id = {e.event_id: e.event for e in room.events}
        verify = {SERVER: {"ed25519:b1": get_verify_key(KEY)}}
        for i, built in enumerate(room.events):
            ev = dict(built.event)
            self.assertEqual(compute_event_id(version, ev), built.event_id)
            self.assertTrue(check_content_hash(ev))
            verify_event_signatures(version, ev, verify)
            self.assertEqual(ev["depth"], i + 1)
            wrapped = Event.from_pdu(version, ev)
            self.assertEqual(wrapped.room_id, room.room_id)
            self.assertEqual(wrapped.prev_event_ids(), [room.events[i - 1].event_id] if i else [])
            auth = [by_id[a] for a in wrapped.auth_event_ids()]
            create = room.events[0].event
            found = check_auth_events_list(version, ev, auth, create_event=create)
            check_auth(version, ev, found)

    def test_versions(self) -> None:
        for version in ["1", "2", "3", "6", "10", "11", "12"]:
            room = _room(version, name="N", topic="T")
            self._check_room(version, room)
            types = [e.event["type"] for e in room.events]
            self.assertEqual(
                types,
                [
                    "m.room.create",
                    "m.room.member",
                    "m.room.power_levels",
                    "m.room.join_rules",
                    "m.room.history_visibility",
                    "m.room.guest_access",
                    "m.room.name",
                    "m.room.topic",
                ],
            )
            create = room.events[0].event
            self.assertEqual(create["content"]["room_version"], version)
            self.assertEqual("creator" in create["content"], int(version) < 11)

    def test_v12_room_id_is_create_hash(self) -> None:
        room = _room("12")
        create = room.events[0]
        self.assertNotIn("room_id", create.event)
        self.assertEqual(room.room_id, "!" + create.event_id[1:])
        pl = room.events[2].event["content"]
        self.assertNotIn(ALICE, pl["users"])

    def test_v12_additional_creators(self) -> None:
        room = _room("12", additional_creators=[BOB])
        self.assertEqual(room.events[0].event["content"]["additional_creators"], [BOB])
        self.assertRaises(BadJsonError, _room, "11", additional_creators=[BOB])

    def test_trusted_private_chat(self) -> None:
        room = _room("11", preset=Preset.TRUSTED_PRIVATE_CHAT, invite=[BOB])
        self.assertEqual(room.events[2].event["content"]["users"][BOB], 100)
        room12 = _room("12", preset=Preset.TRUSTED_PRIVATE_CHAT, invite=[BOB])
        self.assertEqual(room12.events[0].event["content"]["additional_creators"], [BOB])

    def test_public_preset(self) -> None:
        room = _room("10", preset=Preset.PUBLIC_CHAT)
        rules = [e.event for e in room.events if e.event["type"] == "m.room.join_rules"]
        self.assertEqual(rules[0]["content"]["join_rule"], "public")
        self.assertNotIn("m.room.guest_access", [e.event["type"] for e in room.events])

    def test_initial_state_and_override(self) -> None:
        room = _room(
            "10",
            initial_state=[StateTemplate("org.example", "k", {"a": 1})],
            power_level_content_override={"state_default": 0},
        )
        self.assertIn(("org.example", "k"), room.state)
        self.assertEqual(room.events[2].event["content"]["state_default"], 0)

    def test_invalid_creation_is_refused(self) -> None:
        # v12 forbids listing a creator in the power levels' users.
        self.assertRaises(
            AuthError, _room, "12", power_level_content_override={"users": {ALICE: 100}}
        )
        # Initial state the creator lacks the power for.
        self.assertRaises(
            AuthError,
            _room,
            "10",
            power_level_content_override={"users": {ALICE: 10}},
            initial_state=[StateTemplate("m.room.topic", "", {"topic": "x"})],
        )


class BuildEventTests(unittest.TestCase):
    def test_message_authorised_and_refused(self) -> None:
        for version in ["2", "10", "12"]:
            room = _room(version)
            events = {e.event_id: e.event for e in room.events}
            state = room.state
            last = room.events[-1]
            stub = {"type": "m.room.message", "sender": ALICE, "content": {}}
            from fedlib.auth.rules import select_auth_events

            msg = build_event(
                version,
                room_id=room.room_id,
                sender=ALICE,
                event_type="m.room.message",
                content={"body": "hi", "msgtype": "m.text"},
                prev_event_ids=[last.event_id],
                auth_event_ids=select_auth_events(version, stub, state),
                depth=last.event["depth"] + 1,
                origin_server_ts=1,
                server_name=SERVER,
                signing_key=KEY,
                referenced_events=events,
            )
            authorise(version, msg.event, state, events)
            # Bob never joined: the same message from him is refused.
            forged = dict(msg.event, sender=BOB)
            self.assertRaises(AuthError, authorise, version, forged, state, events)

    def test_redacts_placement(self) -> None:
        kw: dict[str, Any] = dict(
            room_id="!r:fed.test",
            sender=ALICE,
            event_type="m.room.redaction",
            content={},
            prev_event_ids=[],
            auth_event_ids=[],
            depth=1,
            origin_server_ts=1,
            server_name=SERVER,
            signing_key=KEY,
            redacts="$x",
        )
        self.assertEqual(build_event("11", **kw).event["content"]["redacts"], "$x")
        self.assertEqual(build_event("10", **kw).event["redacts"], "$x")

    def test_v12_create_needs_no_room_id_others_do(self) -> None:
        self.assertRaises(
            ValueError,
            build_event,
            "12",
            room_id=None,
            sender=ALICE,
            event_type="m.room.message",
            content={},
            prev_event_ids=[],
            auth_event_ids=[],
            depth=1,
            origin_server_ts=1,
            server_name=SERVER,
            signing_key=KEY,
        )
