"""An in-memory :class:`IFederationStore` for tests and embedders' tests.

Same semantics as the database stores. The state at an event is a node holding
one change against its parent node, with a full copy every 64 changes, so a
room of many members does not cost a full map per state event.
"""

from __future__ import annotations

import bisect
import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from twisted.internet import defer
from zope.interface import implementer

from fedlib.storage import _common as c
from fedlib.storage.interface import (
    DestinationRetry,
    EventStatus,
    IFederationStore,
    OutboundBatch,
    OwnKey,
    PersistItem,
    QueuedEdu,
    QueuedPdu,
    RoomInfo,
    ServerKey,
    StateKey,
    StateMap,
    StateRef,
    StoredEvent,
    StrippedKind,
    StrippedRoom,
    TxnClaim,
    TxnClaimStatus,
)

D = defer.Deferred


def _ok(value: Any) -> D[Any]:
    return defer.succeed(value)


#: A full copy of the state every this many changes bounds reads to that many steps.
_FLATTEN = 64


@attrs.define(slots=True, eq=False)
class _State:
    """The state at some event: ``change`` applied to ``parent``'s state, or the whole
    state when ``parent`` is None. Nodes are never mutated once made."""

    parent: _State | None
    change: dict[StateKey, str]
    depth: int = 0


@attrs.define
class _Txn:
    claimer: str | None
    claim_ts: int
    response: Mapping[str, Any] | None = None


@implementer(IFederationStore)
class MemoryStore:
    """Keeps everything in dicts. ``clock`` returns milliseconds (for tests)."""

    def __init__(self, clock: Callable[[], int] = c.now_ms) -> None:
        self._clock = clock
        self._rooms: dict[str, RoomInfo] = {}
        self._stripped: dict[tuple[StrippedKind, str, str], StrippedRoom] = {}
        self._events: dict[str, StoredEvent] = {}
        self._state_before: dict[str, _State] = {}
        self._state_after: dict[str, _State] = {}
        self._materialised: OrderedDict[_State, dict[StateKey, str]] = OrderedDict()
        self._extremities: dict[str, set[str]] = {}
        self._current: dict[str, dict[StateKey, str]] = {}
        self._referenced: set[str] = set()
        self._by_ts: dict[str, list[tuple[int, int, str]]] = {}
        self._stream = 0
        self._max_depth: dict[str, int] = {}
        self._txns: dict[tuple[str, str], _Txn] = {}
        self._queue_pos = 0
        self._pdu_queue: dict[str, dict[str, QueuedPdu]] = {}
        self._pdu_stream: dict[tuple[str, str], int] = {}
        self._edu_queue: dict[str, list[QueuedEdu]] = {}
        self._leases: dict[str, tuple[str, int]] = {}
        self._last_success: dict[str, int] = {}
        self._retry: dict[str, DestinationRetry] = {}
        self._own_keys: dict[str, OwnKey] = {}
        self._server_keys: dict[tuple[str, str], ServerKey] = {}
        self._key_json: dict[tuple[str, str], Mapping[str, Any]] = {}

    def close(self) -> D[None]:
        return _ok(None)

    # -- rooms -----------------------------------------------------------------

    def store_room(self, room_id: str, room_version: str, partial_state: bool = False) -> D[None]:
        if room_id not in self._rooms:
            self._rooms[room_id] = RoomInfo(room_id, room_version, partial_state)
        return _ok(None)

    def get_room_version(self, room_id: str) -> D[str | None]:
        info = self._rooms.get(room_id)
        return _ok(info.room_version if info else None)

    def get_room(self, room_id: str) -> D[RoomInfo | None]:
        return _ok(self._rooms.get(room_id))

    def list_rooms(self) -> D[list[str]]:
        return _ok(list(self._rooms))

    def set_partial_state(self, room_id: str, partial: bool) -> D[None]:
        info = self._rooms.get(room_id)
        if info is not None:
            self._rooms[room_id] = attrs.evolve(info, partial_state=partial)
        return _ok(None)

    def is_partial_state(self, room_id: str) -> D[bool]:
        info = self._rooms.get(room_id)
        return _ok(bool(info and info.partial_state))

    def store_stripped_room(self, item: StrippedRoom) -> D[None]:
        self._stripped[(item.kind, item.room_id, item.user_id)] = item
        return _ok(None)

    def get_stripped_room(
        self, kind: StrippedKind, room_id: str, user_id: str
    ) -> D[StrippedRoom | None]:
        return _ok(self._stripped.get((kind, room_id, user_id)))

    def delete_stripped_room(self, kind: StrippedKind, room_id: str, user_id: str) -> D[None]:
        self._stripped.pop((kind, room_id, user_id), None)
        return _ok(None)

    # -- events ----------------------------------------------------------------

    def _materialise(self, node: _State) -> dict[StateKey, str]:
        """The full state of ``node`` (shared: copy before handing it out)."""
        if node.parent is None:
            return node.change
        hit = self._materialised.get(node)
        if hit is not None:
            return hit
        chain = []
        n: _State = node
        while n.parent is not None:
            chain.append(n)
            n = n.parent
        state = dict(n.change)
        for step in reversed(chain):
            state.update(step.change)
        self._materialised[node] = state
        while len(self._materialised) > 8:
            self._materialised.popitem(last=False)
        return state

    def _derive(self, node: _State, key: StateKey, event_id: str) -> _State:
        if node.depth + 1 >= _FLATTEN:
            full = dict(self._materialise(node))
            full[key] = event_id
            return _State(None, full)
        return _State(node, {key: event_id}, node.depth + 1)

    def _resolve_ref(
        self, ref: StateMap | StateRef, pending: Mapping[str, tuple[_State, _State]]
    ) -> _State:
        if not isinstance(ref, StateRef):
            return _State(None, dict(ref))
        if ref.event_id in pending:
            before, after = pending[ref.event_id]
            return after if ref.after else before
        table = self._state_after if ref.after else self._state_before
        found = table.get(ref.event_id)
        if found is None:
            raise ValueError(f"no state stored at {ref.event_id}")
        return found

    def persist_events(
        self,
        room_id: str,
        items: Iterable[PersistItem],
        current_state: StateMap | StateRef | None = None,
    ) -> D[dict[str, int]]:
        try:
            return _ok(self._persist(room_id, list(items), current_state))
        except Exception:
            return defer.fail()

    def _persist(
        self,
        room_id: str,
        items: list[PersistItem],
        current_state: StateMap | StateRef | None,
    ) -> dict[str, int]:
        info = self._rooms.get(room_id)
        if info is None:
            raise ValueError(f"unknown room {room_id}")
        c.check_items(room_id, items)
        # Compute everything first so a failure leaves the store untouched.
        pending: dict[str, tuple[_State, _State]] = {}
        todo: list[PersistItem] = []
        todo_ids: set[str] = set()  # a set: a join's thousands of outliers made this quadratic
        for item in items:
            old = self._events.get(item.event_id)
            if old is not None and not (
                old.status is EventStatus.OUTLIER and item.status is not EventStatus.OUTLIER
            ):
                continue
            if item.event_id in todo_ids:
                continue
            todo.append(item)
            todo_ids.add(item.event_id)
            if item.status is EventStatus.OUTLIER:
                continue
            assert item.state_before is not None
            before = self._resolve_ref(item.state_before, pending)
            if item.state_after is not None:
                after = self._resolve_ref(item.state_after, pending)
            elif c.changes_state(item):
                sk = c.state_key_of(item.event)
                assert sk is not None
                after = self._derive(before, sk, item.event_id)
            else:
                after = before
            pending[item.event_id] = (before, after)
        new_current = (
            self._resolve_ref(current_state, pending) if current_state is not None else None
        )

        result: dict[str, int] = {}
        accepted: list[tuple[str, list[str]]] = []
        for item in todo:
            self._stream += 1
            ev = dict(item.event)
            stored = StoredEvent(
                event_id=item.event_id,
                room_id=room_id,
                event=ev,
                status=item.status,
                rejection_reason=item.rejection_reason,
                room_version=info.room_version,
                stream_ordering=self._stream,
                depth=c.int_field(ev, "depth"),
                origin_server_ts=c.int_field(ev, "origin_server_ts"),
            )
            self._events[item.event_id] = stored
            result[item.event_id] = self._stream
            if item.status is EventStatus.OUTLIER:
                continue
            self._max_depth[room_id] = max(self._max_depth.get(room_id, 0), stored.depth)
            before, after = pending[item.event_id]
            self._state_before[item.event_id] = before
            self._state_after[item.event_id] = after
            if item.status is not EventStatus.REJECTED:
                bisect.insort(
                    self._by_ts.setdefault(room_id, []),
                    (stored.origin_server_ts, stored.stream_ordering, item.event_id),
                )
            if item.status is EventStatus.ACCEPTED:
                accepted.append((item.event_id, c.prev_ids(ev)))
        ext_before = self._extremities.get(room_id, set())
        ext = c.new_extremities(ext_before, accepted, self._referenced)
        for _, prevs in accepted:
            self._referenced.update(prevs)
        self._extremities[room_id] = ext
        if new_current is not None:
            self._current[room_id] = dict(self._materialise(new_current))
        else:
            last = [e for e, _ in accepted if e in ext]
            if last:
                self._current[room_id] = dict(self._materialise(self._state_after[last[-1]]))
        return result

    def get_events(self, event_ids: Iterable[str]) -> D[dict[str, StoredEvent]]:
        return _ok({e: self._events[e] for e in event_ids if e in self._events})

    def have_seen(self, event_ids: Iterable[str]) -> D[set[str]]:
        return _ok({e for e in event_ids if e in self._events})

    def get_rejected(self, event_ids: Iterable[str]) -> D[dict[str, str]]:
        out = {}
        for e in event_ids:
            ev = self._events.get(e)
            if ev is not None and ev.status is EventStatus.REJECTED:
                out[e] = ev.rejection_reason or ""
        return _ok(out)

    def get_forward_extremities(self, room_id: str) -> D[set[str]]:
        return _ok(set(self._extremities.get(room_id, ())))

    def get_max_depth(self, room_id: str) -> D[int]:
        return _ok(self._max_depth.get(room_id, 0))

    def get_max_stream_ordering(self) -> D[int]:
        return _ok(self._stream)

    # -- state -----------------------------------------------------------------

    def get_state_before(self, event_id: str) -> D[dict[StateKey, str] | None]:
        s = self._state_before.get(event_id)
        return _ok(dict(self._materialise(s)) if s is not None else None)

    def get_state_after(self, event_id: str) -> D[dict[StateKey, str] | None]:
        s = self._state_after.get(event_id)
        return _ok(dict(self._materialise(s)) if s is not None else None)

    def get_state_after_events(self, event_ids: Iterable[str]) -> D[dict[str, dict[StateKey, str]]]:
        return _ok(
            {
                e: dict(self._materialise(self._state_after[e]))
                for e in event_ids
                if e in self._state_after
            }
        )

    def get_current_state(self, room_id: str) -> D[dict[StateKey, str]]:
        return _ok(dict(self._current.get(room_id, {})))

    def get_current_state_events(
        self, room_id: str, types: Iterable[str] | None = None
    ) -> D[dict[StateKey, StoredEvent]]:
        wanted = set(types) if types is not None else None
        cur = self._current.get(room_id, {})
        return _ok(
            {
                k: self._events[v]
                for k, v in cur.items()
                if (wanted is None or k[0] in wanted) and v in self._events
            }
        )

    def _joined(self, room_id: str) -> set[str]:
        out = set()
        for (typ, sk), eid in self._current.get(room_id, {}).items():
            if typ == "m.room.member":
                ev = self._events.get(eid)
                if ev is not None and c.membership_of(ev.event) == "join":
                    out.add(sk)
        return out

    def get_joined_members(self, room_id: str) -> D[set[str]]:
        return _ok(self._joined(room_id))

    def get_joined_servers(self, room_id: str) -> D[set[str]]:
        return _ok({c.server_of(u) for u in self._joined(room_id)})

    # -- auth chains -----------------------------------------------------------

    def _chain(self, event_ids: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        todo = []
        for e in event_ids:
            ev = self._events.get(e)
            if ev is not None:
                todo.extend(c.auth_ids(ev.event))
        while todo:
            e = todo.pop()
            if e in seen or e not in self._events:
                continue
            seen.add(e)
            todo.extend(c.auth_ids(self._events[e].event))
        return seen

    def get_auth_chain(self, event_ids: Iterable[str]) -> D[set[str]]:
        return _ok(self._chain(event_ids))

    def get_auth_chain_difference(self, state_sets: Iterable[Iterable[str]]) -> D[set[str]]:
        chains = []
        for s in state_sets:
            ids = set(s)
            chains.append(self._chain(ids) | {e for e in ids if e in self._events})
        if not chains:
            return _ok(set())
        union: set[str] = set().union(*chains)
        return _ok(union - set(chains[0]).intersection(*chains[1:]))

    # -- history ---------------------------------------------------------------

    def _walk(
        self, room_id: str, start: Iterable[str], stop: set[str], limit: int, min_depth: int
    ) -> list[StoredEvent]:
        heap: list[tuple[int, int, str]] = []
        seen: set[str] = set()
        for e in start:
            ev = self._events.get(e)
            if ev is not None and ev.room_id == room_id and e not in seen:
                seen.add(e)
                heapq.heappush(heap, (-ev.depth, -ev.stream_ordering, e))
        out: list[StoredEvent] = []
        while heap and len(out) < limit:
            _, _, e = heapq.heappop(heap)
            ev = self._events[e]
            out.append(ev)
            for p in c.prev_ids(ev.event):
                pe = self._events.get(p)
                if pe is None or p in seen or p in stop or pe.room_id != room_id:
                    continue
                if pe.depth < min_depth:
                    continue
                seen.add(p)
                heapq.heappush(heap, (-pe.depth, -pe.stream_ordering, p))
        return out

    def backfill(
        self, room_id: str, from_event_ids: Iterable[str], limit: int
    ) -> D[list[StoredEvent]]:
        return _ok(self._walk(room_id, from_event_ids, set(), limit, 0))

    def get_missing_events(
        self,
        room_id: str,
        earliest_events: Iterable[str],
        latest_events: Iterable[str],
        limit: int,
        min_depth: int = 0,
    ) -> D[list[StoredEvent]]:
        stop = set(earliest_events)
        starts: list[str] = []
        for e in latest_events:
            ev = self._events.get(e)
            if ev is not None:
                starts.extend(
                    p
                    for p in c.prev_ids(ev.event)
                    if p not in stop and p in self._events and self._events[p].depth >= min_depth
                )
        out = self._walk(room_id, starts, stop, limit, min_depth)
        out.reverse()
        return _ok(out)

    def get_event_at_timestamp(
        self, room_id: str, ts: int, direction: str
    ) -> D[tuple[str, int] | None]:
        idx = self._by_ts.get(room_id, [])
        if direction == "f":
            i = bisect.bisect_left(idx, (ts, -1, ""))
            hit = idx[i] if i < len(idx) else None
        else:
            i = bisect.bisect_left(idx, (ts + 1, -1, ""))
            hit = idx[i - 1] if i > 0 else None
        return _ok((hit[2], hit[0]) if hit else None)

    # -- received transactions -------------------------------------------------

    def claim_received_transaction(
        self, origin: str, txn_id: str, claimer: str, lease_ms: int = 60_000
    ) -> D[TxnClaim]:
        now = self._clock()
        t = self._txns.get((origin, txn_id))
        if t is not None:
            if t.response is not None:
                return _ok(TxnClaim(TxnClaimStatus.DONE, t.response))
            if t.claimer not in (None, claimer) and now - t.claim_ts < lease_ms:
                return _ok(TxnClaim(TxnClaimStatus.IN_PROGRESS))
        self._txns[(origin, txn_id)] = _Txn(claimer, now)
        return _ok(TxnClaim(TxnClaimStatus.CLAIMED))

    def store_received_transaction(
        self, origin: str, txn_id: str, response: Mapping[str, Any]
    ) -> D[None]:
        self._txns[(origin, txn_id)] = _Txn(None, self._clock(), dict(response))
        return _ok(None)

    def release_received_transaction(self, origin: str, txn_id: str, claimer: str) -> D[None]:
        t = self._txns.get((origin, txn_id))
        if t is not None and t.response is None and t.claimer == claimer:
            del self._txns[(origin, txn_id)]
        return _ok(None)

    def get_received_transaction(self, origin: str, txn_id: str) -> D[Mapping[str, Any] | None]:
        t = self._txns.get((origin, txn_id))
        return _ok(t.response if t else None)

    # -- outbound queues -------------------------------------------------------

    def enqueue_pdus(self, destinations: Iterable[str], event_ids: Iterable[str]) -> D[None]:
        ids = list(event_ids)
        missing = [e for e in ids if e not in self._events]
        if missing:
            return defer.fail(ValueError(f"cannot queue unknown events {missing[:5]}"))
        for dest in destinations:
            q = self._pdu_queue.setdefault(dest, {})
            for e in ids:
                if e not in q:
                    self._queue_pos += 1
                    ev = self._events[e]
                    q[e] = QueuedPdu(self._queue_pos, e, ev.room_id)
                    self._pdu_stream[(dest, e)] = ev.stream_ordering
        return _ok(None)

    def enqueue_edu(self, destination: str, edu: Mapping[str, Any]) -> D[None]:
        self._queue_pos += 1
        self._edu_queue.setdefault(destination, []).append(QueuedEdu(self._queue_pos, dict(edu)))
        return _ok(None)

    def claim_next_batch(
        self,
        destination: str,
        claimer: str,
        max_pdus: int = 50,
        max_edus: int = 100,
        lease_ms: int = 120_000,
    ) -> D[OutboundBatch | None]:
        now = self._clock()
        lease = self._leases.get(destination)
        if lease is not None and lease[0] != claimer and lease[1] > now:
            return _ok(None)
        pdus = sorted(
            self._pdu_queue.get(destination, {}).values(),
            key=lambda p: (self._pdu_stream[(destination, p.event_id)], p.position),
        )[:max_pdus]
        edus = self._edu_queue.get(destination, [])[:max_edus]
        if not pdus and not edus:
            if lease is not None and lease[0] == claimer:
                del self._leases[destination]
            return _ok(None)
        self._leases[destination] = (claimer, now + lease_ms)
        max_so = max((self._pdu_stream[(destination, p.event_id)] for p in pdus), default=None)
        return _ok(OutboundBatch(destination, claimer, tuple(pdus), tuple(edus), max_so))

    def ack_batch(self, destination: str, batch: OutboundBatch) -> D[None]:
        q = self._pdu_queue.get(destination, {})
        for p in batch.pdus:
            if p.event_id in q and q[p.event_id].position == p.position:
                del q[p.event_id]
                self._pdu_stream.pop((destination, p.event_id), None)
        done = {e.position for e in batch.edus}
        self._edu_queue[destination] = [
            e for e in self._edu_queue.get(destination, []) if e.position not in done
        ]
        if batch.max_stream_ordering is not None:
            self._last_success[destination] = max(
                self._last_success.get(destination, 0), batch.max_stream_ordering
            )
        return self.release_batch(destination, batch)

    def release_batch(self, destination: str, batch: OutboundBatch) -> D[None]:
        lease = self._leases.get(destination)
        if lease is not None and lease[0] == batch.claimer:
            del self._leases[destination]
        return _ok(None)

    def get_destinations_with_pending(self) -> D[set[str]]:
        return _ok(
            {d for d, q in self._pdu_queue.items() if q}
            | {d for d, q in self._edu_queue.items() if q}
        )

    def collapse_pdu_queue(self, destination: str) -> D[int]:
        q = self._pdu_queue.get(destination, {})
        latest: dict[str, QueuedPdu] = {}
        for p in q.values():
            cur = latest.get(p.room_id)
            if (
                cur is None
                or self._pdu_stream[(destination, p.event_id)]
                > self._pdu_stream[(destination, cur.event_id)]
            ):
                latest[p.room_id] = p
        keep = {p.event_id for p in latest.values()}
        dropped = [e for e in q if e not in keep]
        for e in dropped:
            del q[e]
            self._pdu_stream.pop((destination, e), None)
        return _ok(len(dropped))

    def get_last_successful_stream_ordering(self, destination: str) -> D[int | None]:
        return _ok(self._last_success.get(destination))

    def get_destination_retry(self, destination: str) -> D[DestinationRetry | None]:
        return _ok(self._retry.get(destination))

    def set_destination_retry(
        self, destination: str, failure_ts: int, retry_interval_ms: int
    ) -> D[None]:
        self._retry[destination] = DestinationRetry(failure_ts, retry_interval_ms)
        return _ok(None)

    def reset_destination_retry(self, destination: str) -> D[None]:
        self._retry.pop(destination, None)
        return _ok(None)

    # -- keys ------------------------------------------------------------------

    def store_own_key(self, key: OwnKey) -> D[None]:
        self._own_keys[key.key_id] = key
        return _ok(None)

    def get_own_keys(self) -> D[list[OwnKey]]:
        keys = sorted(self._own_keys.values(), key=lambda k: (k.expired_ts is not None, k.key_id))
        return _ok(keys)

    def store_server_keys(
        self,
        server_name: str,
        keys: Iterable[ServerKey],
        raw_json: Mapping[str, Any] | None = None,
    ) -> D[None]:
        for k in keys:
            old = self._server_keys.get((server_name, k.key_id))
            if old is not None and not c.key_supersedes(k, old):
                continue
            self._server_keys[(server_name, k.key_id)] = k
            if raw_json is not None:
                self._key_json[(server_name, k.key_id)] = raw_json
        return _ok(None)

    def get_server_keys(
        self, server_name: str, key_ids: Iterable[str] | None = None
    ) -> D[dict[str, ServerKey]]:
        if key_ids is None:
            return _ok({k: v for (s, k), v in self._server_keys.items() if s == server_name})
        return _ok(
            {
                k: self._server_keys[(server_name, k)]
                for k in key_ids
                if (server_name, k) in self._server_keys
            }
        )

    def get_server_keys_json(
        self, server_name: str, key_ids: Iterable[str] | None = None
    ) -> D[list[Mapping[str, Any]]]:
        wanted = set(key_ids) if key_ids is not None else None
        out: list[Mapping[str, Any]] = []
        for (s, k), raw in self._key_json.items():
            if s == server_name and (wanted is None or k in wanted) and raw not in out:
                out.append(raw)
        return _ok(out)
