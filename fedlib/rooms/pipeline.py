"""The state checks and persistence every incoming PDU goes through.

Shared by ``/send``, ``send_join``, ``send_knock``, ``send_leave`` and ``invite``.
The caller has already run :func:`fedlib.rooms.verify.verify_pdus` (format,
signatures, content hash); this module does the spec's "Checks performed on
receipt of a PDU" steps 4-6:

4. auth against the event's own ``auth_events`` (missing ones fetched from the
   origin through the gap filler and stored as outliers);
5. auth against the state before the event, i.e. state resolution over the
   states after its ``prev_events`` (missing prev events fetched with
   ``/get_missing_events``, the state at what remains with ``/state_ids``) -
   failure rejects the event;
6. auth against the room's current state - failure soft-fails it.

Then the event is persisted with its status and state, which moves the forward
extremities and current state in the store, and the embedder's hooks hear of it.

Processing is serialised per room (one :class:`~twisted.internet.defer.DeferredLock`
per room) and rooms proceed in parallel. Remote fetches for one PDU share a
deadline, so a slow origin costs at most ``pdu_timeout`` per PDU and never
blocks other rooms. Resolutions over many events run in a thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedlib.auth.rules import auth_types_with, check_auth_events_list, check_auth_with
from fedlib.errors import AuthError, MatrixError, StateResolutionError
from fedlib.events.event import ref_ids
from fedlib.events.hashing import event_id_with
from fedlib.events.room_versions import RoomVersion, get_room_version
from fedlib.storage.interface import EventStatus, PersistItem, StateRef

__all__ = ["IncomingPduPipeline", "PduOutcome"]

log = Logger()

StateKey = tuple[str, str]
CREATE_KEY: StateKey = ("m.room.create", "")
Notify = Callable[..., Awaitable[Any]]

#: Resolutions touching more events than this run in a thread.
THREAD_THRESHOLD = 500
#: Events kept for auth checks.
CACHE_SIZE = 5_000
#: Events accepted from one /get_missing_events answer.
MAX_MISSING_EVENTS = 100


@attrs.frozen(slots=True)
class PduOutcome:
    """What became of one PDU. ``status`` is ``None`` when nothing was stored."""

    event_id: str
    status: EventStatus | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in (EventStatus.ACCEPTED, EventStatus.SOFT_FAILED)


class _Deadline:
    def __init__(self, clock: IReactorTime, seconds: float) -> None:
        self.clock = clock
        self.at = clock.seconds() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock.seconds())

    async def run(self, d: Any) -> Any:
        """Await ``d`` (a Deferred) no longer than the deadline allows."""
        if not isinstance(d, defer.Deferred):
            d = defer.ensureDeferred(d) if hasattr(d, "__await__") else defer.succeed(d)
        remaining = self.remaining()
        if remaining <= 0:
            d.addErrback(lambda _: None)  # its failure is superseded by the timeout
            d.cancel()
            raise defer.TimeoutError("PDU processing deadline passed")
        d.addTimeout(remaining, self.clock)
        return await d


def _depth(event: Mapping[str, Any]) -> int:
    d = event.get("depth")
    return d if isinstance(d, int) and not isinstance(d, bool) else 0


def _state_key(event: Mapping[str, Any]) -> StateKey | None:
    t, sk = event.get("type"), event.get("state_key")
    return (t, sk) if isinstance(t, str) and isinstance(sk, str) else None


@attrs.define(slots=True)
class _Batch:
    """Decided events of one linear run of a room's PDUs, persisted together.

    While each PDU extends the previous accepted one (its only prev event), the
    state before it and the room's current state are both the state after that
    tip, so they need no store reads, and the run costs one write.
    """

    #: Each event to persist with the state before it as a map (for the hooks).
    items: list[tuple[PersistItem, dict[StateKey, str]]] = attrs.field(factory=list)
    tip_id: str | None = None
    tip_state: dict[StateKey, str] = attrs.field(factory=dict)
    outcomes: dict[str, PduOutcome] = attrs.field(factory=dict)

    def extends_tip(self, event: Mapping[str, Any]) -> bool:
        return self.tip_id is not None and ref_ids(event.get("prev_events")) == [self.tip_id]


class IncomingPduPipeline:
    """Steps 4-6 and persistence for PDUs of rooms this server is in.

    ``store`` provides ``IFederationStore``; ``gaps`` is a gap filler with
    ``fetch_auth_events``, ``fetch_missing_prev_events`` and ``fetch_state_at``
    (or ``None``: nothing is fetched and events with gaps are refused);
    ``notify(hook_name, *args)`` calls an embedder hook.
    """

    def __init__(
        self,
        store: Any,
        clock: IReactorTime,
        notify: Notify,
        gaps: Any = None,
        *,
        pdu_timeout: float = 60.0,
        thread_threshold: int = THREAD_THRESHOLD,
    ) -> None:
        self.store = store
        self.clock = clock
        self.notify = notify
        self.gaps = gaps
        self.pdu_timeout = pdu_timeout
        self.thread_threshold = thread_threshold
        self._locks: dict[str, tuple[defer.DeferredLock, int]] = {}
        # Stored events are immutable and a rejection is final, so the state
        # events auth checks read can be kept: (event, rejected) by ID, least
        # recent first. Only state events: nothing else is ever an auth event.
        self._cache: OrderedDict[str, tuple[Mapping[str, Any], bool]] = OrderedDict()
        # Events each room's current run has persisted through gap filling.
        self._fresh: dict[str, set[str]] = {}
        # Whether each room being processed has partial state (read once per run).
        self._partial: dict[str, bool] = {}
        self._creates: dict[str, tuple[str, Mapping[str, Any]]] = {}

    # -- per-room serialisation -----------------------------------------------

    async def _locked(self, room_id: str, work: Callable[[], Awaitable[Any]]) -> Any:
        lock, users = self._locks.get(room_id, (defer.DeferredLock(), 0))
        self._locks[room_id] = (lock, users + 1)
        try:
            await lock.acquire()
            try:
                return await work()
            finally:
                lock.release()
        finally:
            lock, users = self._locks[room_id]
            if users <= 1:
                del self._locks[room_id]
            else:
                self._locks[room_id] = (lock, users - 1)

    # -- public API ------------------------------------------------------------

    async def process(
        self,
        origin: str,
        room_id: str,
        room_version: str,
        pdus: Sequence[tuple[str, dict[str, Any]]],
        *,
        extra_checks: Callable[[str, Mapping[str, Any]], Awaitable[None]] | None = None,
    ) -> dict[str, PduOutcome]:
        """Run the checks on ``pdus`` (``(event_id, event)`` pairs, verified and of
        ``room_id``) and persist each, in depth order, holding the room's lock."""
        version = get_room_version(room_version)
        ordered = sorted(pdus, key=lambda p: (_depth(p[1]), p[0]))

        async def work() -> dict[str, PduOutcome]:
            out: dict[str, PduOutcome] = {}
            batch = _Batch()
            run_end = self.clock.seconds() + 2 * self.pdu_timeout
            self._fresh[room_id] = set()
            try:
                return await run(out, batch, run_end)
            finally:
                self._fresh.pop(room_id, None)
                self._partial.pop(room_id, None)

        async def run(
            out: dict[str, PduOutcome], batch: _Batch, run_end: float
        ) -> dict[str, PduOutcome]:
            # One read for what the whole run needs: whether each PDU is known, and
            # the auth events the cache lacks.
            wanted = {e for e, _ in ordered}
            for _, event in ordered:
                wanted.update(a for a in ref_ids(event.get("auth_events")) if a not in self._cache)
            prefetched = await self.store.get_events(sorted(wanted))
            self._partial[room_id] = bool(await self.store.is_partial_state(room_id))
            self._remember(prefetched.values())
            for event_id, event in ordered:
                if batch.items and not batch.extends_tip(event):
                    await self._flush(room_id, version, batch)
                    batch = _Batch()
                # Each PDU may spend pdu_timeout on fetches, and a whole run at most
                # twice that, so a room's lock is never held for long by one origin.
                remaining_run = run_end - self.clock.seconds()
                deadline = _Deadline(self.clock, min(self.pdu_timeout, remaining_run))
                try:
                    out[event_id] = await self._process_one(
                        origin,
                        room_id,
                        version,
                        event_id,
                        event,
                        deadline,
                        True,
                        extra_checks,
                        batch,
                        prefetched,
                    )
                except MatrixError as e:
                    out[event_id] = PduOutcome(event_id, None, e.msg)
                except (defer.TimeoutError, defer.CancelledError):
                    out[event_id] = PduOutcome(event_id, None, "Timed out fetching missing events")
            await self._flush(room_id, version, batch)
            return out

        result: dict[str, PduOutcome] = await self._locked(room_id, work)
        return result

    # -- one PDU ---------------------------------------------------------------

    async def _process_one(
        self,
        origin: str,
        room_id: str,
        version: RoomVersion,
        event_id: str,
        event: dict[str, Any],
        deadline: _Deadline,
        fetch_missing: bool,
        extra_checks: Callable[[str, Mapping[str, Any]], Awaitable[None]] | None = None,
        batch: _Batch | None = None,
        prefetched: Mapping[str, Any] | None = None,
    ) -> PduOutcome:
        if batch is not None and event_id in batch.outcomes:
            return batch.outcomes[event_id]
        chained = batch is not None and batch.extends_tip(event)
        auth_ids = ref_ids(event.get("auth_events"))
        fresh = self._fresh.get(room_id, set())
        if prefetched is not None and (event_id in prefetched or event_id not in fresh):
            # (An event gap filling stored since the prefetch is looked up afresh.)
            seen: Mapping[str, Any] = prefetched
        else:
            seen = await self.store.get_events(
                [event_id, *(a for a in auth_ids if a not in self._cache)]
            )
            self._remember(seen.values())
        if event_id in seen:
            stored = seen[event_id]
            if stored.status is not EventStatus.OUTLIER:
                return PduOutcome(event_id, stored.status, stored.rejection_reason)
        create = await self._create_event(room_id)

        # Step 4: the event's own auth events.
        auth_events = await self._auth_events_for(
            origin, room_id, version, event_id, event, deadline
        )
        own_reason: str | None = None
        if auth_events is None:
            return PduOutcome(event_id, None, "Could not fetch the event's auth events")
        try:
            rejected = sorted(e for e, (_, r) in auth_events.items() if r)
            if rejected:
                raise AuthError(f"Auth event {rejected[0]} was rejected")
            auth_map = check_auth_events_list(
                version.identifier,
                event,
                [ev for ev, _ in auth_events.values()],
                create_event=create[1] if create else None,
            )
            check_auth_with(version, event, auth_map, create[0] if create else None)
        except AuthError as e:
            own_reason = e.msg

        # With partial state (a faster join still syncing) the state we hold lacks
        # most memberships: what it lacks is taken from the event's own auth
        # events, which passed step 4. The state resync re-checks later.
        fallback: dict[StateKey, Mapping[str, Any]] | None = None
        if self._partial.get(room_id, False) and own_reason is None:
            fallback = {}
            for ev, _ in auth_events.values():
                key = _state_key(ev)
                if key is not None:
                    fallback[key] = ev

        # Step 5: the state before the event.
        state_before: dict[StateKey, str] | None
        state_ref: StateRef | None = None
        if chained:
            assert batch is not None and batch.tip_id is not None
            state_before = dict(batch.tip_state)
            state_ref = StateRef(batch.tip_id)
        else:
            state_before, state_ref = await self._state_before(
                origin, room_id, version, event_id, event, deadline, fetch_missing
            )
        if state_before is None:
            return PduOutcome(event_id, None, "Could not determine the state before the event")

        current_state: dict[StateKey, str] | None = None
        if not chained and not self._partial.get(room_id, False):
            current_state = dict(await self.store.get_current_state(room_id))
            healed = await self._heal_state(event, state_before, current_state)
            if healed:
                state_before.update(healed)
                state_ref = None

        status = EventStatus.ACCEPTED
        reason = own_reason
        if reason is None:
            try:
                await self._check_against(version, event, state_before, create, fallback)
            except AuthError as e:
                reason = e.msg
        if reason is None and extra_checks is not None:
            try:
                await extra_checks(event_id, event)
            except AuthError as e:
                reason = e.msg
        if reason is not None:
            status = EventStatus.REJECTED
        else:
            # Step 6: the current state (soft fail). After a chained event it is
            # the state before this one, which passed already.
            if chained:
                current = state_before
            elif current_state is not None:
                current = current_state
            else:
                current = await self.store.get_current_state(room_id)
            if current and current != state_before:
                try:
                    await self._check_against(version, event, current, create, fallback)
                except AuthError as e:
                    status = EventStatus.SOFT_FAILED
                    reason = e.msg

        item = PersistItem(
            event=event,
            event_id=event_id,
            status=status,
            rejection_reason=reason,
            state_before=state_ref if state_ref is not None else state_before,
        )
        outcome = PduOutcome(event_id, status, reason)
        if batch is not None:
            batch.items.append((item, state_before))
            batch.outcomes[event_id] = outcome
            self._put(event_id, event, status is EventStatus.REJECTED)
            if status is EventStatus.ACCEPTED:
                batch.tip_id = event_id
                key = _state_key(event)
                batch.tip_state = state_before
                if key is not None:
                    batch.tip_state = {**state_before, key: event_id}
            else:
                batch.tip_id = None
            return outcome
        await self._persist_and_announce(room_id, version, [(item, state_before)])
        return outcome

    async def _flush(self, room_id: str, version: RoomVersion, batch: _Batch) -> None:
        if batch.items:
            await self._persist_and_announce(room_id, version, batch.items)

    async def _persist_and_announce(
        self,
        room_id: str,
        version: RoomVersion,
        entries: list[tuple[PersistItem, dict[StateKey, str]]],
    ) -> None:
        items = [item for item, _ in entries]
        try:
            orderings = await self.store.persist_events(room_id, items)
        except BaseException:
            # Nothing of the batch was stored: forget what we cached of it.
            for item in items:
                self._cache.pop(item.event_id, None)
            raise
        for item in items:
            self._put(item.event_id, item.event, item.status is EventStatus.REJECTED)
        fresh = self._fresh.get(room_id)
        if fresh is not None:
            fresh.update(item.event_id for item in items)
        from fedlib.hooks import NewPdu

        new = [
            NewPdu(
                event_id=item.event_id,
                room_id=room_id,
                room_version=version.identifier,
                event=item.event,
                state_before=state,
                stream_ordering=int((orderings or {}).get(item.event_id, 0)),
            )
            for item, state in entries
            if item.status is EventStatus.ACCEPTED
        ]
        if new:
            await self.notify("on_new_pdus", room_id, new)
        for item in items:
            if item.status is EventStatus.SOFT_FAILED:
                await self.notify(
                    "on_soft_failed",
                    room_id,
                    item.event_id,
                    item.event,
                    item.rejection_reason or "",
                )
            elif item.status is EventStatus.REJECTED:
                await self.notify(
                    "on_rejected", room_id, item.event_id, item.event, item.rejection_reason or ""
                )

    # -- helpers ---------------------------------------------------------------

    def _put(self, event_id: str, event: Mapping[str, Any], rejected: bool) -> None:
        if "state_key" not in event:
            return
        self._cache[event_id] = (event, rejected)
        self._cache.move_to_end(event_id)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def _remember(self, stored_events: Iterable[Any]) -> None:
        for stored in stored_events:
            self._put(stored.event_id, stored.event, stored.status is EventStatus.REJECTED)

    async def _load(self, event_ids: Iterable[str]) -> dict[str, tuple[Mapping[str, Any], bool]]:
        """``(event, rejected)`` of the stored ones among ``event_ids``."""
        ids = list(event_ids)
        out = {e: self._cache[e] for e in ids if e in self._cache}
        missing = [e for e in ids if e not in out]
        if missing:
            for stored in (await self.store.get_events(missing)).values():
                out[stored.event_id] = (stored.event, stored.status is EventStatus.REJECTED)
                self._put(stored.event_id, stored.event, stored.status is EventStatus.REJECTED)
        return out

    async def _create_event(self, room_id: str) -> tuple[str, Mapping[str, Any]] | None:
        cached = self._creates.get(room_id)
        if cached is not None:
            return cached
        events = await self.store.get_current_state_events(room_id, ["m.room.create"])
        stored = events.get(CREATE_KEY)
        if stored is None:
            return None
        if len(self._creates) > CACHE_SIZE:
            self._creates.clear()
        self._creates[room_id] = (stored.event_id, stored.event)
        return stored.event_id, stored.event

    async def _heal_state(
        self,
        event: Mapping[str, Any],
        state_before: Mapping[StateKey, str],
        current: Mapping[StateKey, str],
    ) -> dict[StateKey, str]:
        """Entries of the current state to add to a state left partial by a faster join.

        The resync after a partial-state join replaces the room's current state, but
        the state stored for the events of that time (our join first) stays partial,
        and later events build on it. Keys the state before ``event`` lacks are
        taken from the current state when the event there is older than every prev
        event of ``event`` (so cannot have been added after them). An event placed
        before its sender's join (prev events older than the join) gains nothing and
        is still rejected. In a forked room a state event of another, older branch
        can be taken in too: a known deviation, on the permissive side.
        """
        missing = {key: eid for key, eid in current.items() if key not in state_before}
        if not missing:
            return {}
        prevs = ref_ids(event.get("prev_events"))
        stored_prevs = await self.store.get_events(prevs)
        if not prevs or len(stored_prevs) != len(prevs):
            return {}
        floor = min(s.depth for s in stored_prevs.values())
        found = await self.store.get_events(list(missing.values()))
        return {
            key: eid
            for key, eid in missing.items()
            if eid in found
            and found[eid].depth < floor
            and found[eid].status is not EventStatus.REJECTED
        }

    async def _check_against(
        self,
        version: RoomVersion,
        event: Mapping[str, Any],
        state: Mapping[StateKey, str],
        create: tuple[str, Mapping[str, Any]] | None,
        fallback: Mapping[StateKey, Mapping[str, Any]] | None = None,
    ) -> None:
        wanted = auth_types_with(version, event) | {CREATE_KEY}
        ids = {state[k]: k for k in wanted if k in state}
        events = await self._load(ids)
        auth_map = {ids[eid]: ev for eid, (ev, rejected) in events.items() if not rejected}
        for key, ev in (fallback or {}).items():
            auth_map.setdefault(key, ev)
        if create is not None:
            auth_map.setdefault(CREATE_KEY, create[1])
        check_auth_with(version, event, auth_map, create[0] if create else None)

    async def _auth_events_for(
        self,
        origin: str,
        room_id: str,
        version: RoomVersion,
        event_id: str,
        event: Mapping[str, Any],
        deadline: _Deadline,
    ) -> dict[str, tuple[Mapping[str, Any], bool]] | None:
        """The event's listed auth events by ID as ``(event, rejected)``, fetching
        missing ones; ``None`` if some stay missing."""
        wanted = ref_ids(event.get("auth_events"))
        loaded = await self._load(wanted)
        missing = [e for e in wanted if e not in loaded]
        if missing:
            if self.gaps is None:
                return None
            try:
                # /event_auth gives the whole chain in one request; /event then
                # covers whatever that answer lacked.
                chain = await deadline.run(
                    self.gaps.fetch_auth_chain(
                        origin, room_id, event_id, timeout=deadline.remaining()
                    )
                )
                results = list(chain.values())
                lacking = [e for e in missing if e not in chain]
                if lacking:
                    more = await deadline.run(
                        self.gaps.fetch_auth_events(
                            origin, room_id, lacking, timeout=deadline.remaining()
                        )
                    )
                    results.extend(more.values())
            except (MatrixError, defer.TimeoutError, defer.CancelledError) as e:
                log.info("Fetching auth events of {eid} failed: {e!r}", eid=event_id, e=e)
                return None
            await self._store_outliers(room_id, version, _events_of(results))
            loaded = await self._load(wanted)
            if any(e not in loaded for e in wanted):
                return None
        return {eid: loaded[eid] for eid in wanted}

    async def _store_outliers(
        self, room_id: str, version: RoomVersion, events: Iterable[Mapping[str, Any]]
    ) -> None:
        """Persist fetched auth-chain events as outliers, each checked against its own
        auth events first (in depth order, so chains are checked bottom-up)."""
        by_id: dict[str, Mapping[str, Any]] = {}
        for ev in events or ():
            if not isinstance(ev, Mapping) or ev.get("room_id", room_id) != room_id:
                continue
            try:
                by_id[event_id_with(version, dict(ev))] = ev
            except MatrixError:
                continue
        if not by_id:
            return
        known = await self.store.have_seen(list(by_id))
        create = await self._create_event(room_id)
        accepted: dict[str, Mapping[str, Any]] = {}
        items: list[PersistItem] = []
        for eid, ev in sorted(by_id.items(), key=lambda kv: (_depth(kv[1]), kv[0])):
            if eid in known:
                continue
            auth_ids = ref_ids(ev.get("auth_events"))
            stored = await self.store.get_events([a for a in auth_ids if a not in accepted])
            rejected = await self.store.get_rejected(list(stored))
            try:
                if rejected:
                    raise AuthError("auth event rejected")
                auth_list = [accepted[a] if a in accepted else stored[a].event for a in auth_ids]
                auth_map = check_auth_events_list(
                    version.identifier, ev, auth_list, create_event=create[1] if create else None
                )
                check_auth_with(version, ev, auth_map, create[0] if create else None)
            except (AuthError, KeyError):
                continue
            accepted[eid] = ev
            items.append(PersistItem(event=ev, event_id=eid, status=EventStatus.OUTLIER))
        if items:
            await self.store.persist_events(room_id, items)

    async def _state_before(
        self,
        origin: str,
        room_id: str,
        version: RoomVersion,
        event_id: str,
        event: Mapping[str, Any],
        deadline: _Deadline,
        fetch_missing: bool,
    ) -> tuple[dict[StateKey, str] | None, StateRef | None]:
        """The state before ``event`` and, when it is simply the stored state after
        its one prev event, a reference to that (much cheaper to persist)."""
        prevs = ref_ids(event.get("prev_events"))
        if not prevs:
            # Only a create event has no prev_events; validation refused others.
            return {}, None
        states = await self.store.get_state_after_events(prevs)
        if len(prevs) == 1 and prevs[0] in states:
            return dict(states[prevs[0]]), StateRef(prevs[0])
        missing = [p for p in prevs if p not in states]
        if missing and fetch_missing and self.gaps is not None:
            await self._fill_prev_events(origin, room_id, version, event, deadline)
            states = await self.store.get_state_after_events(prevs)
            missing = [p for p in prevs if p not in states]
        if missing:
            if self.gaps is None:
                return None, None
            for prev in missing:
                state = await self._fetch_state_after(origin, room_id, version, prev, deadline)
                if state is None:
                    return None, None
                states[prev] = state
        state_sets = [states[p] for p in prevs]
        try:
            return await self._resolve(version, state_sets), None
        except StateResolutionError as e:
            log.info("State resolution before {eid} failed: {e!r}", eid=event_id, e=e)
            return None, None

    async def _fill_prev_events(
        self,
        origin: str,
        room_id: str,
        version: RoomVersion,
        event: Mapping[str, Any],
        deadline: _Deadline,
    ) -> None:
        try:
            event_id = event_id_with(version, dict(event))
            fetched = await deadline.run(
                self.gaps.fetch_missing_prev_events(
                    origin, room_id, event, event_id, timeout=deadline.remaining()
                )
            )
        except (MatrixError, defer.TimeoutError, defer.CancelledError) as e:
            log.info("get_missing_events failed: {e!r}", e=e)
            return
        pairs = [
            (r.event_id, dict(r.event))
            for r in list(fetched or ())[:MAX_MISSING_EVENTS]
            if getattr(r, "event", None) is not None and r.event_id
        ]
        for eid, ev in sorted(pairs, key=lambda p: (_depth(p[1]), p[0])):
            # Missing events are processed in full, but may not recurse into more
            # gap filling: what they lack comes from /state_ids.
            try:
                await self._process_one(origin, room_id, version, eid, ev, deadline, False)
            except MatrixError as e:
                log.info("Missing event {eid} dropped: {e!r}", eid=eid, e=e)

    async def _fetch_state_after(
        self,
        origin: str,
        room_id: str,
        version: RoomVersion,
        prev_id: str,
        deadline: _Deadline,
    ) -> dict[StateKey, str] | None:
        """State after ``prev_id`` from the origin (``/state_ids`` + fetching what we
        lack, by the gap filler), storing the events as outliers."""
        try:
            answer = await deadline.run(
                self.gaps.fetch_state_at(origin, room_id, prev_id, timeout=deadline.remaining())
            )
            prev = await self.store.get_events([prev_id])
            prev_event: Mapping[str, Any] | None = None
            if prev_id in prev:
                prev_event = prev[prev_id].event
            else:
                got = await deadline.run(
                    self.gaps.fetch_events(origin, room_id, [prev_id], timeout=deadline.remaining())
                )
                if prev_id in got and got[prev_id].event is not None:
                    prev_event = got[prev_id].event
        except (MatrixError, defer.TimeoutError, defer.CancelledError) as e:
            log.info("Fetching state at {eid} failed: {e!r}", eid=prev_id, e=e)
            return None
        if prev_event is None:
            return None
        events = dict(answer.events)
        await self._store_outliers(room_id, version, _events_of(events.values()))
        state = dict(answer.state)
        present = await self.store.have_seen(list(state.values()))
        rejected = await self.store.get_rejected(list(present))
        # State events we could not store (they failed their own auth) or that
        # were rejected drop out of the state rather than poison it.
        state = {k: v for k, v in state.items() if v in present and v not in rejected}
        key = _state_key(prev_event)
        if key is not None:
            state[key] = prev_id
        if prev_id not in prev:
            await self._store_outliers(room_id, version, [prev_event])
        return state

    async def _resolve(
        self, version: RoomVersion, state_sets: Sequence[Mapping[StateKey, str]]
    ) -> dict[StateKey, str]:
        if len(state_sets) == 1:
            return dict(state_sets[0])
        first = state_sets[0]
        if all(s == first for s in state_sets[1:]):
            return dict(first)
        from fedlib.state import resolve

        ids: set[str] = set()
        for s in state_sets:
            ids.update(s.values())
        chain = await self.store.get_auth_chain(ids)
        stored = await self.store.get_events(ids | set(chain))
        rejected = await self.store.get_rejected(list(stored))
        event_map = {eid: s.event for eid, s in stored.items() if eid not in rejected}
        # Rejected events drop out of the state sets rather than fail the resolution.
        sets = [{k: v for k, v in s.items() if v in event_map} for s in state_sets]
        if len(event_map) > self.thread_threshold:
            resolved: dict[StateKey, str] = await threads.deferToThread(
                resolve, version.identifier, sets, event_map
            )
        else:
            resolved = resolve(version.identifier, sets, event_map)
        return resolved


def _events_of(results: Iterable[Any]) -> list[Mapping[str, Any]]:
    """The usable events of :class:`~fedlib.rooms.verify.PduCheckResult` objects."""
    return [r.event for r in results if getattr(r, "event", None) is not None]
