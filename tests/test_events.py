"""fedlib.events.event: the typed, immutable PDU wrapper."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial import unittest

from fedlib.errors import BadJsonError, UnsupportedRoomVersionError
from fedlib.events.event import Event
from fedlib.events.hashing import compute_event_id
from fedlib.events.room_versions import KNOWN_ROOM_VERSIONS


def _pdu(version: str, **extra: Any) -> dict[str, Any]:
    v1 = KNOWN_ROOM_VERSIONS[version].event_id_in_event
    pdu: dict[str, Any] = {
        "type": "m.room.member",
        "room_id": "!r:example.org",
        "sender": "@u:example.org",
        "state_key": "@u:example.org",
        "content": {"membership": "join"},
        "depth": 7,
        "origin_server_ts": 1234,
        "prev_events": [["$p:example.org", {"sha256": "h"}]] if v1 else ["$p"],
        "auth_events": (
            [["$a1:example.org", {"sha256": "h"}], ["$a2:example.org", {"sha256": "h"}]]
            if v1
            else ["$a1", "$a2"]
        ),
        "hashes": {"sha256": "h"},
        "signatures": {},
    }
    if v1:
        pdu["event_id"] = "$e:example.org"
    pdu.update(extra)
    return pdu


class EventTests(unittest.TestCase):
    def test_accessors_v1(self) -> None:
        event = Event.from_pdu("1", _pdu("1"))
        self.assertEqual(event.event_id, "$e:example.org")
        self.assertEqual(event.prev_event_ids(), ["$p:example.org"])
        self.assertEqual(event.auth_event_ids(), ["$a1:example.org", "$a2:example.org"])
        self.assertEqual(event.room_version.identifier, "1")

    def test_accessors_v3_plus(self) -> None:
        for version in [str(n) for n in range(3, 13)]:
            pdu = _pdu(version)
            event = Event.from_pdu(version, pdu)
            self.assertEqual(event.event_id, compute_event_id(version, pdu))
            self.assertEqual(event.prev_event_ids(), ["$p"])
            self.assertEqual(event.auth_event_ids(), ["$a1", "$a2"])
            self.assertEqual(event.room_id, "!r:example.org")
            self.assertEqual(event.type, "m.room.member")
            self.assertEqual(event.state_key, "@u:example.org")
            self.assertTrue(event.is_state())
            self.assertEqual(event.sender, "@u:example.org")
            self.assertEqual(event.content, {"membership": "join"})
            self.assertEqual(event.membership, "join")
            self.assertEqual(event.depth, 7)
            self.assertEqual(event.origin_server_ts, 1234)
            self.assertIsNone(event.redacts)

    def test_non_state(self) -> None:
        event = Event.from_pdu("10", _pdu("10", type="m.room.message", content={}))
        pdu = dict(event.pdu)
        del pdu["state_key"]
        event = Event.from_pdu("10", pdu)
        self.assertFalse(event.is_state())
        self.assertIsNone(event.state_key)
        self.assertIsNone(event.membership)
        # A state_key of "" is still state.
        self.assertTrue(Event.from_pdu("10", _pdu("10", state_key="")).is_state())

    def test_redacts_by_version(self) -> None:
        pdu = _pdu("10", type="m.room.redaction", content={"redacts": "$new"}, redacts="$old")
        del pdu["state_key"]
        for version in [str(n) for n in range(3, 11)]:
            self.assertEqual(Event.from_pdu(version, pdu).redacts, "$old")
        for version in ("11", "12"):
            self.assertEqual(Event.from_pdu(version, pdu).redacts, "$new")
        self.assertIsNone(Event.from_pdu("11", dict(pdu, content={})).redacts)
        self.assertIsNone(Event.from_pdu("10", dict(pdu, type="m.room.message")).redacts)
        self.assertIsNone(Event.from_pdu("10", dict(pdu, redacts=5)).redacts)

    def test_v12_create_room_id(self) -> None:
        pdu = _pdu("12", type="m.room.create", state_key="", content={})
        del pdu["room_id"]
        event = Event.from_pdu("12", pdu)
        self.assertEqual(event.room_id, "!" + event.event_id[1:])

    def test_immutable_and_equality(self) -> None:
        a = Event.from_pdu("10", _pdu("10"))
        b = Event.from_pdu("10", dict(_pdu("10"), unsigned={"age": 5}))
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertNotEqual(a, Event.from_pdu("10", _pdu("10", depth=8)))
        self.assertNotEqual(a, "x")
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, a, "event_id", "$x")
        self.assertIn(a.event_id, repr(a))

    def test_errors(self) -> None:
        self.assertRaises(UnsupportedRoomVersionError, Event.from_pdu, "99", _pdu("10"))
        pdu = _pdu("1")
        del pdu["event_id"]
        self.assertRaises(BadJsonError, Event.from_pdu, "1", pdu)

    def test_accepts_resolved_version(self) -> None:
        version = KNOWN_ROOM_VERSIONS["10"]
        self.assertIs(Event.from_pdu(version, _pdu("10")).room_version, version)
