"""fedlib.events.redaction: every room version's redaction algorithm."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from twisted.trial import unittest

from fedlib.events.hashing import compute_reference_hash
from fedlib.events.redaction import redact
from fedlib.events.room_versions import KNOWN_ROOM_VERSIONS
from tests.strategies import events, room_versions

ALL = list(KNOWN_ROOM_VERSIONS)


def _event(event_type: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": event_type,
        "room_id": "!r:example.org",
        "sender": "@a:example.org",
        "state_key": "",
        "content": content,
        "depth": 1,
        "origin_server_ts": 1,
        "prev_events": [],
        "auth_events": [],
        "hashes": {"sha256": "h"},
        "signatures": {"example.org": {"ed25519:1": "s"}},
        "unsigned": {"age": 1},
        **extra,
    }


def _kept(version: str, event_type: str, content: dict[str, Any]) -> dict[str, Any]:
    return redact(version, _event(event_type, content))["content"]  # type: ignore[no-any-return]


class TopLevelTests(unittest.TestCase):
    def test_top_level_keys(self) -> None:
        event = _event(
            "m.room.message",
            {"body": "x"},
            event_id="$e:example.org",
            origin="example.org",
            membership="join",
            prev_state=[],
            redacts="$x:example.org",
            junk=1,
        )
        common = {
            "type",
            "room_id",
            "sender",
            "state_key",
            "content",
            "depth",
            "origin_server_ts",
            "prev_events",
            "auth_events",
            "hashes",
            "signatures",
            "event_id",
        }
        for version in ALL:
            redacted = redact(version, event)
            expected = common | (
                set() if int(version) >= 11 else {"origin", "membership", "prev_state"}
            )
            self.assertEqual(set(redacted), expected, version)
            self.assertEqual(redacted["content"], {})

    def test_input_untouched(self) -> None:
        event = _event("m.room.member", {"membership": "join", "displayname": "A"})
        before = copy.deepcopy(event)
        for version in ALL:
            redact(version, event)
        self.assertEqual(event, before)

    def test_malformed_content(self) -> None:
        for content in (None, [], "x", 5):
            event = _event("m.room.member", {})
            event["content"] = content
            self.assertEqual(redact("10", event)["content"], {})
        del event["content"]
        self.assertEqual(redact("10", event)["content"], {})
        event = _event("m.room.member", {"membership": "join"})
        event["type"] = 5
        self.assertEqual(redact("10", event)["content"], {})


class ContentTests(unittest.TestCase):
    def test_member(self) -> None:
        content = {
            "membership": "join",
            "displayname": "A",
            "join_authorised_via_users_server": "@b:example.org",
            "third_party_invite": {"display_name": "x", "signed": {"token": "t"}},
        }
        for version in ALL:
            n = int(version)
            expected: dict[str, Any] = {"membership": "join"}
            if n >= 9:
                expected["join_authorised_via_users_server"] = "@b:example.org"
            if n >= 11:
                expected["third_party_invite"] = {"signed": {"token": "t"}}
            self.assertEqual(_kept(version, "m.room.member", content), expected, version)

    def test_member_third_party_invite_shapes(self) -> None:
        # As Synapse: an object without "signed" stays, emptied; a non-object goes.
        self.assertEqual(
            _kept("11", "m.room.member", {"membership": "invite", "third_party_invite": {"a": 1}}),
            {"membership": "invite", "third_party_invite": {}},
        )
        self.assertEqual(
            _kept("11", "m.room.member", {"membership": "invite", "third_party_invite": "x"}),
            {"membership": "invite"},
        )

    def test_create(self) -> None:
        content = {"creator": "@a:example.org", "room_version": "1", "additional_creators": []}
        for version in ALL:
            expected = content if int(version) >= 11 else {"creator": "@a:example.org"}
            self.assertEqual(_kept(version, "m.room.create", content), expected, version)

    def test_join_rules(self) -> None:
        content = {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}], "x": 1}
        for version in ALL:
            expected = dict(content)
            del expected["x"]
            if int(version) < 8:
                del expected["allow"]
            self.assertEqual(_kept(version, "m.room.join_rules", content), expected, version)

    def test_power_levels(self) -> None:
        kept = ["ban", "events", "events_default", "kick", "redact", "state_default", "users"]
        content = {k: 1 for k in [*kept, "users_default", "invite", "notifications", "x"]}
        for version in ALL:
            expected = {k: 1 for k in [*kept, "users_default"]}
            if int(version) >= 11:
                expected["invite"] = 1
            self.assertEqual(_kept(version, "m.room.power_levels", content), expected, version)

    def test_aliases(self) -> None:
        for version in ALL:
            expected = {"aliases": ["#a:b"]} if int(version) <= 5 else {}
            self.assertEqual(
                _kept(version, "m.room.aliases", {"aliases": ["#a:b"], "x": 1}), expected, version
            )

    def test_history_visibility(self) -> None:
        for version in ALL:
            self.assertEqual(
                _kept(
                    version, "m.room.history_visibility", {"history_visibility": "joined", "x": 1}
                ),
                {"history_visibility": "joined"},
            )

    def test_redaction(self) -> None:
        for version in ALL:
            expected = {"redacts": "$x"} if int(version) >= 11 else {}
            self.assertEqual(
                _kept(version, "m.room.redaction", {"redacts": "$x", "reason": "r"}), expected
            )


class PropertyTests(unittest.TestCase):
    @given(room_versions, events())
    def test_idempotent(self, version: str, event: dict[str, Any]) -> None:
        once = redact(version, event)
        self.assertEqual(redact(version, once), once)

    @given(room_versions, events())
    def test_reference_hash_survives_redaction(self, version: str, event: dict[str, Any]) -> None:
        self.assertEqual(
            compute_reference_hash(version, redact(version, event)),
            compute_reference_hash(version, event),
        )
