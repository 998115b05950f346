"""PUT /send/{txnId} through the real Resource tree: checks, results, idempotency, limits."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from fedlib.crypto.keys import generate_signing_key
from fedlib.crypto.signing import sign_event
from fedlib.storage.interface import EventStatus
from tests.server_helpers import OUR_NAME, Harness, Remote, RoomBuilder

_txn = itertools.count(1)
ALICE = "@alice:us.test"
BOB = "@bob:remote.test"
MISSING = "$" + "A" * 43


class SendTestBase(unittest.TestCase):
    room_version = "10"

    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.h = Harness(self.remote)
        self.rb = RoomBuilder(self.room_version, {OUR_NAME: self.h.us, "remote.test": self.remote})
        self.rb.create_room(ALICE, extra_members=[BOB])
        self.successResultOf(self.rb.persist_all(self.h.store))

    def send(
        self, pdus: list[Any], edus: list[Any] | None = None, txn: str | None = None, **kw: Any
    ) -> Any:
        body: dict[str, Any] = {
            "origin": kw.get("origin", self.remote).name,
            "origin_server_ts": 1,
            "pdus": pdus,
        }
        if edus is not None:
            body["edus"] = edus
        return self.h.request("PUT", f"/_matrix/federation/v1/send/{txn or next(_txn)}", body, **kw)

    def message(self, sender: str = BOB, **kw: Any) -> tuple[str, dict[str, Any]]:
        return self.rb.make("m.room.message", sender, {"msgtype": "m.text", "body": "hi"}, **kw)

    def stored(self, event_id: str) -> Any:
        return self.successResultOf(self.h.store.get_events([event_id])).get(event_id)

    def assert_unchanged(self, before: Any) -> None:
        self.assertEqual(self.h.snapshot()[:3], before[:3])
        self.assertEqual(self.h.snapshot()[4:], before[4:])


class SendTests(SendTestBase):
    def test_accepted(self) -> None:
        eid, ev = self.message()
        r = self.send([ev])
        self.assertEqual((r.code, r.json), (200, {"pdus": {eid: {}}}))
        self.assertIs(self.stored(eid).status, EventStatus.ACCEPTED)
        self.assertEqual(
            self.successResultOf(self.h.store.get_forward_extremities(self.rb.room_id)), {eid}
        )
        self.assertEqual([p.event_id for p in self.h.hooks.new_pdus], [eid])

    def test_chain_in_one_transaction_any_order(self) -> None:
        eid1, ev1 = self.message()
        self.rb.accept(eid1, ev1)
        eid2, ev2 = self.message()
        r = self.send([ev2, ev1])
        self.assertEqual(r.json, {"pdus": {eid1: {}, eid2: {}}})
        self.assertEqual([p.event_id for p in self.h.hooks.new_pdus], [eid1, eid2])

    def test_state_event_updates_current_state(self) -> None:
        eid, ev = self.rb.make(
            "m.room.member", BOB, {"membership": "join", "displayname": "B"}, BOB
        )
        r = self.send([ev])
        self.assertEqual(r.json, {"pdus": {eid: {}}})
        current = self.successResultOf(self.h.store.get_current_state(self.rb.room_id))
        self.assertEqual(current[("m.room.member", BOB)], eid)

    def test_duplicate_transaction_not_reprocessed(self) -> None:
        _eid, ev = self.message()
        r1 = self.send([ev], txn="dup")
        before = self.h.snapshot()
        eid2, ev2 = self.message()
        r2 = self.send([ev2], txn="dup")
        self.assertEqual(r2.json, r1.json)
        self.assertIsNone(self.stored(eid2))
        self.assertEqual(self.h.snapshot(), before)

    def test_edus_to_hooks(self) -> None:
        edus = [{"edu_type": "m.presence", "content": {"push": []}}, "junk", {"edu_type": 3}]
        r = self.send([], edus)
        self.assertEqual((r.code, r.json), (200, {"pdus": {}}))
        self.assertEqual(self.h.hooks.edus, [("remote.test", "m.presence", {"push": []})])

    def test_origin_mismatch(self) -> None:
        r = self.h.request(
            "PUT",
            "/_matrix/federation/v1/send/x1",
            {"origin": "evil.test", "origin_server_ts": 1, "pdus": []},
        )
        self.assertEqual((r.code, r.errcode), (400, "M_BAD_JSON"))

    def test_missing_pdus(self) -> None:
        r = self.h.request("PUT", "/_matrix/federation/v1/send/x2", {"origin": "remote.test"})
        self.assertEqual((r.code, r.errcode), (400, "M_BAD_JSON"))

    def test_room_v12(self) -> None:
        self._message_accepted_in("12")

    def test_room_v1(self) -> None:
        self._message_accepted_in("1")

    def _message_accepted_in(self, room_version: str) -> None:
        h = Harness(self.remote)
        rb = RoomBuilder(room_version, {OUR_NAME: h.us, "remote.test": self.remote})
        rb.create_room(ALICE, extra_members=[BOB])
        self.successResultOf(rb.persist_all(h.store))
        eid, ev = rb.make("m.room.message", BOB, {"body": "x"})
        r = h.request(
            "PUT",
            f"/_matrix/federation/v1/send/v{room_version}",
            {"origin": "remote.test", "origin_server_ts": 1, "pdus": [ev]},
        )
        self.assertEqual(r.json, {"pdus": {eid: {}}})


class AdversarialSendTests(SendTestBase):
    """Each: the right error, and the store and hooks unchanged."""

    def test_51_pdus(self) -> None:
        pdus = [self.message()[1] for _ in range(51)]
        before = self.h.snapshot()
        r = self.send(pdus)
        self.assertEqual((r.code, r.errcode), (400, "M_BAD_JSON"))
        self.assertEqual(self.h.snapshot(), before)

    def test_101_edus(self) -> None:
        before = self.h.snapshot()
        r = self.send([], [{"edu_type": "m.x", "content": {}}] * 101)
        self.assertEqual((r.code, r.errcode), (400, "M_BAD_JSON"))
        self.assertEqual(self.h.snapshot(), before)

    def test_unknown_room(self) -> None:
        _eid, ev = self.message()
        ev = dict(ev, room_id="!unknown:elsewhere.test")
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertEqual(r.code, 200)
        (result,) = r.json["pdus"].values()
        self.assertIn("Unknown room", result["error"])
        self.assert_unchanged(before)

    def test_bad_signature(self) -> None:
        eid, ev = self.message(signer=Remote("remote.test"))
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertIn("error", r.json["pdus"][eid])
        self.assertIsNone(self.stored(eid))
        self.assert_unchanged(before)

    def test_sender_of_other_server_than_signer(self) -> None:
        eid, ev = self.message(sender="@eve:other.test", signer=self.remote)
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertIn("error", r.json["pdus"][eid])
        self.assert_unchanged(before)

    def test_signature_by_unpublished_key(self) -> None:
        eid, ev = self.message()
        rogue = generate_signing_key("rogue")
        ev = sign_event(
            self.room_version,
            {k: v for k, v in ev.items() if k != "signatures"},
            "remote.test",
            rogue,
        )
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertIn("error", r.json["pdus"][eid])
        self.assert_unchanged(before)

    def test_bad_content_hash_is_redacted(self) -> None:
        eid, ev = self.message()
        tampered = dict(ev, content={"msgtype": "m.text", "body": "tampered"})
        r = self.send([tampered])
        self.assertEqual(r.json, {"pdus": {eid: {}}})
        self.assertEqual(dict(self.stored(eid).event["content"]), {})

    def test_forged_auth_events(self) -> None:
        # A message listing the join rules among its auth events.
        auth = [
            self.rb.state[k]
            for k in (
                ("m.room.create", ""),
                ("m.room.power_levels", ""),
                ("m.room.member", BOB),
                ("m.room.join_rules", ""),
            )
        ]
        eid, ev = self.message(auth=auth)
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertIn("error", r.json["pdus"][eid])
        self.assertIs(self.stored(eid).status, EventStatus.REJECTED)
        self.assertEqual(self.h.snapshot()[1:3], before[1:3])
        self.assertEqual(self.h.hooks.new_pdus, [])
        self.assertEqual(self.h.hooks.rejected, [eid])

    def test_fails_auth_against_state(self) -> None:
        # Carol never joined; the event cites Bob's membership to look plausible.
        auth = [self.rb.state[k] for k in (("m.room.create", ""), ("m.room.power_levels", ""))]
        eid, ev = self.message(sender="@carol:remote.test", auth=auth)
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertIn("error", r.json["pdus"][eid])
        self.assertIs(self.stored(eid).status, EventStatus.REJECTED)
        self.assertEqual(self.h.snapshot()[1:3], before[1:3])
        self.assertEqual(self.h.hooks.new_pdus, [])

    def test_soft_failed_against_current_state(self) -> None:
        fork_point = list(self.rb.head)
        depth = self.rb.depth
        ban_id, ban = self.rb.make("m.room.member", ALICE, {"membership": "ban"}, BOB)
        self.assertEqual(self.send([ban], origin=self.remote).code, 200)
        # Our own ban was relayed by the remote: it is signed by us, so accepted.
        self.assertIs(self.stored(ban_id).status, EventStatus.ACCEPTED)
        # Bob sends from before the ban.
        self.rb.head, self.rb.depth = fork_point, depth
        auth = [
            self.rb.state[k]
            for k in (("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", BOB))
        ]
        eid, ev = self.message(auth=auth)
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertEqual(r.json, {"pdus": {eid: {}}})
        self.assertIs(self.stored(eid).status, EventStatus.SOFT_FAILED)
        self.assertEqual(self.h.snapshot()[1:3], before[1:3])
        self.assertEqual(self.h.hooks.soft_failed, [eid])

    def test_acl_denied(self) -> None:
        acl_id = self.rb.add(
            "m.room.server_acl", ALICE, {"allow": ["*"], "deny": ["remote.test"]}, ""
        )
        self.successResultOf(self._persist_extra(acl_id))
        eid, ev = self.message()
        before = self.h.snapshot()
        r = self.send(
            [ev],
            [
                {
                    "edu_type": "m.typing",
                    "content": {"room_id": self.rb.room_id, "user_id": BOB, "typing": True},
                }
            ],
        )
        self.assertIn("ACL", r.json["pdus"][eid]["error"])
        self.assert_unchanged(before)
        self.assertEqual(self.h.hooks.edus, [])

    def _persist_extra(self, event_id: str) -> Any:
        from fedlib.storage.interface import PersistItem, StateRef

        ev = self.rb.events[event_id]
        prev = ev["prev_events"][0]
        return self.h.store.persist_events(
            self.rb.room_id, [PersistItem(event=ev, event_id=event_id, state_before=StateRef(prev))]
        )

    def test_oversized_pdu(self) -> None:
        eid, ev = self.rb.make("m.room.message", BOB, {"body": "x" * 70_000})
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertIn("error", r.json["pdus"][eid])
        self.assert_unchanged(before)

    def test_float_in_v6_plus_event(self) -> None:
        eid, ev = self.rb.make("m.room.message", BOB, {"body": "x", "f": 1.5})
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertIn("error", r.json["pdus"][eid])
        self.assert_unchanged(before)

    def test_integer_out_of_range(self) -> None:
        # transactions.yaml: per-PDU errors, the transaction itself answered 200.
        good_id, good = self.message()
        eid, ev = self.rb.make("m.room.message", BOB, {"body": "x", "n": 2**53})
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertEqual(r.code, 200)
        self.assertIn("error", r.json["pdus"][eid])
        self.assert_unchanged(before)
        r = self.send([good])
        self.assertEqual(r.json["pdus"], {good_id: {}})

    def test_integer_out_of_range_in_edu_accepted(self) -> None:
        r = self.send([], [{"edu_type": "org.example", "content": {"n": -(2**60)}}])
        self.assertEqual(r.code, 200)

    def test_integer_beyond_digit_limit(self) -> None:
        from fedlib.canonical import encode_canonical_json

        body = encode_canonical_json({"origin": "remote.test", "pdus": []}).replace(
            b'"pdus":[]', b'"pdus":[],"n":' + b"9" * 20_000
        )
        before = self.h.snapshot()
        r = self.h.request(
            "PUT",
            "/_matrix/federation/v1/send/huge",
            body=body,
            auth_header='X-Matrix origin=remote.test,key="ed25519:r1",sig="x"',
        )
        self.assertEqual(r.code, 400)
        self.assertEqual(self.h.snapshot(), before)

    def test_invalid_utf8(self) -> None:
        before = self.h.snapshot()
        r = self.h.request(
            "PUT",
            "/_matrix/federation/v1/send/u8",
            body=b'{"pdus":["\xff"]}',
            auth_header='X-Matrix origin=remote.test,key="ed25519:r1",sig="x"',
        )
        self.assertEqual((r.code, r.errcode), (400, "M_NOT_JSON"))
        self.assertEqual(self.h.snapshot(), before)

    def test_deeply_nested(self) -> None:
        nested: Any = {}
        for _ in range(200):
            nested = {"a": nested}
        _eid, ev = self.rb.make("m.room.message", BOB, {"body": "x", "n": nested})
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertEqual((r.code, r.errcode), (400, "M_BAD_JSON"))
        self.assertEqual(self.h.snapshot(), before)

    def test_unsigned_and_wrongly_signed_requests(self) -> None:
        _eid, ev = self.message()
        before = self.h.snapshot()
        for kw in ({"sign": False}, {"key": generate_signing_key("r1")}, {"destination": "x.test"}):
            r = self.send([ev], **kw)
            self.assertEqual((r.code, r.errcode), (401, "M_UNAUTHORIZED"), kw)
        self.assertEqual(self.h.snapshot(), before)


class FakeGaps:
    """A gap filler whose answers the test controls."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred[Any]] = []
        self.calls: list[str] = []
        self.missing: list[Any] = []

    def _wait(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d

    def fetch_missing_prev_events(
        self, origin: str, room_id: str, event: Any, event_id: str, **kw: Any
    ) -> Any:
        self.calls.append("missing")
        if self.missing == "hang":
            return self._wait()
        return defer.succeed(self.missing)

    def fetch_state_at(self, origin: str, room_id: str, event_id: str, **kw: Any) -> Any:
        self.calls.append("state")
        return defer.fail(__import__("fedlib.errors").errors.MatrixError(502, "M_UNKNOWN", "nope"))

    def fetch_auth_chain(self, origin: str, room_id: str, event_id: str, **kw: Any) -> Any:
        self.calls.append("chain")
        return defer.succeed({})

    def fetch_auth_events(self, origin: str, room_id: str, ids: Any, **kw: Any) -> Any:
        self.calls.append("auth")
        return defer.succeed({})

    def fetch_events(self, origin: str, room_id: str, ids: Any, **kw: Any) -> Any:
        return defer.succeed({})


class GapTests(SendTestBase):
    def test_missing_prev_without_gap_filler(self) -> None:
        eid, ev = self.message(prev=[MISSING])
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertIn("error", r.json["pdus"][eid])
        self.assert_unchanged(before)

    def test_missing_prev_filled_by_get_missing_events(self) -> None:
        from fedlib.rooms.verify import PduCheckResult

        gaps = FakeGaps()
        self.h.set_gaps(gaps)
        eid1, ev1 = self.message()
        self.rb.accept(eid1, ev1)
        eid2, ev2 = self.message()
        gaps.missing = [PduCheckResult(index=0, event_id=eid1, event=ev1)]
        r = self.send([ev2])
        self.assertEqual(r.json, {"pdus": {eid2: {}}})
        self.assertIs(self.stored(eid1).status, EventStatus.ACCEPTED)
        self.assertEqual(gaps.calls, ["missing"])

    def test_unfillable_gap_is_an_error(self) -> None:
        gaps = FakeGaps()
        self.h.set_gaps(gaps)
        eid, ev = self.message(prev=[MISSING])
        before = self.h.snapshot()
        r = self.send([ev])
        self.assertIn("error", r.json["pdus"][eid])
        self.assertEqual(gaps.calls, ["missing", "state"])
        self.assert_unchanged(before)

    def test_slow_origin_bounded_and_other_rooms_proceed(self) -> None:
        gaps = FakeGaps()
        gaps.missing = "hang"
        self.h.set_gaps(gaps)
        eid, ev = self.message(prev=[MISSING])
        # Start the slow transaction without waiting for its answer.
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from fedlib.canonical import encode_canonical_json
        from fedlib.crypto.request_auth import sign_request

        body = {"origin": "remote.test", "pdus": [ev]}
        path = "/_matrix/federation/v1/send/slow"
        auth = sign_request("PUT", path, "remote.test", OUR_NAME, self.remote.key, body)
        data = encode_canonical_json(body)
        raw = (
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
            f"Authorization: {auth}\r\n\r\n"
        ).encode() + data
        transport = StringTransport()
        proto = self.h.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        proto.makeConnection(transport)
        proto.dataReceived(raw)
        self.assertEqual(transport.value(), b"")
        # The same origin's next transaction is refused quickly, not queued.
        _eid2, ev2 = self.message()
        r = self.send([ev2])
        self.assertEqual((r.code, r.errcode), (429, "M_LIMIT_EXCEEDED"))
        # Another origin, another room: proceeds while the first room waits.
        other = Remote("other.test")
        self.h.keyring.add(other)
        rb2 = RoomBuilder("10", {OUR_NAME: self.h.us, "other.test": other})
        rb2.create_room(ALICE, extra_members=["@o:other.test"])
        self.successResultOf(rb2.persist_all(self.h.store))
        eid3, ev3 = rb2.make("m.room.message", "@o:other.test", {"body": "x"})
        r = self.h.request(
            "PUT",
            "/_matrix/federation/v1/send/o1",
            {"origin": "other.test", "pdus": [ev3]},
            origin=other,
        )
        self.assertEqual(r.json, {"pdus": {eid3: {}}})
        # The deadline passes: the slow transaction answers with a per-PDU error.
        self.h.clock.advance(self.h.config.pdu_timeout_seconds + 1)
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(eid.encode(), transport.value())
        self.assertIsNone(self.stored(eid))


class EduAclTests(SendTestBase):
    def test_receipts_of_denied_rooms_dropped(self) -> None:
        acl_id = self.rb.add(
            "m.room.server_acl", ALICE, {"allow": ["*"], "deny": ["remote.test"]}, ""
        )
        ev = self.rb.events[acl_id]
        from fedlib.storage.interface import PersistItem, StateRef

        self.successResultOf(
            self.h.store.persist_events(
                self.rb.room_id,
                [
                    PersistItem(
                        event=ev, event_id=acl_id, state_before=StateRef(ev["prev_events"][0])
                    )
                ],
            )
        )
        receipt = {"m.read": {BOB: {"event_ids": ["$x"], "data": {"ts": 1}}}}
        content = {self.rb.room_id: receipt, "!other:x.test": receipt}
        r = self.send([], [{"edu_type": "m.receipt", "content": content}])
        self.assertEqual(r.code, 200)
        self.assertEqual(
            self.h.hooks.edus, [("remote.test", "m.receipt", {"!other:x.test": receipt})]
        )


class FailureTests(SendTestBase):
    def test_unexpected_failure_releases_the_transaction(self) -> None:
        eid, ev = self.message()
        pipeline_calls = []

        from fedlib.server.handlers.transactions import get_pipeline

        pipeline = get_pipeline(self.h.ctx)
        real = pipeline.process

        async def broken(*a: Any, **kw: Any) -> Any:
            pipeline_calls.append(1)
            raise RuntimeError("boom")

        pipeline.process = broken  # type: ignore[method-assign]
        before = self.h.snapshot()
        r = self.send([ev], txn="t-fail")
        self.assertEqual((r.code, r.errcode), (500, "M_UNKNOWN"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.h.snapshot(), before)
        # The retry is processed afresh, not answered from a record.
        pipeline.process = real  # type: ignore[method-assign]
        r = self.send([ev], txn="t-fail")
        self.assertEqual(r.json, {"pdus": {eid: {}}})
