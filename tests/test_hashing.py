"""fedlib.events.hashing: content hashes, reference hashes, event and room IDs."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given
from twisted.trial import unittest
from unpaddedbase64 import encode_base64

from fedlib.canonical import encode_canonical_json
from fedlib.errors import BadJsonError, UnsupportedRoomVersionError
from fedlib.events import hashing
from tests.strategies import events, room_versions

# The spec appendix's minimal event and its content hash ("Event Signing").
SPEC_EVENT: dict[str, Any] = {
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "signatures": {},
    "hashes": {},
    "type": "X",
    "content": {},
    "prev_events": [],
    "auth_events": [],
    "depth": 3,
    "unsigned": {"age_ts": 1000000},
}
SPEC_HASH = "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"


class ContentHashTests(unittest.TestCase):
    def test_spec_vector(self) -> None:
        self.assertEqual(hashing.compute_content_hash(SPEC_EVENT), SPEC_HASH)

    def test_definition(self) -> None:
        event = dict(SPEC_EVENT, content={"body": "x"})
        stripped = {k: v for k, v in event.items() if k not in ("unsigned", "signatures", "hashes")}
        self.assertEqual(
            hashing.compute_content_hash(event),
            encode_base64(hashlib.sha256(encode_canonical_json(stripped)).digest()),
        )

    def test_check(self) -> None:
        event = dict(SPEC_EVENT, hashes={"sha256": SPEC_HASH})
        self.assertTrue(hashing.check_content_hash(event))
        # Padded and URL-safe spellings of the same digest are accepted.
        self.assertTrue(hashing.check_content_hash(dict(event, hashes={"sha256": SPEC_HASH + "="})))
        urlsafe = encode_base64(hashing.content_hash_bytes(event), urlsafe=True)
        self.assertTrue(hashing.check_content_hash(dict(event, hashes={"sha256": urlsafe})))
        # Changes outside unsigned/signatures/hashes are caught.
        self.assertFalse(hashing.check_content_hash(dict(event, depth=4)))
        self.assertTrue(hashing.check_content_hash(dict(event, unsigned={"age": 9})))

    def test_check_with_content_json(self) -> None:
        # The canonical JSON the format check encoded gives the same answers.
        from fedlib.canonical import encode_canonical_json

        def content_json(e: dict[str, Any]) -> bytes:
            return encode_canonical_json(
                {k: v for k, v in e.items() if k not in ("hashes", "signatures", "unsigned")}
            )

        event = dict(SPEC_EVENT, hashes={"sha256": SPEC_HASH})
        for candidate in (
            event,
            dict(event, hashes={"sha256": SPEC_HASH + "="}),
            dict(event, depth=4),
            dict(event, unsigned={"age": 9}),
            dict(event, hashes={"sha256": 5}),
            dict(event, hashes=None),
        ):
            self.assertEqual(
                hashing.check_content_hash(candidate, content_json(candidate)),
                hashing.check_content_hash(candidate),
            )

    def test_check_malformed(self) -> None:
        for hashes in (None, [], {}, {"sha256": 5}, {"sha256": "!!!"}, {"sha256": "a"}, "x"):
            self.assertFalse(hashing.check_content_hash(dict(SPEC_EVENT, hashes=hashes)))
        event = dict(SPEC_EVENT)
        del event["hashes"]
        self.assertFalse(hashing.check_content_hash(event))


class EventIdTests(unittest.TestCase):
    def test_v1_v2_use_the_field(self) -> None:
        for version in ("1", "2"):
            self.assertEqual(
                hashing.compute_event_id(version, dict(SPEC_EVENT, event_id="$e:domain")),
                "$e:domain",
            )
            self.assertRaises(BadJsonError, hashing.compute_event_id, version, SPEC_EVENT)

    def test_v3_standard_v4_urlsafe(self) -> None:
        # Find an event whose hash encodes differently in the two alphabets.
        for depth in range(100):
            event = dict(SPEC_EVENT, depth=depth)
            digest = hashing.compute_reference_hash("3", event)
            std = encode_base64(digest)
            if "+" in std or "/" in std:
                break
        self.assertEqual(hashing.compute_event_id("3", event), "$" + std)
        urlsafe = "$" + encode_base64(digest, urlsafe=True)
        for version in ("4", "10"):
            self.assertEqual(hashing.compute_event_id(version, event), urlsafe)
        # v11 redaction drops "origin", so the hash itself differs.
        for version in ("11", "12"):
            digest = hashing.compute_reference_hash(version, event)
            self.assertEqual(
                hashing.compute_event_id(version, event), "$" + encode_base64(digest, urlsafe=True)
            )

    def test_reference_hash_ignores_signatures_unsigned_and_redactable(self) -> None:
        base = hashing.compute_reference_hash("10", SPEC_EVENT)
        for changed in (
            dict(SPEC_EVENT, signatures={"x": {"ed25519:1": "y"}}),
            dict(SPEC_EVENT, unsigned={"age": 5}),
            dict(SPEC_EVENT, content={"body": "x"}),
            dict(SPEC_EVENT, junk=1),
        ):
            self.assertEqual(hashing.compute_reference_hash("10", changed), base)
        self.assertNotEqual(
            hashing.compute_reference_hash("10", dict(SPEC_EVENT, hashes={"sha256": "x"})), base
        )

    def test_unknown_room_version(self) -> None:
        self.assertRaises(UnsupportedRoomVersionError, hashing.compute_event_id, "13", SPEC_EVENT)
        self.assertRaises(UnsupportedRoomVersionError, hashing.compute_event_id, "org.x", {})

    def test_room_id(self) -> None:
        create = dict(SPEC_EVENT, type="m.room.create", state_key="", content={})
        del create["room_id"]
        room_id = hashing.compute_room_id(create)
        self.assertEqual(room_id, "!" + hashing.compute_event_id("12", create)[1:])
        self.assertRaises(ValueError, hashing.compute_room_id, create, "11")

    @given(room_versions, events())
    def test_event_id_is_stable_and_shaped(self, version: str, event: dict[str, Any]) -> None:
        event["event_id"] = "$e:example.org"
        event_id = hashing.compute_event_id(version, event)
        self.assertEqual(hashing.compute_event_id(version, dict(event)), event_id)
        self.assertTrue(event_id.startswith("$"))
        if int(version) >= 3:
            self.assertEqual(len(event_id), 44)
