"""Tests for fedlib.client.sender: batching, ordering, backoff, restart, catch-up."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial import unittest

from fedlib.client.sender import SenderConfig, TransactionSender
from fedlib.errors import MatrixError
from fedlib.storage.interface import EventStatus, PersistItem
from fedlib.storage.memory import MemoryStore

ROOM = "!room:us"


class FakeTransport:
    """Records transactions; answers with whatever ``mode`` says."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Mapping[str, Any]]] = []
        self.mode = "ok"  # ok | fail | hang
        self.down: set[str] = set()
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.hanging: list[defer.Deferred[Any]] = []
        self.delivered: list[tuple[str, str, Mapping[str, Any]]] = []

    def send_transaction(self, destination: str, txn_id: str, txn: Mapping[str, Any]) -> Any:
        self.calls.append((destination, txn_id, txn))
        if self.mode == "fail" or destination in self.down:
            return defer.fail(MatrixError(502, "M_UNKNOWN", "connection refused"))
        if self.mode == "hang":
            self.in_flight[destination] = self.in_flight.get(destination, 0) + 1
            self.max_in_flight[destination] = max(
                self.max_in_flight.get(destination, 0), self.in_flight[destination]
            )
            d: defer.Deferred[Any] = defer.Deferred()

            def done(result: Any) -> Any:
                self.in_flight[destination] -= 1
                if not isinstance(result, Failure):
                    self.delivered.append((destination, txn_id, txn))
                return result

            d.addBoth(done)
            self.hanging.append(d)
            return d
        self.delivered.append((destination, txn_id, txn))
        return defer.succeed({"pdus": {p["event_id"]: {} for p in txn["pdus"]}})

    def pdu_ids(self, destination: str | None = None) -> list[str]:
        """PDUs of answered transactions (in order)."""
        return [
            p["event_id"]
            for d, _, t in self.delivered
            if destination in (None, d)
            for p in t["pdus"]
        ]


def _result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class SenderTestBase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryStore(clock=lambda: int(self.clock.seconds() * 1000))
        _result(self.store.store_room(ROOM, "10"))
        self.transport = FakeTransport()
        self.n = 0
        self.config = SenderConfig(jitter=0.0, sweep_interval=300.0, catchup_after=1000.0)

    def make_sender(self, **overrides: Any) -> TransactionSender:
        cfg = SenderConfig(**{**self._cfg_dict(), **overrides})
        sender = TransactionSender(
            "us", self.store, self.transport, self.clock, cfg, rng=random.Random(1)
        )
        self.addCleanup(sender.stop)
        _result(sender.start())
        return sender

    def _cfg_dict(self) -> dict[str, Any]:
        import attrs

        return attrs.asdict(self.config)

    def event(self, room: str = ROOM, sender: str = "@a:us", **kw: Any) -> str:
        self.n += 1
        event_id = f"$ev{self.n}"
        ev = {
            "event_id": event_id,
            "type": "m.room.message",
            "room_id": room,
            "sender": sender,
            "content": {"n": self.n},
            "depth": self.n,
            "origin_server_ts": self.n,
            "prev_events": [],
            "auth_events": [],
            "unsigned": {"local": True},
            **kw,
        }
        item = PersistItem(event=ev, event_id=event_id, status=EventStatus.OUTLIER)
        _result(self.store.persist_events(room, [item]))
        return event_id


class BatchingTests(SenderTestBase):
    def test_pdus_in_order_in_batches_of_50(self) -> None:
        sender = self.make_sender()
        ids = [self.event() for _ in range(120)]
        self.transport.mode = "hang"
        for e in ids:
            _result(sender.send_pdu(e, ["remote"]))
        # One transaction in flight; the rest waits in the store.
        self.assertEqual(len(self.transport.calls), 1)
        while self.transport.hanging:
            self.transport.hanging.pop(0).callback({"pdus": {}})
        sizes = [len(t["pdus"]) for _, _, t in self.transport.calls]
        self.assertEqual(sum(sizes), 120)
        self.assertTrue(all(s <= 50 for s in sizes))
        self.assertEqual(self.transport.pdu_ids(), ids)
        self.assertEqual(self.transport.max_in_flight["remote"], 1)
        self.assertEqual(_result(self.store.get_destinations_with_pending()), set())
        # unsigned is local and never sent.
        self.assertTrue(
            all("unsigned" not in p for _, _, t in self.transport.calls for p in t["pdus"])
        )

    def test_edus_batched_by_100(self) -> None:
        sender = self.make_sender()
        self.transport.mode = "hang"
        for i in range(250):
            _result(sender.send_edu("remote", "m.typing", {"i": i}))
        while self.transport.hanging:
            self.transport.hanging.pop(0).callback({})
        sizes = [len(t["edus"]) for _, _, t in self.transport.calls]
        self.assertEqual(sizes, [1, 100, 100, 49])
        order = [e["content"]["i"] for _, _, t in self.transport.calls for e in t["edus"]]
        self.assertEqual(order, list(range(250)))
        for _, _, t in self.transport.calls:
            self.assertEqual(t["origin"], "us")
            self.assertIsInstance(t["origin_server_ts"], int)

    def test_txn_ids_unique(self) -> None:
        sender = self.make_sender()
        for _ in range(30):
            _result(sender.send_pdu(self.event(), ["remote"]))
        txn_ids = [t for _, t, _ in self.transport.calls]
        self.assertEqual(len(txn_ids), 30)
        self.assertEqual(len(set(txn_ids)), 30)
        # A new sender (restart) at the same clock time does not reuse them.
        sender.stop()
        sender2 = self.make_sender()
        _result(sender2.send_pdu(self.event(), ["remote"]))
        self.assertNotIn(self.transport.calls[-1][1], txn_ids)

    def test_destinations_default_to_joined_servers(self) -> None:
        create = {
            "event_id": "$m1",
            "type": "m.room.member",
            "state_key": "@b:remote",
            "room_id": ROOM,
            "sender": "@b:remote",
            "content": {"membership": "join"},
            "depth": 1,
            "origin_server_ts": 1,
            "prev_events": [],
            "auth_events": [],
        }
        mine = dict(create, event_id="$m2", state_key="@a:us", sender="@a:us")
        other = dict(create, event_id="$m3", state_key="@c:other", sender="@c:other")
        _result(
            self.store.persist_events(
                ROOM,
                [
                    PersistItem(create, "$m1", state_before={}),
                    PersistItem(mine, "$m2", state_before={("m.room.member", "@b:remote"): "$m1"}),
                    PersistItem(
                        other,
                        "$m3",
                        state_before={
                            ("m.room.member", "@b:remote"): "$m1",
                            ("m.room.member", "@a:us"): "$m2",
                        },
                    ),
                ],
            )
        )
        sender = self.make_sender()
        e = self.event()
        _result(sender.send_pdu(e))
        self.assertEqual(sorted(d for d, _, _ in self.transport.calls), ["other", "remote"])

    def test_never_sends_to_self(self) -> None:
        sender = self.make_sender()
        _result(sender.send_pdu(self.event(), ["us"]))
        _result(sender.send_edu("us", "m.typing", {}))
        self.assertEqual(self.transport.calls, [])


class BackoffTests(SenderTestBase):
    def test_exponential_backoff_capped(self) -> None:
        sender = self.make_sender(min_backoff=10.0, max_backoff=3600.0)
        self.transport.mode = "fail"
        _result(sender.send_pdu(self.event(), ["remote"]))
        self.assertEqual(len(self.transport.calls), 1)
        expected = [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600, 3600]
        for delay in expected:
            before = len(self.transport.calls)
            self.clock.advance(delay - 0.5)
            self.assertEqual(len(self.transport.calls), before)
            self.clock.advance(0.5)
            self.assertEqual(len(self.transport.calls), before + 1, f"retry after {delay}s")
        retry = _result(self.store.get_destination_retry("remote"))
        self.assertEqual(retry.retry_interval_ms, 3_600_000)
        # Not retried early by new events either.
        _result(sender.send_pdu(self.event(), ["remote"]))
        self.assertEqual(len(self.transport.calls), 1 + len(expected))
        # It comes back: the next attempt is at most an hour later, and succeeds.
        self.transport.mode = "ok"
        self.clock.advance(3600)
        self.assertEqual(_result(self.store.get_destinations_with_pending()), set())
        self.assertIsNone(_result(self.store.get_destination_retry("remote")))

    def test_jitter_stays_within_bounds(self) -> None:
        sender = self.make_sender(jitter=0.2, min_backoff=10.0, max_backoff=100.0)
        intervals = []
        previous = None
        for _ in range(50):
            previous = sender._next_interval_ms(previous)
            intervals.append(previous)
        self.assertTrue(8_000 <= intervals[0] <= 12_000)
        self.assertTrue(all(i <= 120_000 for i in intervals))
        self.assertTrue(len(set(intervals)) > 10)

    def test_reset_backoff_sends_at_once(self) -> None:
        sender = self.make_sender()
        self.transport.mode = "fail"
        _result(sender.send_pdu(self.event(), ["remote"]))
        self.clock.advance(10)
        self.clock.advance(20)
        self.assertEqual(len(self.transport.calls), 3)
        self.transport.mode = "ok"
        _result(sender.reset_backoff("remote"))
        self.assertEqual(len(self.transport.calls), 4)
        self.assertIsNone(_result(self.store.get_destination_retry("remote")))
        self.assertEqual(_result(self.store.get_destinations_with_pending()), set())

    def test_failed_transaction_retried_with_same_txn_id(self) -> None:
        # transactions.yaml: retry the same transaction until 200 before another txnId.
        sender = self.make_sender()
        self.transport.mode = "fail"
        _result(sender.send_pdu(self.event(), ["remote"]))
        _result(sender.send_edu("remote", "m.typing", {"n": 1}))
        first = self.transport.calls[-1]
        # Queued after the failure: not part of the retried transaction.
        _result(sender.send_pdu(self.event(), ["remote"]))
        self.transport.mode = "ok"
        self.clock.advance(10)
        retry = self.transport.delivered[0]
        self.assertEqual(retry[1], first[1])
        self.assertEqual(retry[2], first[2])
        self.assertEqual(len(self.transport.delivered), 2)
        self.assertNotEqual(self.transport.delivered[1][1], first[1])
        self.assertEqual(_result(self.store.get_destinations_with_pending()), set())

    def test_timeout_counts_as_failure(self) -> None:
        sender = self.make_sender(txn_timeout=30.0)
        self.transport.mode = "hang"
        _result(sender.send_pdu(self.event(), ["remote"]))
        self.clock.advance(30)
        self.assertIsNotNone(_result(self.store.get_destination_retry("remote")))
        self.assertEqual(_result(self.store.get_destinations_with_pending()), {"remote"})
        self.transport.mode = "ok"
        self.clock.advance(10)
        self.assertEqual(_result(self.store.get_destinations_with_pending()), set())

    def test_one_dead_destination_does_not_block_others(self) -> None:
        sender = self.make_sender()
        self.transport.down.add("dead")
        e = self.event()
        _result(sender.send_pdu(e, ["dead", "alive"]))
        self.assertEqual(self.transport.pdu_ids("alive"), [e])
        self.assertEqual(_result(self.store.get_destinations_with_pending()), {"dead"})


class RecoveryTests(SenderTestBase):
    def test_restart_resumes_pending(self) -> None:
        sender = self.make_sender()
        self.transport.mode = "hang"
        ids = [self.event() for _ in range(3)]
        for e in ids:
            _result(sender.send_pdu(e, ["remote"]))
        # The process dies with a transaction in flight and items queued.
        sender.stop()
        self.transport = FakeTransport()
        self.make_sender()
        self.assertEqual(self.transport.pdu_ids("remote"), ids)
        self.assertEqual(_result(self.store.get_destinations_with_pending()), set())

    def test_wait_idle_after_stop(self) -> None:
        sender = self.make_sender()
        self.assertEqual(_result(sender.wait_idle(5.0)), True)
        self.transport.mode = "hang"
        _result(sender.send_pdu(self.event(), ["remote"]))
        self.assertEqual(sender.in_flight(), frozenset({"remote"}))
        sender.stop()
        idle = sender.wait_idle(5.0)
        self.assertFalse(idle.called)
        self.transport.hanging[0].callback({"pdus": {}})
        self.assertEqual(_result(idle), True)
        self.assertEqual(sender.in_flight(), frozenset())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wait_idle_times_out(self) -> None:
        sender = self.make_sender()
        self.transport.mode = "hang"
        _result(sender.send_pdu(self.event(), ["remote"]))
        sender.stop()
        idle = sender.wait_idle(5.0)
        self.clock.advance(5.0)
        self.assertEqual(_result(idle), False)
        self.assertEqual(sender.in_flight(), frozenset({"remote"}))

    def test_restart_respects_backoff(self) -> None:
        sender = self.make_sender()
        self.transport.mode = "fail"
        _result(sender.send_pdu(self.event(), ["remote"]))
        sender.stop()
        self.transport = FakeTransport()
        self.make_sender()
        self.assertEqual(self.transport.calls, [])
        self.clock.advance(10)
        self.assertEqual(len(self.transport.calls), 1)

    def test_catch_up_sends_latest_per_room(self) -> None:
        other_room = "!other:us"
        _result(self.store.store_room(other_room, "10"))
        sender = self.make_sender(catchup_after=60.0, min_backoff=10.0)
        self.transport.down.add("remote")
        first = self.event()
        _result(sender.send_pdu(first, ["remote"]))
        for delay in (10, 20, 40):  # interval now 80s >= 60s: catch-up mode
            self.clock.advance(delay)
        latest: dict[str, str] = {}
        for i in range(200):
            room = ROOM if i % 2 else other_room
            e = self.event(room=room)
            latest[room] = e
            _result(sender.send_pdu(e, ["remote"]))
        self.transport.down.clear()
        self.clock.advance(80)
        sent = self.transport.pdu_ids("remote")
        self.assertEqual(sorted(sent), sorted(latest.values()))
        self.assertEqual(_result(self.store.get_destinations_with_pending()), set())

    def test_many_dead_destinations_bounded(self) -> None:
        sender = self.make_sender(max_concurrent=8, max_ready=100, max_scheduled=500)
        self.transport.mode = "hang"
        dests = [f"dead{i}.example" for i in range(3000)]
        e = self.event()
        _result(sender.send_pdu(e, dests))
        self.assertLessEqual(len(sender.in_flight()), 8)
        self.assertLessEqual(len(sender._ready), 100)
        # They all fail (time out) over time; RAM stays bounded throughout.
        for _ in range(40):
            self.clock.advance(sender.config.txn_timeout)
            self.assertLessEqual(len(sender.in_flight()), 8)
            self.assertLessEqual(len(sender._ready), 100)
            self.assertLessEqual(len(sender._due), 500)
            self.assertLessEqual(len(sender._scheduled), 1000)
        # Every destination's item is still queued in the store.
        self.assertEqual(_result(self.store.get_destinations_with_pending()), set(dests))
        # Destinations dropped from RAM are found again by the sweep once they recover.
        self.transport.mode = "ok"
        for d in self.transport.hanging:
            d.callback({})
        for _ in range(200):
            self.clock.advance(300)
            if not _result(self.store.get_destinations_with_pending()):
                break
        self.assertEqual(_result(self.store.get_destinations_with_pending()), set())
        self.assertEqual({d for d, _, _ in self.transport.delivered}, set(dests))


class AdapterTests(SenderTestBase):
    def test_client_transport_adapter(self) -> None:
        from fedlib.client.sender import ClientTransactionTransport

        calls: list[tuple[Any, ...]] = []

        class Client:
            def send_transaction(
                self, dest: str, txn_id: str, pdus: Any, edus: Any, origin_server_ts: int
            ) -> Any:
                calls.append((dest, txn_id, list(pdus), list(edus), origin_server_ts))
                return defer.succeed({p["event_id"]: {"error": "nope"} for p in pdus})

        self.transport = ClientTransactionTransport(Client())  # type: ignore[assignment]
        sender = self.make_sender()
        e = self.event()
        _result(sender.send_pdu(e, ["remote"]))
        _result(sender.send_edu("remote", "m.typing", {"x": 1}))
        self.assertEqual([c[2][0]["event_id"] for c in calls[:1]], [e])
        self.assertEqual(calls[1][3], [{"edu_type": "m.typing", "content": {"x": 1}}])
        self.assertEqual(calls[0][4], int(self.clock.seconds() * 1000))
        # A per-PDU error is the remote's verdict, not a delivery failure.
        self.assertEqual(_result(self.store.get_destinations_with_pending()), set())
        self.assertIsNone(_result(self.store.get_destination_retry("remote")))
