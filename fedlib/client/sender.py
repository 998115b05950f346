"""The outbound transaction sender.

Every PDU and EDU we send goes through a per-destination queue kept in the store
(``IFederationStore.enqueue_pdus`` / ``enqueue_edu``), so nothing the embedder
handed us is lost on restart. For each destination at most one transaction is
in flight; a transaction carries at most 50 PDUs and 100 EDUs (spec,
"Transactions").

Failures back off exponentially with jitter, capped at :attr:`SenderConfig.max_backoff`
so a server that was down for a day is retried within that cap of coming back
(no multi-day cliff). The backoff state lives in the store too. A destination
that has failed for long enough is in *catch-up*: before its next attempt its
PDU queue is collapsed to the latest event per room, and the remote fills the
gap with ``/get_missing_events``, instead of replaying an unbounded backlog.

Memory stays bounded with thousands of unreachable destinations: in RAM there
are only the destinations being sent to (at most ``max_concurrent``), a bounded
ready queue, and a bounded heap of retry times; anything that falls out of
those is found again by a periodic sweep of the store.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import Interface, implementer

from fedlib.errors import MatrixError
from fedlib.storage.interface import OutboundBatch

__all__ = [
    "ClientTransactionTransport",
    "ITransactionTransport",
    "SenderConfig",
    "TransactionSender",
]

log = logging.getLogger(__name__)

#: Spec limits per transaction.
MAX_PDUS_PER_TXN = 50
MAX_EDUS_PER_TXN = 100

#: Failed transactions remembered for a retry under the same txnId (IDs only).
_MAX_PENDING_TXNS = 10_000


@attrs.frozen(slots=True)
class _PendingTxn:
    """A transaction whose send failed: what its retry must repeat."""

    txn_id: str
    origin_server_ts: int
    pdu_positions: frozenset[int]
    edu_positions: frozenset[int]
    max_stream_ordering: int | None


class ITransactionTransport(Interface):
    """Delivers one transaction (``PUT /_matrix/federation/v1/send/{txnId}``)."""

    def send_transaction(destination: str, txn_id: str, transaction: Mapping[str, Any]) -> Any:
        """Deferred firing with the response body (``{"pdus": {event_id: result}}``)
        when the destination answered 200, failing otherwise."""


@implementer(ITransactionTransport)
@attrs.frozen(slots=True)
class ClientTransactionTransport:
    """Adapts a ``fedlib.client.transport.FederationClient`` to :class:`ITransactionTransport`."""

    client: Any

    def send_transaction(
        self, destination: str, txn_id: str, transaction: Mapping[str, Any]
    ) -> Any:
        d = self.client.send_transaction(
            destination,
            txn_id,
            transaction["pdus"],
            transaction["edus"],
            origin_server_ts=transaction["origin_server_ts"],
        )
        # FederationClient answers the per-PDU results alone; rewrap them as the body.
        return d.addCallback(lambda results: {"pdus": results})


@attrs.frozen(slots=True)
class SenderConfig:
    """Tunables of :class:`TransactionSender`; times in seconds."""

    #: First retry delay after a failure.
    min_backoff: float = 10.0
    #: Upper bound of the retry delay (before jitter).
    max_backoff: float = 3600.0
    #: Retry delays are multiplied by a uniform factor in [1 - jitter, 1 + jitter].
    jitter: float = 0.2
    #: Once the retry interval reaches this, queued PDUs are collapsed to the
    #: latest per room before the next attempt.
    catchup_after: float = 60.0
    #: Give up waiting for one transaction after this long.
    txn_timeout: float = 120.0
    #: Destinations sent to at the same time.
    max_concurrent: int = 64
    #: Destinations remembered as ready to send while all slots are busy.
    max_ready: int = 10_000
    #: Retry times remembered in RAM; more are found by the sweep.
    max_scheduled: int = 10_000
    #: How often the store is swept for destinations with pending items.
    sweep_interval: float = 300.0
    #: Identifies this sender's queue leases; keep it stable across restarts so a
    #: restarted sender re-claims its own in-flight batch at once.
    instance_name: str = "sender"
    #: Lease on a destination's queue; longer than ``txn_timeout``.
    lease_ms: int = 180_000


class TransactionSender:
    """Sends queued PDUs and EDUs to other servers in transactions.

    ``store`` provides ``IFederationStore``; ``transport`` provides
    :class:`ITransactionTransport`; ``clock`` is the reactor (or a
    ``twisted.internet.task.Clock`` in tests); ``rng`` supplies jitter. Call :meth:`start` once to resume what a previous run
    left queued, and :meth:`stop` on shutdown.
    """

    def __init__(
        self,
        server_name: str,
        store: Any,
        transport: Any,
        clock: IReactorTime,
        config: SenderConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.server_name = server_name
        self._store = store
        self._transport = transport
        self._clock = clock
        self.config = config or SenderConfig()
        self._rng = rng or random.Random()
        self._counter = itertools.count()
        #: Destinations with a send loop running.
        self._active: set[str] = set()
        #: Destinations that got new items while their loop ran: loop once more.
        self._poked: set[str] = set()
        #: Destinations waiting for a free slot (insertion order = fairness).
        self._ready: OrderedDict[str, None] = OrderedDict()
        #: (due time in seconds, destination) of destinations backing off.
        self._scheduled: list[tuple[float, str]] = []
        #: destination -> its due time in ``_scheduled`` (heap entries that do not
        #: match are stale and skipped).
        self._due: dict[str, float] = {}
        self._timer: IDelayedCall | None = None
        self._sweep_call: IDelayedCall | None = None
        self._running = False
        #: Deferreds of :meth:`wait_idle` callers, fired when no loop runs.
        self._idle_waiters: list[defer.Deferred[bool]] = []
        #: destination -> the transaction whose send failed, to be retried under the
        #: same txnId with the same contents (transactions.yaml: retry until 200
        #: before using another txnId). IDs only, and at most
        #: ``_MAX_PENDING_TXNS`` destinations (least recently failed dropped).
        self._pending: OrderedDict[str, _PendingTxn] = OrderedDict()

    # -- public API ------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Resume every destination with items left in the store (restart recovery)."""
        self._running = True
        return self._sweep()

    def stop(self) -> None:
        """Stop scheduling; in-flight transactions finish or time out on their own."""
        self._running = False
        for call in (self._timer, self._sweep_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._sweep_call = None
        self._ready.clear()
        self._scheduled.clear()
        self._due.clear()

    def in_flight(self) -> frozenset[str]:
        """Destinations with a send loop running (a transaction being built, on the
        wire or awaiting its answer)."""
        return frozenset(self._active)

    def wait_idle(self, timeout: float) -> defer.Deferred[bool]:
        """Fires with ``True`` once no send loop runs, or with ``False`` when some
        still run after ``timeout`` seconds (they go on; unacknowledged items stay
        queued in the store). After :meth:`stop` no new loops start, so this waits
        for the transactions already in flight."""
        if not self._active:
            return defer.succeed(True)
        d: defer.Deferred[bool] = defer.Deferred()
        self._idle_waiters.append(d)

        def expire() -> None:
            self._idle_waiters.remove(d)
            d.callback(False)

        call = self._clock.callLater(timeout, expire)

        def disarm(result: bool) -> bool:
            if call.active():
                call.cancel()
            return result

        d.addCallback(disarm)
        return d

    @defer.inlineCallbacks
    def send_pdu(self, event_id: str, destinations: Iterable[str] | None = None) -> Any:
        """Queue the stored event ``event_id`` for ``destinations``.

        When ``destinations`` is ``None`` the event goes to every other server with
        a joined member in its room. The Deferred fires once the event is queued in
        the store: from then on it survives a restart.
        """
        if destinations is None:
            stored = yield self._store.get_events([event_id])
            if event_id not in stored:
                raise ValueError(f"Unknown event {event_id}")
            destinations = yield self._store.get_joined_servers(stored[event_id].room_id)
        dests = sorted({d for d in destinations if d != self.server_name})
        if not dests:
            return
        yield self._store.enqueue_pdus(dests, [event_id])
        for dest in dests:
            self._wake(dest)

    @defer.inlineCallbacks
    def send_edu(self, destination: str, edu_type: str, content: Mapping[str, Any]) -> Any:
        """Queue an EDU for ``destination``; fires once it is in the store."""
        if destination == self.server_name:
            return
        yield self._store.enqueue_edu(destination, {"edu_type": edu_type, "content": content})
        self._wake(destination)

    @defer.inlineCallbacks
    def reset_backoff(self, destination: str) -> Any:
        """Forget ``destination``'s failures and send to it now.

        Call when a valid signed request arrives from it: it is evidently back.
        """
        self._due.pop(destination, None)  # its heap entry goes stale
        retry = yield self._store.get_destination_retry(destination)
        if retry is not None:
            yield self._store.reset_destination_retry(destination)
            self._wake(destination)

    # -- scheduling ------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _wake(self, destination: str) -> None:
        if not self._running:
            return
        due = self._due.get(destination)
        if due is not None and due > self._clock.seconds():
            return  # backing off; its timer (or reset_backoff) wakes it
        if destination in self._active:
            self._poked.add(destination)
            return
        if len(self._active) < self.config.max_concurrent:
            self._launch(destination)
        elif destination not in self._ready and len(self._ready) < self.config.max_ready:
            self._ready[destination] = None
        # else: dropped; the periodic sweep finds it again in the store.

    def _launch(self, destination: str) -> None:
        self._active.add(destination)
        d = self._run(destination)
        d.addErrback(self._log_loop_failure, destination)
        d.addBoth(self._loop_done, destination)

    def _log_loop_failure(self, failure: Any, destination: str) -> None:
        log.error("Sender loop for %s failed: %s", destination, failure.getErrorMessage())

    def _loop_done(self, _: object, destination: str) -> None:
        self._active.discard(destination)
        if destination in self._poked:
            self._poked.discard(destination)
            self._wake(destination)
        while self._ready and len(self._active) < self.config.max_concurrent:
            dest, _none = self._ready.popitem(last=False)
            if dest not in self._active:
                self._launch(dest)
        if not self._active and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(True)

    def _schedule_retry(self, destination: str, due: float) -> None:
        known = self._due.get(destination)
        if known is not None and known <= due:
            return
        if len(self._due) >= self.config.max_scheduled:
            return  # the sweep will find it
        if len(self._scheduled) >= 2 * self.config.max_scheduled:
            # Too many stale entries: rebuild from the live ones.
            self._scheduled = [(t, d) for d, t in self._due.items()]
            heapq.heapify(self._scheduled)
        self._due[destination] = due
        heapq.heappush(self._scheduled, (due, destination))
        self._arm_timer()

    def _arm_timer(self) -> None:
        if not self._scheduled or not self._running:
            return
        due = self._scheduled[0][0]
        delay = max(0.0, due - self._clock.seconds())
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= due:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, self._fire_timer)

    def _fire_timer(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        while self._scheduled and self._scheduled[0][0] <= now:
            due, dest = heapq.heappop(self._scheduled)
            if self._due.get(dest) == due:
                del self._due[dest]
                self._wake(dest)
        self._arm_timer()

    @defer.inlineCallbacks
    def _sweep(self) -> Any:
        """Wake every destination with pending items whose backoff has expired, and
        remember when the others are due."""
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        try:
            pending = yield self._store.get_destinations_with_pending()
            now_ms = self._now_ms()
            for dest in sorted(pending):
                if not self._running:
                    return
                if dest in self._active:
                    continue
                retry = yield self._store.get_destination_retry(dest)
                if retry is None or retry.failure_ts + retry.retry_interval_ms <= now_ms:
                    self._wake(dest)
                else:
                    self._schedule_retry(dest, (retry.failure_ts + retry.retry_interval_ms) / 1000)
        except Exception:
            log.exception("Sweeping the outbound queues failed")
        finally:
            if self._running:
                self._sweep_call = self._clock.callLater(self.config.sweep_interval, self._sweep)

    # -- one destination -------------------------------------------------------

    def _next_interval_ms(self, previous_ms: int | None) -> int:
        cfg = self.config
        base = (
            cfg.min_backoff
            if previous_ms is None
            else min(cfg.max_backoff, max(cfg.min_backoff, previous_ms / 1000 * 2))
        )
        factor = 1 + self._rng.uniform(-cfg.jitter, cfg.jitter)
        return int(min(cfg.max_backoff * (1 + cfg.jitter), base * factor) * 1000)

    def _new_txn_id(self) -> str:
        # Milliseconds + counter keep IDs unique within a run; the OS-random salt
        # keeps them unique across restarts even with a clock that went backwards.
        return f"{self._now_ms()}.{next(self._counter)}.{secrets.token_hex(4)}"

    def _same_transaction(
        self, destination: str, batch: OutboundBatch
    ) -> tuple[OutboundBatch, _PendingTxn | None]:
        """``batch`` cut down to the failed transaction being retried, with its
        record; ``batch`` and ``None`` when there is none or its items are no
        longer all queued (collapsed for catch-up, or delivered by another
        instance): then the contents differ and a new txnId is right."""
        pending = self._pending.pop(destination, None)
        if pending is None:
            return batch, None
        pdus = tuple(p for p in batch.pdus if p.position in pending.pdu_positions)
        edus = tuple(e for e in batch.edus if e.position in pending.edu_positions)
        if len(pdus) != len(pending.pdu_positions) or len(edus) != len(pending.edu_positions):
            return batch, None
        if len(pdus) == len(batch.pdus) and len(edus) == len(batch.edus):
            return batch, pending
        return attrs.evolve(
            batch, pdus=pdus, edus=edus, max_stream_ordering=pending.max_stream_ordering
        ), pending

    @defer.inlineCallbacks
    def _run(self, destination: str) -> Any:
        """Send batches to ``destination`` until its queue is empty or a send fails."""
        store = self._store
        cfg = self.config
        while self._running:
            self._poked.discard(destination)
            retry = yield store.get_destination_retry(destination)
            if retry is not None:
                due_ms = retry.failure_ts + retry.retry_interval_ms
                if due_ms > self._now_ms():
                    self._schedule_retry(destination, due_ms / 1000)
                    return
                if retry.retry_interval_ms >= cfg.catchup_after * 1000:
                    dropped = yield store.collapse_pdu_queue(destination)
                    if dropped:
                        log.info("Catch-up for %s: skipped %d queued PDUs", destination, dropped)
            batch: OutboundBatch | None = yield store.claim_next_batch(
                destination,
                cfg.instance_name,
                max_pdus=MAX_PDUS_PER_TXN,
                max_edus=MAX_EDUS_PER_TXN,
                lease_ms=cfg.lease_ms,
            )
            if batch is None:
                return
            batch, pending = self._same_transaction(destination, batch)
            ok = yield self._send_batch(destination, batch, pending)
            if not ok:
                interval = self._next_interval_ms(retry.retry_interval_ms if retry else None)
                now_ms = self._now_ms()
                yield store.release_batch(destination, batch)
                yield store.set_destination_retry(destination, now_ms, interval)
                self._schedule_retry(destination, (now_ms + interval) / 1000)
                return
            yield store.ack_batch(destination, batch)
            if retry is not None:
                yield store.reset_destination_retry(destination)

    @defer.inlineCallbacks
    def _send_batch(
        self, destination: str, batch: OutboundBatch, pending: _PendingTxn | None = None
    ) -> Any:
        stored = yield self._store.get_events(batch.event_ids)
        # An event missing from the store (purged) cannot be sent; drop it with the batch.
        pdus = [dict(stored[e].event) for e in batch.event_ids if e in stored]
        for pdu in pdus:
            pdu.pop("unsigned", None)
        if pending is not None:
            txn_id, ts = pending.txn_id, pending.origin_server_ts
        else:
            txn_id, ts = self._new_txn_id(), self._now_ms()
        transaction = {
            "origin": self.server_name,
            "origin_server_ts": ts,
            "pdus": pdus,
            "edus": [dict(e.edu) for e in batch.edus],
        }
        try:
            d = defer.maybeDeferred(
                self._transport.send_transaction, destination, txn_id, transaction
            )
            d.addTimeout(self.config.txn_timeout, self._clock)
            response = yield d
        except Exception as e:
            reason = e.msg if isinstance(e, MatrixError) else repr(e)
            log.info("Transaction %s to %s failed: %s", txn_id, destination, reason)
            self._pending[destination] = _PendingTxn(
                txn_id,
                ts,
                frozenset(p.position for p in batch.pdus),
                frozenset(e.position for e in batch.edus),
                batch.max_stream_ordering,
            )
            while len(self._pending) > _MAX_PENDING_TXNS:
                self._pending.popitem(last=False)
            return False
        results = response.get("pdus") if isinstance(response, dict) else None
        if isinstance(results, dict):
            for event_id, result in results.items():
                if isinstance(result, dict) and "error" in result:
                    # The remote rejected the PDU itself; resending would not help.
                    log.info("%s rejected %s: %.200s", destination, event_id, result["error"])
        return True
