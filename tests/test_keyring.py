"""Keyring: direct and notary fetches, signature checks, validity times, batching."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from fedlib.client.transport import FederationRequestError
from fedlib.crypto.keys import generate_signing_key, get_verify_key, key_id
from fedlib.crypto.signing import sign_event, sign_json, verify_json
from fedlib.errors import MatrixError, SignatureError
from fedlib.keyring import (
    MAX_KEY_VALIDITY_MS,
    FetchedKey,
    IKeyring,
    Keyring,
    Notary,
    build_server_keys_response,
    local_keys_from_signing_keys,
    parse_key_response,
)

REMOTE = "remote.test"
NOTARY = "notary.test"
NOW_MS = 1_700_000_000_000
DAY_MS = 24 * 3600 * 1000


class FakeClient:
    """Scripted key endpoints. Values: dict (answer), Exception, or Deferred."""

    def __init__(self) -> None:
        self.direct: dict[str, Any] = {}
        self.notary: dict[str, Any] = {}
        self.direct_calls: list[str] = []
        self.notary_calls: list[tuple[str, Any]] = []

    def _answer(self, value: Any) -> defer.Deferred[Any]:
        if isinstance(value, defer.Deferred):
            return value
        if isinstance(value, Exception):
            return defer.fail(value)
        if value is None:
            return defer.fail(FederationRequestError("x", "unreachable"))
        return defer.succeed(value)

    def get_server_keys(self, destination: str) -> defer.Deferred[Any]:
        self.direct_calls.append(destination)
        return self._answer(self.direct.get(destination))

    def query_keys_via_notary(self, notary: str, server_keys: Any) -> defer.Deferred[Any]:
        self.notary_calls.append((notary, server_keys))
        return self._answer(self.notary.get(notary))


def make_event(sender_server: str, ts: int) -> dict[str, Any]:
    return {
        "room_id": "!room:" + sender_server,
        "sender": f"@alice:{sender_server}",
        "type": "m.room.message",
        "content": {"body": "hi"},
        "origin_server_ts": ts,
        "auth_events": [],
        "prev_events": [],
        "depth": 5,
    }


class KeyringTestBase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOW_MS / 1000)
        self.client = FakeClient()
        self.key = generate_signing_key("k1")
        self.client.direct[REMOTE] = self.response(self.key, NOW_MS + DAY_MS)

    def response(self, key: Any, valid_until: int, **kwargs: Any) -> dict[str, Any]:
        return build_server_keys_response(REMOTE, key, valid_until, **kwargs)

    def keyring(self, **kwargs: Any) -> Keyring:
        return Keyring(self.client, self.clock, **kwargs)


class DirectFetchTests(KeyringTestBase):
    def test_provides_interface(self) -> None:
        self.assertTrue(IKeyring.providedBy(self.keyring()))

    def test_fetch_and_verify_json(self) -> None:
        kr = self.keyring()
        keys = self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"]))
        self.assertEqual(list(keys), ["ed25519:k1"])
        obj = sign_json({"hello": "world"}, REMOTE, self.key)
        self.successResultOf(kr.verify_json_for_server(REMOTE, obj, NOW_MS))
        # Cached: no second request.
        self.successResultOf(kr.verify_json_for_server(REMOTE, obj))
        self.assertEqual(self.client.direct_calls, [REMOTE])

    def test_bad_signature_on_object(self) -> None:
        kr = self.keyring()
        obj = sign_json({"hello": "world"}, REMOTE, self.key)
        obj["hello"] = "forged"
        self.failureResultOf(kr.verify_json_for_server(REMOTE, obj), SignatureError)
        self.failureResultOf(kr.verify_json_for_server(REMOTE, {"a": 1}), SignatureError)

    def test_wrong_server_name_rejected(self) -> None:
        self.client.direct[REMOTE] = build_server_keys_response(
            "evil.test", self.key, NOW_MS + DAY_MS
        )
        kr = self.keyring()
        f = self.failureResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"]), SignatureError)
        self.assertIn("evil.test", f.value.msg)

    def test_forged_self_signature_rejected(self) -> None:
        other = generate_signing_key("k1")  # same key ID, different key
        response = self.response(self.key, NOW_MS + DAY_MS)
        response["signatures"] = sign_json(
            {k: v for k, v in response.items() if k != "signatures"}, REMOTE, other
        )["signatures"]
        self.client.direct[REMOTE] = response
        self.failureResultOf(self.keyring().get_verify_keys(REMOTE, ["ed25519:k1"]), SignatureError)

    def test_every_current_key_must_sign(self) -> None:
        second = generate_signing_key("k2")
        response = self.response(self.key, NOW_MS + DAY_MS)
        unsigned = {k: v for k, v in response.items() if k != "signatures"}
        unsigned["verify_keys"] = dict(unsigned["verify_keys"])
        from fedlib.crypto.keys import encode_verify_key_base64

        unsigned["verify_keys"]["ed25519:k2"] = {
            "key": encode_verify_key_base64(get_verify_key(second))
        }
        self.client.direct[REMOTE] = sign_json(unsigned, REMOTE, self.key)  # k2 did not sign
        self.failureResultOf(self.keyring().get_verify_keys(REMOTE, ["ed25519:k1"]), SignatureError)

    def test_malformed_responses(self) -> None:
        for bad in (
            [1, 2],
            {"server_name": REMOTE},
            {"server_name": REMOTE, "valid_until_ts": "soon", "verify_keys": {}},
            {"server_name": REMOTE, "valid_until_ts": 1, "verify_keys": {"ed25519:k1": 5}},
            {"server_name": REMOTE, "valid_until_ts": 1, "verify_keys": {"bad id": {"key": "x"}}},
            {
                "server_name": REMOTE,
                "valid_until_ts": 1,
                "verify_keys": {"ed25519:k1": {"key": "!!"}},
            },
        ):
            with self.assertRaises(SignatureError):
                parse_key_response(REMOTE, bad, NOW_MS)

    def test_transport_failure_is_a_matrix_error(self) -> None:
        self.client.direct[REMOTE] = None
        f = self.failureResultOf(self.keyring().get_verify_keys(REMOTE, ["ed25519:k1"]))
        self.assertIsInstance(f.value, MatrixError)
        self.assertIn("unreachable", f.value.msg)

    def test_concurrent_lookups_share_one_request(self) -> None:
        pending: defer.Deferred[Any] = defer.Deferred()
        self.client.direct[REMOTE] = pending
        kr = self.keyring()
        ds = [kr.get_verify_keys(REMOTE, ["ed25519:k1"], NOW_MS) for _ in range(5)]
        ds.append(kr.verify_json_for_server(REMOTE, sign_json({"x": 1}, REMOTE, self.key)))
        self.assertEqual(len(self.client.direct_calls), 1)
        pending.callback(self.response(self.key, NOW_MS + DAY_MS))
        for d in ds[:5]:
            self.assertEqual(list(self.successResultOf(d)), ["ed25519:k1"])
        self.successResultOf(ds[5])

    def test_unknown_key_id_is_not_refetched_at_once(self) -> None:
        kr = self.keyring()
        self.assertEqual(self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:nope"])), {})
        self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:nope"]))
        self.assertEqual(len(self.client.direct_calls), 1)
        self.clock.advance(31)
        self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:nope"]))
        self.assertEqual(len(self.client.direct_calls), 2)

    def test_local_keys_need_no_request(self) -> None:
        ours = generate_signing_key("me")
        kr = self.keyring(
            local_server_name="me.test", local_keys=local_keys_from_signing_keys([ours])
        )
        obj = sign_json({"a": 1}, "me.test", ours)
        self.successResultOf(kr.verify_json_for_server("me.test", obj, NOW_MS))
        self.assertEqual(self.client.direct_calls, [])


class ValidityTests(KeyringTestBase):
    def test_valid_until_and_refetch(self) -> None:
        kr = self.keyring()
        self.assertTrue(self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"], NOW_MS)))
        later = NOW_MS + 2 * DAY_MS
        self.clock.advance(60)
        # Not valid then: the keyring asks again, the server still says one day.
        self.assertEqual(
            self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"], later)), {}
        )
        self.assertEqual(len(self.client.direct_calls), 2)
        # After a refresh extends validity, the key is usable then.
        self.clock.advance(60)
        self.client.direct[REMOTE] = self.response(self.key, NOW_MS + 3 * DAY_MS)
        self.assertTrue(self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"], later)))

    def test_validity_capped_at_seven_days(self) -> None:
        self.client.direct[REMOTE] = self.response(self.key, NOW_MS + 365 * DAY_MS)
        kr = self.keyring()
        ok = NOW_MS + MAX_KEY_VALIDITY_MS
        self.assertTrue(self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"], ok)))
        self.clock.advance(60)  # the refetch caps at its own time + 7 days
        self.assertEqual(
            self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"], ok + 61_000)), {}
        )

    def test_old_verify_keys(self) -> None:
        old = generate_signing_key("old")
        expired = NOW_MS - DAY_MS
        self.client.direct[REMOTE] = self.response(
            self.key, NOW_MS + DAY_MS, old_keys={"ed25519:old": (get_verify_key(old), expired)}
        )
        kr = self.keyring()
        obj = sign_json({"a": 1}, REMOTE, old)
        self.successResultOf(kr.verify_json_for_server(REMOTE, obj, expired - 1))
        self.successResultOf(kr.verify_json_for_server(REMOTE, obj))  # any time
        self.clock.advance(60)
        self.failureResultOf(kr.verify_json_for_server(REMOTE, obj, expired), SignatureError)

    def test_event_key_validity_by_room_version(self) -> None:
        kr = self.keyring()
        late_ts = NOW_MS + 5 * DAY_MS  # after the key's valid_until_ts
        for version, accepted in (("4", True), ("5", False), ("10", False)):
            event = sign_event(version, make_event(REMOTE, late_ts), REMOTE, self.key)
            d = kr.verify_event(version, event)
            if accepted:
                self.successResultOf(d)
            else:
                self.failureResultOf(d, SignatureError)
            self.clock.advance(60)
        event = sign_event("10", make_event(REMOTE, NOW_MS), REMOTE, self.key)
        self.successResultOf(kr.verify_event("10", event))
        event["content"] = {"body": "changed"}  # content is not covered by the signature...
        event["type"] = "m.room.forged"  # ...but the type is
        self.failureResultOf(kr.verify_event("10", event), SignatureError)

    def test_event_signed_by_unknown_server(self) -> None:
        kr = self.keyring()
        event = sign_event("10", make_event("elsewhere.test", NOW_MS), REMOTE, self.key)
        f = self.failureResultOf(kr.verify_event("10", event))
        self.assertIsInstance(f.value, SignatureError)


class NotaryTests(KeyringTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.notary_key = generate_signing_key("n1")
        self.pinned = Notary(NOTARY, {key_id(self.notary_key): get_verify_key(self.notary_key)})

    def notary_answer(self, *entries: dict[str, Any]) -> dict[str, Any]:
        return {"server_keys": list(entries)}

    def cosigned(self, response: dict[str, Any]) -> dict[str, Any]:
        return sign_json(response, NOTARY, self.notary_key)

    def test_via_notary(self) -> None:
        self.client.notary[NOTARY] = [self.cosigned(self.response(self.key, NOW_MS + DAY_MS))]
        kr = self.keyring(notaries=[self.pinned], fetch_directly=False)
        keys = self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"], NOW_MS))
        self.assertEqual(list(keys), ["ed25519:k1"])
        self.assertEqual(self.client.direct_calls, [])
        # Some notaries (Synapse) only fetch what is named: the key ID is in the query.
        self.assertEqual(
            self.client.notary_calls,
            [(NOTARY, {REMOTE: {"ed25519:k1": {"minimum_valid_until_ts": NOW_MS}}})],
        )

    def test_notary_signature_required(self) -> None:
        wrong = generate_signing_key("n1")
        self.client.notary[NOTARY] = [
            sign_json(self.response(self.key, NOW_MS + DAY_MS), NOTARY, wrong)
        ]
        kr = self.keyring(notaries=[self.pinned], fetch_directly=False)
        self.failureResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"]), SignatureError)
        # Not signed by the notary at all.
        self.clock.advance(60)
        self.client.notary[NOTARY] = [self.response(self.key, NOW_MS + DAY_MS)]
        self.failureResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"]), SignatureError)

    def test_origin_signature_required(self) -> None:
        # A notary that vouches for a key the origin never signed.
        forged_key = generate_signing_key("k1")
        response = self.response(self.key, NOW_MS + DAY_MS)
        from fedlib.crypto.keys import encode_verify_key_base64

        response["verify_keys"] = {
            "ed25519:k1": {"key": encode_verify_key_base64(get_verify_key(forged_key))}
        }
        self.client.notary[NOTARY] = [self.cosigned(response)]
        kr = self.keyring(notaries=[self.pinned], fetch_directly=False)
        self.failureResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"]), SignatureError)

    def test_direct_failure_falls_back_to_notary(self) -> None:
        self.client.direct[REMOTE] = None
        self.client.notary[NOTARY] = [self.cosigned(self.response(self.key, NOW_MS + DAY_MS))]
        kr = self.keyring(notaries=[self.pinned])
        self.assertTrue(self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"])))
        self.assertEqual(self.client.direct_calls, [REMOTE])

    def test_unpinned_notary_keys_fetched_directly(self) -> None:
        self.client.direct[NOTARY] = build_server_keys_response(
            NOTARY, self.notary_key, NOW_MS + DAY_MS
        )
        self.client.notary[NOTARY] = [self.cosigned(self.response(self.key, NOW_MS + DAY_MS))]
        kr = self.keyring(notaries=[Notary(NOTARY)], fetch_directly=False)
        self.assertTrue(self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"])))
        self.assertEqual(self.client.direct_calls, [NOTARY])

    def test_acting_as_notary(self) -> None:
        kr = self.keyring()
        ours = generate_signing_key("me")
        own = build_server_keys_response("me.test", ours, NOW_MS + DAY_MS)
        body = self.successResultOf(
            kr.notary_query(
                {
                    REMOTE: {"ed25519:k1": {"minimum_valid_until_ts": NOW_MS}},
                    "me.test": {},
                    "down.test": {},
                },
                "me.test",
                ours,
                own_response=own,
            )
        )
        entries = {e["server_name"]: e for e in body["server_keys"]}
        self.assertEqual(set(entries), {REMOTE, "me.test"})  # down.test is left out
        verify_json(entries[REMOTE], "me.test", get_verify_key(ours))
        verify_json(entries[REMOTE], REMOTE, get_verify_key(self.key))
        self.assertEqual(entries["me.test"], own)
        # A later query with a minimum beyond what we hold refetches (after the interval).
        self.clock.advance(60)
        self.successResultOf(
            kr.notary_query(
                {REMOTE: {"ed25519:k1": {"minimum_valid_until_ts": NOW_MS + 2 * DAY_MS}}},
                "me.test",
                ours,
            )
        )
        self.assertEqual(self.client.direct_calls.count(REMOTE), 2)

    def test_junk_entries_are_clean_errors(self) -> None:
        good = self.cosigned(self.response(self.key, NOW_MS + DAY_MS))
        junk = [
            {"server_name": REMOTE, "signatures": ["not", "a", "dict"]},
            {"server_name": REMOTE, "signatures": {NOTARY: "x"}},
            {"server_name": REMOTE},
            "not an object",
        ]
        self.client.notary[NOTARY] = junk
        kr = self.keyring(notaries=[self.pinned], fetch_directly=False)
        f = self.failureResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"]), SignatureError)
        self.assertNotIn("AttributeError", f.value.msg)
        # Junk next to a good entry does not hide it.
        self.clock.advance(60)
        self.client.notary[NOTARY] = [*junk, good]
        self.assertTrue(self.successResultOf(kr.get_verify_keys(REMOTE, ["ed25519:k1"])))


class ServingKeysTests(unittest.TestCase):
    def test_build_server_keys_response(self) -> None:
        key = generate_signing_key("a")
        old = generate_signing_key("b")
        body = build_server_keys_response(
            "me.test", key, NOW_MS + DAY_MS, old_keys={"ed25519:b": (get_verify_key(old), NOW_MS)}
        )
        keys, valid_until = parse_key_response("me.test", body, NOW_MS)
        self.assertEqual(valid_until, NOW_MS + DAY_MS)
        self.assertEqual(keys["ed25519:b"].expired_ts, NOW_MS)
        self.assertIsInstance(keys["ed25519:a"], FetchedKey)
        self.assertEqual(set(body["signatures"]["me.test"]), {"ed25519:a"})


class StoreTests(KeyringTestBase):
    def test_keys_survive_a_restart_through_the_store(self) -> None:
        from fedlib.storage.memory import MemoryStore

        store = MemoryStore()
        first = self.keyring(store=store)
        self.successResultOf(first.get_verify_keys(REMOTE, ["ed25519:k1"], NOW_MS))
        stored = self.successResultOf(store.get_server_keys(REMOTE))
        self.assertEqual(stored["ed25519:k1"].valid_until_ts, NOW_MS + DAY_MS)

        self.client.direct[REMOTE] = None  # the origin is now down
        second = self.keyring(store=store)
        obj = sign_json({"a": 1}, REMOTE, self.key)
        self.successResultOf(second.verify_json_for_server(REMOTE, obj, NOW_MS))
        self.assertEqual(self.client.direct_calls, [REMOTE])
        # ...and can still vouch for the origin as a notary.
        ours = generate_signing_key("me")
        body = self.successResultOf(second.notary_query({REMOTE: {}}, "me.test", ours))
        self.assertEqual([e["server_name"] for e in body["server_keys"]], [REMOTE])
        verify_json(body["server_keys"][0], "me.test", get_verify_key(ours))


class CancellationTests(KeyringTestBase):
    def test_cancelled_lookup_does_not_break_the_batch(self) -> None:
        pending: defer.Deferred[Any] = defer.Deferred()
        self.client.direct[REMOTE] = pending
        kr = self.keyring()
        d1 = kr.get_verify_keys(REMOTE, ["ed25519:k1"])
        d2 = kr.get_verify_keys(REMOTE, ["ed25519:k1"])
        d1.cancel()
        self.failureResultOf(d1, defer.CancelledError)
        pending.callback(self.response(self.key, NOW_MS + DAY_MS))
        self.assertEqual(list(self.successResultOf(d2)), ["ed25519:k1"])
