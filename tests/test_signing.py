"""fedlib.crypto.signing and fedlib.crypto.keys: spec vectors, round trips, tampering."""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from fedlib.crypto import keys, signing
from fedlib.errors import SignatureError
from fedlib.events.hashing import check_content_hash
from fedlib.events.room_versions import KNOWN_ROOM_VERSIONS
from tests.strategies import json_objects, json_values, room_versions

SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
# The spec's seed string sets unused trailing bits; the same 32 bytes re-encode as:
CANONICAL_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA0"
KEY = keys.decode_signing_key_base64("ed25519", "1", SEED)
VERIFY_KEY = keys.get_verify_key(KEY)
OTHER_KEY = keys.generate_signing_key("2")


class SpecVectorTests(unittest.TestCase):
    """Spec appendix "Cryptographic Test Vectors"."""

    def test_key(self) -> None:
        self.assertEqual(keys.key_id(KEY), "ed25519:1")
        self.assertEqual(keys.encode_signing_key_base64(KEY), CANONICAL_SEED)
        self.assertEqual(keys.key_id(VERIFY_KEY), "ed25519:1")

    def test_sign_empty_object(self) -> None:
        self.assertEqual(
            signing.sign_json({}, "domain", KEY),
            {
                "signatures": {
                    "domain": {
                        "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
                    }
                }
            },
        )

    def test_sign_json_with_data(self) -> None:
        self.assertEqual(
            signing.sign_json({"one": 1, "two": "Two"}, "domain", KEY),
            {
                "one": 1,
                "signatures": {
                    "domain": {
                        "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
                    }
                },
                "two": "Two",
            },
        )

    def test_sign_minimal_event(self) -> None:
        event = {
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
        self.assertEqual(
            signing.sign_event("1", event, "domain", KEY),
            {
                "auth_events": [],
                "content": {},
                "depth": 3,
                "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
                "origin": "domain",
                "origin_server_ts": 1000000,
                "prev_events": [],
                "room_id": "!x:domain",
                "sender": "@a:domain",
                "signatures": {
                    "domain": {
                        "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
                    }
                },
                "type": "X",
                "unsigned": {"age_ts": 1000000},
            },
        )

    def test_sign_redactable_event(self) -> None:
        event = {
            "content": {"body": "Here is the message content"},
            "event_id": "$0:domain",
            "origin": "domain",
            "origin_server_ts": 1000000,
            "type": "m.room.message",
            "room_id": "!r:domain",
            "sender": "@u:domain",
            "signatures": {},
            "unsigned": {"age_ts": 1000000},
        }
        expected = {
            "content": {"body": "Here is the message content"},
            "event_id": "$0:domain",
            "hashes": {"sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},
            "origin": "domain",
            "origin_server_ts": 1000000,
            "type": "m.room.message",
            "room_id": "!r:domain",
            "sender": "@u:domain",
            "signatures": {
                "domain": {
                    "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
                }
            },
            "unsigned": {"age_ts": 1000000},
        }
        signed = signing.sign_event("1", event, "domain", KEY)
        self.assertEqual(signed, expected)
        signing.verify_event_signatures("1", signed, {"domain": {"ed25519:1": VERIFY_KEY}})
        self.assertTrue(check_content_hash(signed))


class JsonSigningTests(unittest.TestCase):
    def test_keeps_existing_signatures_and_unsigned(self) -> None:
        once = signing.sign_json({"a": 1, "unsigned": {"x": 1}}, "one", KEY)
        twice = signing.sign_json(once, "two", OTHER_KEY)
        self.assertEqual(set(twice["signatures"]), {"one", "two"})
        self.assertEqual(twice["unsigned"], {"x": 1})
        signing.verify_json(twice, "one", VERIFY_KEY)
        signing.verify_json(twice, "two", keys.get_verify_key(OTHER_KEY))
        # unsigned is not covered.
        signing.verify_json(dict(twice, unsigned={"y": 2}), "one", VERIFY_KEY)

    def test_failures(self) -> None:
        signed = signing.sign_json({"a": 1}, "domain", KEY)
        cases: list[Any] = [
            {"a": 1},
            dict(signed, signatures=[]),
            dict(signed, signatures={"domain": "x"}),
            dict(signed, signatures={"other": signed["signatures"]["domain"]}),
            dict(signed, signatures={"domain": {"ed25519:1": 5}}),
            dict(signed, signatures={"domain": {"ed25519:1": "!!"}}),
            dict(signed, signatures={"domain": {"ed25519:1": "AAAA"}}),
            dict(signed, a=2),
        ]
        for obj in cases:
            self.assertRaises(SignatureError, signing.verify_json, obj, "domain", VERIFY_KEY)
        self.assertRaises(
            SignatureError, signing.verify_json, signed, "domain", keys.get_verify_key(OTHER_KEY)
        )

    @settings(max_examples=50)
    @given(json_objects, st.data())
    def test_round_trip_and_tampering(self, obj: dict[str, Any], data: st.DataObject) -> None:
        obj.pop("signatures", None)
        obj.pop("unsigned", None)
        signed = signing.sign_json(obj, "domain", KEY)
        signing.verify_json(signed, "domain", VERIFY_KEY)
        # Change, add or remove any one field: verification fails.
        tampered = copy.deepcopy(signed)
        if obj and data.draw(st.booleans()):
            key = data.draw(st.sampled_from(sorted(obj)))
            if data.draw(st.booleans()):
                del tampered[key]
            else:
                new = data.draw(json_values.filter(lambda v: v != obj[key]))
                tampered[key] = new
        else:
            key = data.draw(
                st.text(min_size=1).filter(lambda k: k not in signed and k != "unsigned")
            )
            tampered[key] = data.draw(json_values)
        self.assertRaises(SignatureError, signing.verify_json, tampered, "domain", VERIFY_KEY)


def _event(version: str, **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": "!r:example.org",
        "sender": "@u:example.org",
        "content": {"body": "hello"},
        "depth": 5,
        "origin_server_ts": 1,
        "prev_events": [],
        "auth_events": [],
    }
    if KNOWN_ROOM_VERSIONS[version].event_id_in_event:
        event["event_id"] = "$e:example.org"
    event.update(extra)
    return event


_KEYS = {"example.org": {"ed25519:1": VERIFY_KEY}}


class EventSigningTests(unittest.TestCase):
    def test_required_signers(self) -> None:
        v1, v3, v8 = (KNOWN_ROOM_VERSIONS[v] for v in ("1", "3", "8"))
        self.assertEqual(
            signing.required_signers(v1, _event("1", event_id="$e:other.org")),
            {"example.org", "other.org"},
        )
        self.assertEqual(signing.required_signers(v3, _event("3")), {"example.org"})
        join = _event(
            "8",
            type="m.room.member",
            state_key="@u:example.org",
            content={"membership": "join", "join_authorised_via_users_server": "@a:auth.org"},
        )
        self.assertEqual(signing.required_signers(v8, join), {"example.org", "auth.org"})
        self.assertEqual(signing.required_signers(v3, join), {"example.org"})
        for authoriser in (None, 5, "@nodomain"):
            malformed = dict(
                join, content=dict(join["content"], join_authorised_via_users_server=authoriser)
            )
            self.assertRaises(SignatureError, signing.required_signers, v8, malformed)
        invite = _event(
            "3",
            type="m.room.member",
            content={"membership": "invite", "third_party_invite": {"signed": {}}},
        )
        self.assertEqual(signing.required_signers(v3, invite), set())
        for sender in (None, 5, "nocolon", "@u:"):
            self.assertRaises(
                SignatureError, signing.required_signers, v3, _event("3", sender=sender)
            )

    def test_verify(self) -> None:
        for version in KNOWN_ROOM_VERSIONS:
            signed = signing.sign_event(version, _event(version), "example.org", KEY)
            signing.verify_event_signatures(version, signed, _KEYS)
            self.assertTrue(check_content_hash(signed))

    def test_unknown_keys_skipped_known_bad_fails(self) -> None:
        signed = signing.sign_event("10", _event("10"), "example.org", KEY)
        with_unknown = copy.deepcopy(signed)
        with_unknown["signatures"]["example.org"]["ed25519:unknown"] = "AAAA"
        signing.verify_event_signatures("10", with_unknown, _KEYS)
        # A second signature under a known key must verify too.
        keyring = {"example.org": {"ed25519:1": VERIFY_KEY, "ed25519:2": VERIFY_KEY}}
        with_bad = copy.deepcopy(signed)
        with_bad["signatures"]["example.org"]["ed25519:2"] = (
            signed["signatures"]["example.org"]["ed25519:1"][:-2] + "AA"
        )
        e = self.assertRaises(
            SignatureError, signing.verify_event_signatures, "10", with_bad, keyring
        )
        self.assertIn("example.org", e.msg)

    def test_failures(self) -> None:
        signed = signing.sign_event("10", _event("10"), "example.org", KEY)
        for keyring in ({}, {"example.org": {}}, {"example.org": {"ed25519:9": VERIFY_KEY}}):
            self.assertRaises(
                SignatureError, signing.verify_event_signatures, "10", signed, keyring
            )
        for signatures in (None, {}, {"example.org": {}}, {"example.org": "x"}):
            self.assertRaises(
                SignatureError,
                signing.verify_event_signatures,
                "10",
                dict(signed, signatures=signatures),
                _KEYS,
            )
        self.assertRaises(
            SignatureError,
            signing.verify_event_signatures,
            "10",
            signed,
            {"example.org": {"ed25519:1": keys.get_verify_key(OTHER_KEY)}},
        )

    @settings(max_examples=40)
    @given(room_versions, st.data())
    def test_any_single_field_tampering_fails_full_verification(
        self, version: str, data: st.DataObject
    ) -> None:
        signed = signing.sign_event(
            version, _event(version, state_key="", junk={"a": 1}), "example.org", KEY
        )
        key = data.draw(
            st.sampled_from(sorted(k for k in signed if k not in ("signatures", "unsigned")))
        )
        tampered = copy.deepcopy(signed)
        if data.draw(st.booleans()):
            del tampered[key]
        else:
            tampered[key] = data.draw(json_values.filter(lambda v: v != signed[key]))

        def full_verification() -> None:
            signing.verify_event_signatures(version, tampered, _KEYS)
            if not check_content_hash(tampered):
                raise SignatureError("content hash mismatch")

        self.assertRaises(SignatureError, full_verification)


class KeyFileTests(unittest.TestCase):
    def test_round_trip_synapse_format(self) -> None:
        path = self.mktemp()
        other = keys.generate_signing_key("a_b")
        keys.save_signing_keys(path, [KEY, other])
        with open(path, encoding="ascii") as f:
            text = f.read()
        self.assertEqual(text.splitlines()[0], f"ed25519 1 {CANONICAL_SEED}")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        loaded = keys.load_signing_keys(path)
        self.assertEqual([keys.key_id(k) for k in loaded], ["ed25519:1", "ed25519:a_b"])
        self.assertEqual(bytes(loaded[1]), bytes(other))

    def test_load_or_create(self) -> None:
        path = self.mktemp()
        created = keys.load_or_create_signing_key(path)
        self.assertEqual(bytes(keys.load_or_create_signing_key(path)), bytes(created))

    def test_bad_files(self) -> None:
        for lines in (["ed25519 1"], ["rsa 1 " + SEED], ["ed25519 1 AAAA"], ["ed25519 1 !!!!"]):
            self.assertRaises(SignatureError, keys.read_signing_keys, lines)
        self.assertEqual(keys.read_signing_keys(["", "  "]), [])
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("\n")
        self.assertRaises(SignatureError, keys.load_signing_keys, path)

    def test_verify_keys(self) -> None:
        encoded = keys.encode_verify_key_base64(VERIFY_KEY)
        decoded = keys.decode_verify_key_base64("ed25519", "1", encoded)
        self.assertEqual(bytes(decoded), bytes(VERIFY_KEY))
        self.assertEqual(keys.key_id(decoded), "ed25519:1")
        for args in (("rsa", "1", encoded), ("ed25519", "1", "AAAA"), ("ed25519", "1", "!")):
            self.assertRaises(SignatureError, keys.decode_verify_key_base64, *args)

    def test_key_ids(self) -> None:
        self.assertEqual(keys.split_key_id("ed25519:abc_1"), ("ed25519", "abc_1"))
        for bad in ("ed25519", ":a", "ed25519:", "ed25519:a-b"):
            self.assertRaises(SignatureError, keys.split_key_id, bad)
        self.assertRaises(ValueError, keys.generate_signing_key, "bad version")


class JunkEventTests(unittest.TestCase):
    @settings(max_examples=100)
    @given(room_versions, json_objects, st.data())
    def test_junk_raises_only_signature_error(
        self, version: str, junk: dict[str, Any], data: st.DataObject
    ) -> None:
        # Real keys for the named servers, so verification gets as far as it can.
        event = dict(junk)
        if data.draw(st.booleans()):
            event["sender"] = data.draw(st.sampled_from(["@u:example.org", "@u:", 5, None]))
        if data.draw(st.booleans()):
            event["signatures"] = data.draw(
                json_values
                | st.fixed_dictionaries(
                    {"example.org": st.dictionaries(st.just("ed25519:1"), json_values)}
                )
            )
        if data.draw(st.booleans()):
            event["hashes"] = data.draw(json_values)
        with contextlib.suppress(SignatureError):
            signing.verify_event_signatures(version, event, _KEYS)
        self.assertIsInstance(check_content_hash(event), bool)
