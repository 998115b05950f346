"""Tests for fedlib.rooms.verify: format, signature and hash checks on received PDUs."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from fedlib.errors import BadJsonError, SignatureError, UnsupportedRoomVersionError
from fedlib.events.hashing import compute_event_id
from fedlib.rooms.verify import PduCheckResult, verify_pdus
from tests.handshake_fakes import FakeKeyring, Server, make_event


def _run(d: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred did not fire synchronously"
    return results[0]


class VerifyPdusTests(unittest.TestCase):
    def setUp(self) -> None:
        self.hs1 = Server("hs1")
        self.hs2 = Server("hs2")
        self.keyring = FakeKeyring(self.hs1, self.hs2)

    def _verify(self, version: str, pdus: list[Any], **kw: Any) -> list[PduCheckResult]:
        results = _run(verify_pdus(self.keyring, version, pdus, **kw))
        self.assertIsInstance(results, list)
        return results  # type: ignore[no-any-return]

    def test_good_events_in_order(self) -> None:
        for version in ("1", "3", "10", "12"):
            events = [
                make_event(version, self.hs1, type="m.room.message", sender="@a:hs1", depth=i)
                for i in range(5)
            ]
            results = self._verify(version, [e for _, e in events])
            self.assertEqual([r.event_id for r in results], [i for i, _ in events])
            self.assertEqual([r.index for r in results], list(range(5)))
            self.assertTrue(all(r.ok and not r.redacted for r in results))
            self.assertEqual(results[2].event, events[2][1])

    def test_bad_signature_dropped(self) -> None:
        _, event = make_event("10", self.hs1, type="m.room.message", sender="@a:hs1")
        forged = dict(event, signatures={"hs1": {"ed25519:k1": "A" * 86}})
        _, good = make_event("10", self.hs1, type="m.room.message", sender="@a:hs1")
        results = self._verify("10", [forged, good])
        self.assertFalse(results[0].ok)
        self.assertIsInstance(results[0].error, SignatureError)
        self.assertIsNone(results[0].event)
        self.assertTrue(results[1].ok)

    def test_signed_by_wrong_server(self) -> None:
        # hs2 signs an event whose sender is on hs1: the sender's server must sign.
        _, event = make_event("10", self.hs2, type="m.room.message", sender="@a:hs1")
        (result,) = self._verify("10", [event])
        self.assertIsInstance(result.error, SignatureError)

    def test_v1_event_id_server_must_sign(self) -> None:
        _, event = make_event(
            "1", self.hs1, type="m.room.message", sender="@a:hs1", event_id="$x:hs2"
        )
        (result,) = self._verify("1", [event])
        self.assertIsInstance(result.error, SignatureError)
        event = self.hs2.sign("1", event)
        (result,) = self._verify("1", [event])
        self.assertTrue(result.ok)

    def test_content_hash_mismatch_redacts(self) -> None:
        event_id, event = make_event(
            "10", self.hs1, type="m.room.message", sender="@a:hs1", content={"body": "hi"}
        )
        # Changing content keeps the signature valid (it covers the redacted form) but
        # breaks the content hash.
        tampered = dict(event, content={"body": "evil"})
        (result,) = self._verify("10", [tampered])
        self.assertTrue(result.ok)
        self.assertTrue(result.redacted)
        assert result.event is not None
        self.assertEqual(result.event["content"], {})
        self.assertEqual(result.event_id, event_id)
        self.assertEqual(compute_event_id("10", result.event), event_id)

    def test_malformed_pdus(self) -> None:
        _, good = make_event("10", self.hs1, type="m.room.message", sender="@a:hs1")
        bad: list[Any] = [
            "not a dict",
            None,
            {},
            dict(good, depth="1"),
            dict(good, sender=5),
            dict(good, content=[]),
            dict(good, prev_events="x"),
            dict(good, prev_events=[5]),
        ]
        results = self._verify("10", bad)
        for r in results:
            self.assertIsInstance(r.error, BadJsonError, r)
        self.assertEqual(self.keyring.calls, 0)

    def test_wrong_room(self) -> None:
        _, event = make_event("10", self.hs1, type="m.room.message", sender="@a:hs1")
        (result,) = self._verify("10", [event], room_id="!other:hs1")
        self.assertIsInstance(result.error, BadJsonError)

    def test_unknown_room_version(self) -> None:
        failure = _run(verify_pdus(self.keyring, "999", []))
        self.assertIsInstance(failure.value, UnsupportedRoomVersionError)

    def test_keyring_crash_is_matrix_error(self) -> None:
        class Broken(FakeKeyring):
            def verify_event(self, room_version: str, event: Any) -> Any:
                raise RuntimeError("boom")

        _, event = make_event("10", self.hs1, type="m.room.message", sender="@a:hs1")
        (result,) = _run(verify_pdus(Broken(), "10", [event]))
        self.assertIsInstance(result.error, SignatureError)

    def test_concurrency_bounded(self) -> None:
        pending: list[defer.Deferred[None]] = []
        outer = self

        class Slow(FakeKeyring):
            def verify_event(self, room_version: str, event: Any) -> Any:
                d = FakeKeyring.verify_event(self, room_version, event)
                slow: defer.Deferred[None] = defer.Deferred()
                d.addCallbacks(lambda _: pending.append(slow), slow.errback)
                return slow

        keyring = Slow(self.hs1)
        events = [
            make_event("10", self.hs1, type="m.room.message", sender="@a:hs1", depth=i)[1]
            for i in range(20)
        ]
        d = verify_pdus(keyring, "10", events, concurrency=3)
        fired: list[Any] = []
        d.addCallback(fired.append)
        steps = 0
        while pending:
            outer.assertLessEqual(len(pending), 3)
            pending.pop(0).callback(None)
            steps += 1
        self.assertEqual(steps, 20)
        self.assertEqual(len(fired[0]), 20)
        self.assertTrue(all(r.ok for r in fired[0]))

    def test_size_limit_counts_signatures_and_unsigned(self) -> None:
        # The limit covers the PDU as received: padding in unsigned (covered by
        # neither hash nor signature) or in extra signatures counts to the byte.
        from fedlib.canonical import encode_canonical_json
        from fedlib.events.validation import MAX_PDU_SIZE

        _, event = make_event(
            "10", self.hs1, type="m.room.message", sender="@a:hs1", content={"body": "b" * 30000}
        )
        for where in ("unsigned", "signatures"):
            for total, ok in ((MAX_PDU_SIZE, True), (MAX_PDU_SIZE + 1, False)):
                pdu = dict(event)
                if where == "unsigned":
                    pdu["unsigned"] = {"pad": ""}
                else:
                    pdu["signatures"] = dict(event["signatures"], other={"ed25519:x": ""})
                room = total - len(encode_canonical_json(pdu))
                if where == "unsigned":
                    pdu["unsigned"] = {"pad": "u" * room}
                else:
                    pdu["signatures"] = dict(event["signatures"], other={"ed25519:x": "s" * room})
                self.assertEqual(len(encode_canonical_json(pdu)), total)
                (result,) = self._verify("10", [pdu])
                self.assertEqual(result.ok, ok, (where, total, result.error))
                if ok:
                    self.assertFalse(result.redacted)
                else:
                    self.assertIsInstance(result.error, BadJsonError)
                    assert result.error is not None
                    self.assertIn("larger than", result.error.msg)

    def test_empty(self) -> None:
        self.assertEqual(self._verify("10", []), [])

    def test_v12_create_event_room_id_is_its_hash(self) -> None:
        _, event = make_event("12", self.hs1, type="m.room.create", sender="@a:hs1", state_key="")
        del event["room_id"]
        event = self.hs1.sign("12", event)
        event_id = compute_event_id("12", event)
        (result,) = self._verify("12", [event], room_id="!" + event_id[1:])
        self.assertTrue(result.ok, result.error)
        (result,) = self._verify("12", [event], room_id="!" + "B" * 43)
        self.assertIsInstance(result.error, BadJsonError)


class RealKeyringValidityTests(unittest.TestCase):
    """Key validity at origin_server_ts (v5+) through the real keyring."""

    def test_expired_key(self) -> None:
        from twisted.internet import task

        from fedlib.crypto.keys import get_verify_key
        from fedlib.keyring import FetchedKey, Keyring

        hs1 = Server("hs1")
        keyring = Keyring(None, task.Clock(), fetch_directly=False)
        keyring.add_keys(
            "hs1",
            {"ed25519:k1": FetchedKey("ed25519:k1", get_verify_key(hs1.key), 0, expired_ts=5000)},
        )
        for version, ts, ok in (("10", 4000, True), ("10", 6000, False), ("4", 6000, True)):
            _, event = make_event(version, hs1, type="m.room.message", sender="@a:hs1", ts=ts)
            (result,) = _run(verify_pdus(keyring, version, [event]))
            self.assertEqual(result.ok, ok, (version, ts, result.error))
            if not ok:
                self.assertIsInstance(result.error, SignatureError)
