"""Filling holes in our copy of a room's DAG from another server.

Used by the server's incoming-PDU pipeline (missing ``prev_events``, missing
auth events, the state at an event whose ancestors we lack) and by the embedder
for history (backfill). Everything fetched goes through
:func:`fedlib.rooms.verify.verify_pdus` and is returned, not persisted: whether
an event is accepted, rejected or stored as an outlier needs the auth checks the
caller runs.

Every call is bounded in time (``timeout``, also for the sum of the fetches it
makes) and in count (the limits of :class:`GapConfig`). Remote failures and
malformed answers are :class:`~fedlib.errors.MatrixError`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from fedlib.errors import BadJsonError, MatrixError, NotFoundError
from fedlib.rooms.verify import PduCheckResult, verify_pdus
from fedlib.storage.interface import StateKey

__all__ = ["GapConfig", "GapFiller", "StateAtEvent", "remote_error"]

log = logging.getLogger(__name__)


@attrs.frozen(slots=True)
class GapConfig:
    """Limits of :class:`GapFiller`; times in seconds."""

    #: Default bound on one remote request.
    timeout: float = 30.0
    #: ``/event`` requests in flight at once for one fetch.
    fetch_concurrency: int = 10
    #: Most events asked of ``/get_missing_events`` (the spec's default is 10).
    max_missing_events: int = 100
    #: Most events taken from one ``/backfill``.
    max_backfill: int = 1000
    #: Most IDs accepted from ``/state_ids`` (state plus auth chain).
    max_state_ids: int = 200_000
    #: Most events fetched one by one with ``/event`` for a single call.
    max_event_fetches: int = 5000
    #: When more events than this are missing for :meth:`GapFiller.fetch_state_at`,
    #: they are taken from one ``/state`` answer instead of one ``/event`` each.
    bulk_state_threshold: int = 100


@attrs.frozen(slots=True)
class StateAtEvent:
    """The room state at an event as a remote server told it.

    ``state`` maps (type, state_key) to event ID; ``events`` holds the verified
    events we fetched because we lacked them (state and auth chain), by ID. Events
    we already had are in ``state`` but not in ``events``.
    """

    state: Mapping[StateKey, str]
    auth_chain_ids: frozenset[str]
    events: Mapping[str, PduCheckResult]


def remote_error(origin: str, failure_or_exc: Any, what: str) -> MatrixError:
    """A :class:`MatrixError` naming ``origin`` and what failed, from any failure."""
    exc = getattr(failure_or_exc, "value", failure_or_exc)
    if isinstance(exc, defer.TimeoutError | defer.CancelledError):
        return MatrixError(504, "M_UNKNOWN", f"{origin}: {what} timed out")
    if isinstance(exc, MatrixError):
        return MatrixError(
            exc.code if 400 <= exc.code < 600 else 502,
            exc.errcode,
            f"{origin}: {what} failed: {exc.msg}"[:500],
        )
    return MatrixError(502, "M_UNKNOWN", f"{origin}: {what} failed: {exc!r}"[:500])


def call_remote(
    clock: IReactorTime, timeout: float, origin: str, what: str, fn: Any, *args: Any, **kw: Any
) -> defer.Deferred[Any]:
    """Call ``fn`` (a client method), bounded by ``timeout``; every failure becomes a
    :class:`MatrixError` saying which server and call failed."""
    d = defer.maybeDeferred(fn, *args, **kw)
    d.addTimeout(timeout, clock)

    def fail(f: Any) -> Any:
        raise remote_error(origin, f, what)

    return d.addErrback(fail)


def _pdu_list(value: object, origin: str, what: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise BadJsonError(f"{origin}: {what} answer is not a list of events")
    return list(value)


def _str_list(value: object, origin: str, what: str, limit: int) -> list[str]:
    if not isinstance(value, list | tuple):
        raise BadJsonError(f"{origin}: {what} answer is not a list of event IDs")
    value = list(value)
    if len(value) > limit:
        raise BadJsonError(f"{origin}: {what} answer lists more than {limit} IDs")
    if not all(isinstance(v, str) and len(v) <= 255 for v in value):
        raise BadJsonError(f"{origin}: {what} answer holds a malformed event ID")
    return value


class GapFiller:
    """Fetches and verifies events we lack from other servers.

    ``client`` is a ``fedlib.client.transport.FederationClient`` (or anything with
    its ``get_missing_events``, ``get_event``, ``get_event_auth``,
    ``get_state_ids`` and ``backfill`` methods returning Deferred response bodies);
    ``store`` provides ``IFederationStore``; ``keyring`` provides ``IKeyring``.
    """

    def __init__(
        self,
        client: Any,
        store: Any,
        keyring: Any,
        clock: IReactorTime | None = None,
        config: GapConfig | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor  # type: ignore[assignment]
        self._client = client
        self._store = store
        self._keyring = keyring
        self._clock: IReactorTime = clock  # type: ignore[assignment]
        self.config = config or GapConfig()

    @defer.inlineCallbacks
    def _room_version(self, room_id: str) -> Any:
        version = yield self._store.get_room_version(room_id)
        if version is None:
            raise NotFoundError(f"Unknown room {room_id}")
        return version

    def _ok_results(
        self, origin: str, what: str, results: Sequence[PduCheckResult]
    ) -> list[PduCheckResult]:
        ok = []
        for r in results:
            if r.ok:
                ok.append(r)
            else:
                log.info("Dropped event %s from %s (%s): %s", r.event_id, origin, what, r.error)
        return ok

    @defer.inlineCallbacks
    def fetch_missing_prev_events(
        self,
        origin: str,
        room_id: str,
        event: Mapping[str, Any],
        event_id: str,
        min_depth: int = 0,
        limit: int = 10,
        timeout: float | None = None,
    ) -> Any:
        """Deferred[list[PduCheckResult]]: events between our forward extremities and
        ``event`` (whose ID is ``event_id``), from ``/get_missing_events``, verified,
        oldest first, without those we already have. At most ``limit`` (capped by
        ``config.max_missing_events``)."""
        limit = max(1, min(limit, self.config.max_missing_events))
        version = yield self._room_version(room_id)
        earliest = yield self._store.get_forward_extremities(room_id)
        what = "get_missing_events"
        body = yield call_remote(
            self._clock,
            timeout or self.config.timeout,
            origin,
            what,
            self._client.get_missing_events,
            origin,
            room_id,
            earliest_events=sorted(earliest),
            latest_events=[event_id],
            limit=limit,
            min_depth=min_depth,
            room_version=version,
        )
        pdus = _pdu_list(body, origin, what)[:limit]
        results = yield verify_pdus(self._keyring, version, pdus, room_id=room_id)
        ok = self._ok_results(origin, what, results)
        have = yield self._store.have_seen([r.event_id for r in ok if r.event_id])
        fresh = {r.event_id: r for r in ok if r.event_id not in have and r.event_id != event_id}
        return sorted(fresh.values(), key=_depth_key)

    @defer.inlineCallbacks
    def fetch_events(
        self,
        origin: str,
        room_id: str,
        event_ids: Iterable[str],
        timeout: float | None = None,
    ) -> Any:
        """Deferred[dict[event_id, PduCheckResult]]: those of ``event_ids`` that
        ``origin`` served with ``/event`` and that passed verification (and really
        have the asked-for ID). The others are left out; the caller decides
        whether that is fatal. ``timeout`` bounds the whole call."""
        ids = list(dict.fromkeys(event_ids))
        if len(ids) > self.config.max_event_fetches:
            raise MatrixError(
                502,
                "M_UNKNOWN",
                f"{origin}: {len(ids)} events to fetch; refusing more than "
                f"{self.config.max_event_fetches}",
            )
        version = yield self._room_version(room_id)
        per_call = timeout or self.config.timeout
        pdus: dict[str, object] = {}
        sem = defer.DeferredSemaphore(max(1, self.config.fetch_concurrency))

        @defer.inlineCallbacks
        def fetch(event_id: str) -> Any:
            try:
                pdu = yield call_remote(
                    self._clock,
                    per_call,
                    origin,
                    "get_event",
                    self._client.get_event,
                    origin,
                    event_id,
                    room_version=version,
                )
                pdus[event_id] = pdu
            except MatrixError as e:
                log.info("Could not fetch %s from %s: %s", event_id, origin, e.msg)

        work = defer.gatherResults([sem.run(fetch, e) for e in ids], consumeErrors=True)
        # One deadline for the whole fetch. Cancelling ``work`` makes every pending
        # fetch fail (and be swallowed above), so remember why it stopped.
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            work.cancel()

        deadline = self._clock.callLater(per_call * 4, expire)
        with contextlib.suppress(defer.CancelledError):
            yield work
        if deadline.active():
            deadline.cancel()
        if expired:
            raise MatrixError(504, "M_UNKNOWN", f"{origin}: fetching events timed out")
        wanted = list(pdus)
        results = yield verify_pdus(
            self._keyring, version, [pdus[e] for e in wanted], room_id=room_id, clock=self._clock
        )
        found: dict[str, PduCheckResult] = {}
        for asked, r in zip(wanted, results, strict=True):
            if not r.ok:
                log.info("Dropped event %s from %s: %s", asked, origin, r.error)
            elif r.event_id != asked:
                # A server answering /event/A with event B is lying about A.
                log.info("%s answered /event/%s with %s", origin, asked, r.event_id)
            else:
                found[asked] = r
        return found

    def fetch_auth_events(
        self, origin: str, room_id: str, event_ids: Iterable[str], timeout: float | None = None
    ) -> defer.Deferred[dict[str, PduCheckResult]]:
        """Deferred[dict[event_id, PduCheckResult]]: the given auth events, fetched
        with ``/event`` and verified (see :meth:`fetch_events`)."""
        return self.fetch_events(origin, room_id, event_ids, timeout)

    @defer.inlineCallbacks
    def fetch_auth_chain(
        self, origin: str, room_id: str, event_id: str, timeout: float | None = None
    ) -> Any:
        """Deferred[dict[event_id, PduCheckResult]]: the auth chain of ``event_id``
        from ``/event_auth``, verified; events that fail verification are left out."""
        version = yield self._room_version(room_id)
        what = "event_auth"
        body = yield call_remote(
            self._clock,
            timeout or self.config.timeout,
            origin,
            what,
            self._client.get_event_auth,
            origin,
            room_id,
            event_id,
            room_version=version,
        )
        pdus = _pdu_list(body, origin, what)
        if len(pdus) > self.config.max_state_ids:
            raise BadJsonError(f"{origin}: auth chain of {len(pdus)} events is too long")
        results = yield verify_pdus(
            self._keyring, version, pdus, room_id=room_id, clock=self._clock
        )
        return {r.event_id: r for r in self._ok_results(origin, what, results) if r.event_id}

    @defer.inlineCallbacks
    def fetch_state_at(
        self, origin: str, room_id: str, event_id: str, timeout: float | None = None
    ) -> Any:
        """Deferred[StateAtEvent]: the state before ``event_id`` per ``origin``.

        Asks ``/state_ids`` and then fetches only the events we lack (with
        ``/event``, or one ``/state`` when many are missing). Fails with a
        :class:`MatrixError` when a state event cannot be obtained or verified, or
        the answer is inconsistent (a non-state event, two events for one key).
        """
        cfg = self.config
        what = "state_ids"
        body = yield call_remote(
            self._clock,
            timeout or cfg.timeout,
            origin,
            what,
            self._client.get_state_ids,
            origin,
            room_id,
            event_id,
        )
        pdu_ids = _str_list(getattr(body, "pdu_ids", None), origin, what, cfg.max_state_ids)
        chain_ids = _str_list(
            getattr(body, "auth_chain_ids", None), origin, what, cfg.max_state_ids
        )
        wanted = list(dict.fromkeys(pdu_ids + chain_ids))
        have = yield self._store.have_seen(wanted)
        missing = [e for e in wanted if e not in have]
        fetched: dict[str, PduCheckResult] = {}
        if len(missing) > cfg.bulk_state_threshold:
            # Many events one by one is slow for both sides: take them all from /state.
            fetched = yield self._fetch_state_bulk(origin, room_id, event_id, missing, timeout)
        elif missing:
            fetched = yield self.fetch_events(origin, room_id, missing, timeout)
        lost = [e for e in pdu_ids if e not in have and e not in fetched]
        if lost:
            raise MatrixError(
                502,
                "M_UNKNOWN",
                f"{origin}: could not obtain {len(lost)} state event(s) at {event_id}, "
                f"e.g. {lost[0]}",
            )
        local = yield self._store.get_events([e for e in pdu_ids if e in have])
        state: dict[StateKey, str] = {}
        for state_id in pdu_ids:
            ev = fetched[state_id].event if state_id in fetched else None
            if ev is None and state_id in local:
                ev = local[state_id].event
            if ev is None:  # purged between the two store reads
                raise MatrixError(502, "M_UNKNOWN", f"State event {state_id} vanished")
            etype, skey = ev.get("type"), ev.get("state_key")
            if not isinstance(etype, str) or not isinstance(skey, str):
                raise BadJsonError(f"{origin}: {state_id} in the state is not a state event")
            if (etype, skey) in state:
                raise BadJsonError(f"{origin}: two state events for {(etype, skey)}")
            state[(etype, skey)] = state_id
        return StateAtEvent(state=state, auth_chain_ids=frozenset(chain_ids), events=fetched)

    @defer.inlineCallbacks
    def _fetch_state_bulk(
        self,
        origin: str,
        room_id: str,
        event_id: str,
        wanted: Sequence[str],
        timeout: float | None,
    ) -> Any:
        """The ``wanted`` events among ``/state`` at ``event_id`` (state and auth
        chain), verified; only those are checked, the rest of the answer is ignored."""
        version = yield self._room_version(room_id)
        what = "state"
        body = yield call_remote(
            self._clock,
            (timeout or self.config.timeout) * 4,
            origin,
            what,
            self._client.get_state,
            origin,
            room_id,
            event_id,
            room_version=version,
        )
        pdus = _pdu_list(getattr(body, "pdus", None), origin, what)
        chain = _pdu_list(getattr(body, "auth_chain", None), origin, what)
        if len(pdus) + len(chain) > 2 * self.config.max_state_ids:
            raise BadJsonError(f"{origin}: /state answer is too large")
        results = yield verify_pdus(
            self._keyring, version, pdus + chain, room_id=room_id, clock=self._clock
        )
        want = set(wanted)
        return {
            r.event_id: r for r in self._ok_results(origin, what, results) if r.event_id in want
        }

    @defer.inlineCallbacks
    def backfill(
        self,
        origin: str,
        room_id: str,
        from_ids: Iterable[str],
        limit: int,
        timeout: float | None = None,
    ) -> Any:
        """Deferred[list[PduCheckResult]]: up to ``limit`` verified events before
        ``from_ids`` from ``/backfill``, newest first, without those we have."""
        limit = max(1, min(limit, self.config.max_backfill))
        from_list = list(from_ids)
        if not from_list:
            return []
        version = yield self._room_version(room_id)
        what = "backfill"
        body = yield call_remote(
            self._clock,
            timeout or self.config.timeout,
            origin,
            what,
            self._client.backfill,
            origin,
            room_id,
            from_list,
            limit,
            room_version=version,
        )
        pdus = _pdu_list(body, origin, what)[:limit]
        results = yield verify_pdus(self._keyring, version, pdus, room_id=room_id)
        ok = self._ok_results(origin, what, results)
        have = yield self._store.have_seen([r.event_id for r in ok if r.event_id])
        fresh = {r.event_id: r for r in ok if r.event_id not in have}
        return sorted(fresh.values(), key=_depth_key, reverse=True)


def _depth_key(result: PduCheckResult) -> tuple[int, str]:
    event = result.event or {}
    depth = event.get("depth")
    return (depth if isinstance(depth, int) else 0, result.event_id or "")
