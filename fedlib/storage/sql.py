"""The logic shared by the SQLite and PostgreSQL stores.

Every public method runs one database transaction in a worker thread (the backend
decides which pool) and returns a Deferred. SQL is written once with ``?``
placeholders; the PostgreSQL backend rewrites them to ``%s``.

State is stored as *state groups*: a group is either a full snapshot or a delta
against an ancestor. A group created from parent ``p`` gets ``depth(p) + 1`` and
stores its delta against the ancestor at ``depth - lowbit(depth)`` (a Fenwick tree
along the chain), so reading any group reads O(log depth) deltas whose sizes sum
to at most ``depth`` changes, and the deltas of ``n`` groups hold O(n log n)
entries in total. A new snapshot starts when the depth reaches a power of two at
least as large as the last snapshot: snapshots then cost O(1) entries per change,
amortised. Events point at their state-before and state-after groups; a non-state
event shares its group with its predecessor, so storage is O(events + c log c) for
c state changes, never O(events x members). Each group's entries are one JSON
object (schema version 2), so reading a snapshot is one row.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

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

T = TypeVar("T")
D = defer.Deferred
Row = tuple[Any, ...]
Delta = dict[StateKey, str | None]

_CHUNK = 500
#: Snapshots are never made for chains shorter than this.
_MIN_SNAPSHOT_DEPTH = 64
_EVENT_COLS = (
    "e.event_id, e.room_id, e.json, e.status, e.rejection_reason, e.stream_ordering,"
    " e.depth, e.origin_server_ts, r.room_version"
)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _encode_entries(entries: Mapping[StateKey, str | None]) -> str:
    nested: dict[str, dict[str, str | None]] = {}
    for (typ, sk), eid in entries.items():
        nested.setdefault(typ, {})[sk] = eid
    return _dumps(nested)


def _decode_entries(blob: str) -> Delta:
    nested: dict[str, dict[str, str | None]] = json.loads(blob)
    return {(typ, sk): eid for typ, keys in nested.items() for sk, eid in keys.items()}


def _lowbit(n: int) -> int:
    return n & -n


def _chunks(seq: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


class Cursor:
    """A thin wrapper over a DB-API cursor: ``?`` placeholders, list results, and
    ``after_commit`` callbacks (for caches that must never see rolled-back rows)."""

    def __init__(self, raw: Any, postgres: bool) -> None:
        self.raw = raw
        self.postgres = postgres
        self.after_commit: list[Callable[[], None]] = []
        self._nested = False
        # State groups never change once written, so within one transaction their
        # chains and entries can be remembered (persisting a batch of joins would
        # otherwise re-read the same chain for every join).
        self.chains: dict[int, list[tuple[int, int | None, int, int]]] = {}
        self.group_entries: dict[int, Delta] = {}

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def q(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.raw.execute(self._sql(sql), tuple(params))
        return list(self.raw.fetchall())

    def x(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.raw.execute(self._sql(sql), tuple(params))
        return int(self.raw.rowcount)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run ``sql`` once per row. A plain or ``DO NOTHING`` INSERT becomes a few
        multi-row INSERTs: one round trip per chunk instead of per row, which is
        what PostgreSQL throughput hinges on. (``DO UPDATE`` keeps one row per
        statement: PostgreSQL refuses to update a row twice in one command.)"""
        if not rows:
            return
        head, sep, tail = sql.partition(" VALUES (")
        if not sep or not head.lstrip().upper().startswith("INSERT") or "DO UPDATE" in tail:
            self.raw.executemany(self._sql(sql), [tuple(r) for r in rows])
            return
        group, _, suffix = tail.partition(")")
        width = group.count("?")
        per = max(1, min(500, 30_000 // max(width, 1)))
        for chunk in _chunks(rows, per):
            values = ",".join([f"({group})"] * len(chunk))
            params = [v for r in chunk for v in r]
            self.raw.execute(self._sql(f"{head} VALUES {values}{suffix}"), params)

    def q_in(
        self, sql: str, ids: Iterable[Any], before: Sequence[Any] = (), after: Sequence[Any] = ()
    ) -> list[Row]:
        """Run ``sql`` (with ``{in}`` where the list goes) over ``ids`` in chunks."""
        out: list[Row] = []
        ids = list(dict.fromkeys(ids))
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            out.extend(self.q(sql.format(**{"in": marks}), [*before, *chunk, *after]))
        return out

    def index_nested_loops(self) -> None:
        """Before recursive queries on PostgreSQL: its planner cannot estimate a
        recursive CTE and picks hash joins that scan a whole table per step, where
        index nested loops cost O(rows reached)."""
        if self.postgres and not self._nested:
            self._nested = True
            self.q(
                "SELECT set_config('enable_hashjoin', 'off', true),"
                " set_config('enable_mergejoin', 'off', true)"
            )

    @property
    def for_update(self) -> str:
        return " FOR UPDATE" if self.postgres else ""


@attrs.define
class _NewGroup:
    logical_parent: int | None
    change: Delta


@implementer(IFederationStore)
class SqlStore:
    """Base class: subclasses provide :meth:`_run` and :meth:`_next_streams`."""

    def __init__(self, clock: Callable[[], int] = c.now_ms, auth_cache_size: int = 200_000) -> None:
        self._clock = clock
        self._cache_lock = threading.Lock()
        self._group_cache: OrderedDict[int, dict[StateKey, str]] = OrderedDict()
        self._auth_cache: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._auth_cache_size = auth_cache_size

    # -- plumbing for subclasses -----------------------------------------------

    def _run(self, fn: Callable[..., T], *args: Any, write: bool = True) -> D[T]:
        raise NotImplementedError

    def _next_streams(self, cur: Cursor, n: int) -> list[int]:
        raise NotImplementedError

    def _read(self, fn: Callable[..., T], *args: Any) -> D[T]:
        return self._run(fn, *args, write=False)

    def close(self) -> D[None]:
        raise NotImplementedError

    # -- rooms -----------------------------------------------------------------

    def store_room(self, room_id: str, room_version: str, partial_state: bool = False) -> D[None]:
        def txn(cur: Cursor) -> None:
            cur.x(
                "INSERT INTO rooms (room_id, room_version, partial_state) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id) DO NOTHING",
                (room_id, room_version, int(partial_state)),
            )

        return self._run(txn)

    def get_room(self, room_id: str) -> D[RoomInfo | None]:
        def txn(cur: Cursor) -> RoomInfo | None:
            rows = cur.q(
                "SELECT room_version, partial_state FROM rooms WHERE room_id = ?", (room_id,)
            )
            return RoomInfo(room_id, rows[0][0], bool(rows[0][1])) if rows else None

        return self._read(txn)

    def get_room_version(self, room_id: str) -> D[str | None]:
        return self.get_room(room_id).addCallback(lambda info: info.room_version if info else None)

    def list_rooms(self) -> D[list[str]]:
        return self._read(lambda cur: [r[0] for r in cur.q("SELECT room_id FROM rooms")])

    def set_partial_state(self, room_id: str, partial: bool) -> D[None]:
        def txn(cur: Cursor) -> None:
            cur.x("UPDATE rooms SET partial_state = ? WHERE room_id = ?", (int(partial), room_id))

        return self._run(txn)

    def is_partial_state(self, room_id: str) -> D[bool]:
        return self.get_room(room_id).addCallback(lambda info: bool(info and info.partial_state))

    def store_stripped_room(self, item: StrippedRoom) -> D[None]:
        def txn(cur: Cursor) -> None:
            cur.x(
                "INSERT INTO stripped_rooms (kind, room_id, user_id, room_version, event_json,"
                " stripped_json) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, room_id, user_id)"
                " DO UPDATE SET room_version = excluded.room_version,"
                " event_json = excluded.event_json, stripped_json = excluded.stripped_json",
                (
                    item.kind.value,
                    item.room_id,
                    item.user_id,
                    item.room_version,
                    _dumps(item.event),
                    _dumps(list(item.stripped_state)),
                ),
            )

        return self._run(txn)

    def get_stripped_room(
        self, kind: StrippedKind, room_id: str, user_id: str
    ) -> D[StrippedRoom | None]:
        def txn(cur: Cursor) -> StrippedRoom | None:
            rows = cur.q(
                "SELECT room_version, event_json, stripped_json FROM stripped_rooms"
                " WHERE kind = ? AND room_id = ? AND user_id = ?",
                (kind.value, room_id, user_id),
            )
            if not rows:
                return None
            version, ev, stripped = rows[0]
            return StrippedRoom(
                kind, room_id, user_id, version, json.loads(ev), tuple(json.loads(stripped))
            )

        return self._read(txn)

    def delete_stripped_room(self, kind: StrippedKind, room_id: str, user_id: str) -> D[None]:
        def txn(cur: Cursor) -> None:
            cur.x(
                "DELETE FROM stripped_rooms WHERE kind = ? AND room_id = ? AND user_id = ?",
                (kind.value, room_id, user_id),
            )

        return self._run(txn)

    # -- state groups ----------------------------------------------------------

    def _cached(self, gid: int) -> dict[StateKey, str] | None:
        with self._cache_lock:
            found = self._group_cache.get(gid)
            if found is not None:
                self._group_cache.move_to_end(gid)
            return found

    def _remember(self, gid: int, state: dict[StateKey, str]) -> None:
        with self._cache_lock:
            self._group_cache[gid] = state
            self._group_cache.move_to_end(gid)
            while len(self._group_cache) > 16:
                self._group_cache.popitem(last=False)

    def _chain(self, cur: Cursor, gid: int) -> list[tuple[int, int | None, int, int]]:
        """``(id, parent, depth, root_size)`` from ``gid`` down to its snapshot."""
        known = cur.chains.get(gid)
        if known is not None:
            return known
        cur.index_nested_loops()
        rows = cur.q(
            "WITH RECURSIVE ch(id, parent, depth, root_size) AS ("
            " SELECT id, parent, depth, root_size FROM state_groups WHERE id = ?"
            " UNION ALL SELECT g.id, g.parent, g.depth, g.root_size FROM state_groups g"
            " JOIN ch ON g.id = ch.parent) SELECT id, parent, depth, root_size FROM ch",
            (gid,),
        )
        chain = [(int(r[0]), r[1], int(r[2]), int(r[3])) for r in rows]
        for i in range(len(chain)):
            cur.chains.setdefault(chain[i][0], chain[i:])
        return chain

    def _entries(self, cur: Cursor, gids: Sequence[int]) -> dict[int, Delta]:
        """Entries of each group (shared with the transaction's memo: do not mutate)."""
        out: dict[int, Delta] = {g: cur.group_entries[g] for g in gids if g in cur.group_entries}
        missing = [g for g in gids if g not in out]
        for gid, blob in cur.q_in(
            "SELECT id, entries FROM state_groups WHERE id IN ({in})", missing
        ):
            out[int(gid)] = cur.group_entries[int(gid)] = _decode_entries(blob)
        return out

    def _resolve_group(
        self, cur: Cursor, gid: int, memo: dict[int, dict[StateKey, str]] | None = None
    ) -> dict[StateKey, str]:
        """The full state of group ``gid``. ``memo`` holds groups resolved earlier in
        the same call, used like the cache as starting points."""
        cached = memo.get(gid) if memo is not None else None
        if cached is None:
            cached = self._cached(gid)
        if cached is not None:
            return cached
        chain = self._chain(cur, gid)
        # Start from the nearest cached ancestor when there is one.
        base: dict[StateKey, str] = {}
        ids = [g for g, _, _, _ in chain]
        for i, g in enumerate(ids):
            hit = memo.get(g) if memo is not None else None
            if hit is None:
                hit = self._cached(g)
            if hit is not None:
                base, ids = hit, ids[:i]
                break
        entries = self._entries(cur, ids)
        # Without a cached base the walk starts at a snapshot (no deletions in it).
        state: dict[StateKey, Any] = dict(entries[ids[-1]]) if not base else dict(base)
        for g in reversed(ids[:-1] if not base else ids):
            for k, v in entries[g].items():
                if v is None:
                    state.pop(k, None)
                else:
                    state[k] = v
        cur.after_commit.append(lambda: self._remember(gid, state))
        return state

    def _new_group(
        self,
        cur: Cursor,
        room_id: str,
        parent: int | None,
        change: Delta,
        created: dict[int, _NewGroup],
    ) -> int:
        if parent is not None:
            chain = self._chain(cur, parent)
            pdepth, root_size = chain[0][2], chain[0][3]
            depth = pdepth + 1
            snapshot = depth & (depth - 1) == 0 and depth >= max(root_size, _MIN_SNAPSHOT_DEPTH)
        else:
            snapshot = True
        if snapshot:
            full = self._resolve_group(cur, parent) if parent is not None else {}
            full = dict(full)
            for k, v in change.items():
                if v is None:
                    full.pop(k, None)
                else:
                    full[k] = v
            rows = cur.q(
                "INSERT INTO state_groups (room_id, parent, depth, root_size, entries)"
                " VALUES (?, NULL, 0, ?, ?) RETURNING id",
                (room_id, len(full), _encode_entries(full)),
            )
            gid = int(rows[0][0])
            cur.chains[gid] = [(gid, None, 0, len(full))]
            cur.group_entries[gid] = dict(full)
        else:
            target = depth - _lowbit(depth)
            path = []
            base = None
            base_at = 0
            for i, (g, _, d, _) in enumerate(chain):
                if d == target:
                    base, base_at = g, i
                    break
                path.append(g)
            if base is None:  # a broken chain: fall back to a snapshot
                assert parent is not None
                return self._new_group(
                    cur, room_id, None, self._materialise(cur, parent, change), created
                )
            delta: Delta = {}
            entries = self._entries(cur, path)
            for g in reversed(path):
                delta.update(entries[g])
            delta.update(change)
            rows = cur.q(
                "INSERT INTO state_groups (room_id, parent, depth, root_size, entries)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (room_id, base, depth, root_size, _encode_entries(delta)),
            )
            gid = int(rows[0][0])
            cur.chains[gid] = [(gid, base, depth, root_size), *chain[base_at:]]
            cur.group_entries[gid] = delta
        created[gid] = _NewGroup(parent, change)
        return gid

    def _materialise(self, cur: Cursor, parent: int, change: Delta) -> Delta:
        full: Delta = dict(self._resolve_group(cur, parent))
        full.update(change)
        return {k: v for k, v in full.items() if v is not None}

    def _group_for_map(
        self,
        cur: Cursor,
        room_id: str,
        state: StateMap,
        candidates: Iterable[int],
        created: dict[int, _NewGroup],
    ) -> int:
        """A group equal to ``state``: an existing candidate, a child of the candidate
        it differs least from, or a new snapshot."""
        best: tuple[int, Delta] | None = None
        for gid in dict.fromkeys(candidates):
            diff = c.state_diff(self._resolve_group(cur, gid), state)
            if not diff:
                return gid
            if best is None or len(diff) < len(best[1]):
                best = (gid, diff)
        if best is not None and len(best[1]) <= len(state) // 2 + 1:
            return self._new_group(cur, room_id, best[0], best[1], created)
        return self._new_group(cur, room_id, None, dict(state), created)

    # -- events ----------------------------------------------------------------

    def persist_events(
        self,
        room_id: str,
        items: Iterable[PersistItem],
        current_state: StateMap | StateRef | None = None,
    ) -> D[dict[str, int]]:
        return self._run(self._persist_txn, room_id, list(items), current_state)

    def _persist_txn(
        self,
        cur: Cursor,
        room_id: str,
        items: list[PersistItem],
        current_state: StateMap | StateRef | None,
    ) -> dict[str, int]:
        # Every lookup here is by key; stale statistics on fast-growing tables must
        # not tempt PostgreSQL into hash joins over whole tables.
        cur.index_nested_loops()
        # Locking the room row serialises writers to one room across processes, which
        # keeps extremities and current state consistent.
        rows = cur.q(
            "SELECT room_version, current_group FROM rooms WHERE room_id = ?" + cur.for_update,
            (room_id,),
        )
        if not rows:
            raise ValueError(f"unknown room {room_id}")
        old_current: int | None = rows[0][1]
        c.check_items(room_id, items)
        existing = {
            r[0]: r[1]
            for r in cur.q_in(
                "SELECT event_id, status FROM events WHERE event_id IN ({in})",
                [i.event_id for i in items],
            )
        }
        todo: list[PersistItem] = []
        seen: set[str] = set()
        for item in items:
            if item.event_id in seen:
                continue
            old = existing.get(item.event_id)
            if old is not None and not (
                old == EventStatus.OUTLIER.value and item.status is not EventStatus.OUTLIER
            ):
                continue
            seen.add(item.event_id)
            todo.append(item)

        # Groups of events outside the batch that the batch refers to.
        wanted: set[str] = set()
        for item in todo:
            for ref in (item.state_before, item.state_after):
                if isinstance(ref, StateRef) and ref.event_id not in seen:
                    wanted.add(ref.event_id)
            if item.status is not EventStatus.OUTLIER:
                wanted.update(p for p in c.prev_ids(item.event) if p not in seen)
        if isinstance(current_state, StateRef):
            wanted.add(current_state.event_id)
        known: dict[str, tuple[int | None, int | None]] = {
            r[0]: (r[1], r[2])
            for r in cur.q_in(
                "SELECT event_id, state_before_group, state_after_group FROM events"
                " WHERE event_id IN ({in})",
                wanted,
            )
        }
        groups: dict[str, tuple[int, int]] = {}
        created: dict[int, _NewGroup] = {}

        def ref_group(ref: StateRef) -> int:
            if ref.event_id in groups:
                pair = groups[ref.event_id]
                return pair[1] if ref.after else pair[0]
            b, a = known.get(ref.event_id, (None, None))
            g = a if ref.after else b
            if g is None:
                raise ValueError(f"no state stored at {ref.event_id}")
            return int(g)

        def candidates(item: PersistItem) -> list[int]:
            out = []
            for p in c.prev_ids(item.event):
                if p in groups:
                    out.append(groups[p][1])
                elif known.get(p, (None, None))[1] is not None:
                    out.append(int(known[p][1]))  # type: ignore[arg-type]
            if not out and old_current is not None:
                out.append(old_current)
            return out

        for item in todo:
            if item.status is EventStatus.OUTLIER:
                continue
            sb = item.state_before
            assert sb is not None
            if isinstance(sb, StateRef):
                before = ref_group(sb)
            else:
                before = self._group_for_map(cur, room_id, sb, candidates(item), created)
            sa = item.state_after
            if isinstance(sa, StateRef):
                after = ref_group(sa)
            elif sa is not None:
                after = self._group_for_map(cur, room_id, sa, [before], created)
            elif c.changes_state(item):
                sk = c.state_key_of(item.event)
                assert sk is not None
                after = self._new_group(cur, room_id, before, {sk: item.event_id}, created)
            else:
                after = before
            groups[item.event_id] = (before, after)

        new_current: int | None = None
        if isinstance(current_state, StateRef):
            new_current = ref_group(current_state)
        elif current_state is not None:
            # Most often the caller's map equals the state after one of the batch's
            # last events (a join's state, say): try those before the old state.
            cands = [groups[i.event_id][1] for i in reversed(todo) if i.event_id in groups][:3]
            if old_current is not None:
                cands.append(old_current)
            new_current = self._group_for_map(cur, room_id, current_state, cands, created)

        streams = self._next_streams(cur, len(todo))
        result: dict[str, int] = {}
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        edges: list[tuple[str, str]] = []
        auths: list[tuple[str, str]] = []
        accepted: list[tuple[str, list[str]]] = []
        for item, so in zip(todo, streams, strict=True):
            ev = item.event
            b, a = groups.get(item.event_id, (None, None))
            row = (
                so,
                c.int_field(ev, "depth"),
                c.int_field(ev, "origin_server_ts"),
                item.status.value,
                item.rejection_reason,
                c.membership_of(ev),
                b,
                a,
                _dumps(ev),
            )
            if item.event_id in existing:
                updates.append((*row, item.event_id))
            else:
                inserts.append((item.event_id, room_id, *row))
            result[item.event_id] = so
            prevs = c.prev_ids(ev)
            edges.extend((item.event_id, p) for p in prevs)
            auths.extend((item.event_id, p) for p in c.auth_ids(ev))
            if item.status is EventStatus.ACCEPTED:
                accepted.append((item.event_id, prevs))
        cur.many(
            "INSERT INTO events (event_id, room_id, stream_ordering, depth, origin_server_ts,"
            " status, rejection_reason, membership, state_before_group, state_after_group,"
            " json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            inserts,
        )
        cur.many(
            "UPDATE events SET stream_ordering = ?, depth = ?, origin_server_ts = ?,"
            " status = ?, rejection_reason = ?, membership = ?, state_before_group = ?,"
            " state_after_group = ?, json = ? WHERE event_id = ?",
            updates,
        )
        cur.many(
            "INSERT INTO event_edges (event_id, prev_id) VALUES (?, ?)"
            " ON CONFLICT (event_id, prev_id) DO NOTHING",
            list(dict.fromkeys(edges)),
        )
        cur.many(
            "INSERT INTO event_auth (event_id, auth_id) VALUES (?, ?)"
            " ON CONFLICT (event_id, auth_id) DO NOTHING",
            list(dict.fromkeys(auths)),
        )

        if accepted:
            old_ext = {
                r[0]
                for r in cur.q(
                    "SELECT event_id FROM forward_extremities WHERE room_id = ?", (room_id,)
                )
            }
            referenced = {
                r[0]
                for r in cur.q_in(
                    "SELECT event_id FROM event_referenced WHERE event_id IN ({in})",
                    [e for e, _ in accepted],
                )
            }
            cur.many(
                "INSERT INTO event_referenced (event_id) VALUES (?)"
                " ON CONFLICT (event_id) DO NOTHING",
                [(p,) for p in dict.fromkeys(p for _, ps in accepted for p in ps)],
            )
            ext = c.new_extremities(old_ext, accepted, referenced)
            cur.q_in(
                "DELETE FROM forward_extremities WHERE room_id = ? AND event_id IN ({in})"
                " RETURNING event_id",
                old_ext - ext,
                before=(room_id,),
            )
            cur.many(
                "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)",
                [(room_id, e) for e in ext - old_ext],
            )
            if new_current is None:
                last = [e for e, _ in accepted if e in ext]
                if last:
                    new_current = groups[last[-1]][1]
        if new_current is not None and new_current != old_current:
            self._update_current(cur, room_id, old_current, new_current, created)
        return result

    def _update_current(
        self,
        cur: Cursor,
        room_id: str,
        old: int | None,
        new: int,
        created: dict[int, _NewGroup],
    ) -> None:
        # Usually the new group descends from the old one through groups made in
        # this batch: compose their changes instead of diffing two full states.
        steps: list[Delta] = []
        g: int | None = new
        while g is not None and g != old and g in created:
            steps.append(created[g].change)
            g = created[g].logical_parent
        if g == old and old is not None:
            diff: Delta = {}
            for step in reversed(steps):
                diff.update(step)
        else:
            base = self._resolve_group(cur, old) if old is not None else {}
            diff = c.state_diff(base, self._resolve_group(cur, new))
        gone = [k for k, v in diff.items() if v is None]
        cur.many(
            "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
            [(room_id, t, s) for t, s in gone],
        )
        present = {k: v for k, v in diff.items() if v is not None}
        memberships = {
            r[0]: r[1]
            for r in cur.q_in(
                "SELECT event_id, membership FROM events WHERE event_id IN ({in})",
                present.values(),
            )
        }
        cur.many(
            "INSERT INTO current_state (room_id, type, state_key, event_id, membership)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (room_id, type, state_key) DO UPDATE"
            " SET event_id = excluded.event_id, membership = excluded.membership",
            [(room_id, t, s, e, memberships.get(e)) for (t, s), e in present.items()],
        )
        cur.x("UPDATE rooms SET current_group = ? WHERE room_id = ?", (new, room_id))

    @staticmethod
    def _event_from_row(r: Row) -> StoredEvent:
        return StoredEvent(
            event_id=r[0],
            room_id=r[1],
            event=json.loads(r[2]),
            status=EventStatus(r[3]),
            rejection_reason=r[4],
            stream_ordering=int(r[5]),
            depth=int(r[6]),
            origin_server_ts=int(r[7]),
            room_version=r[8],
        )

    def _fetch_events(self, cur: Cursor, ids: Iterable[str]) -> dict[str, StoredEvent]:
        rows = cur.q_in(
            f"SELECT {_EVENT_COLS} FROM events e JOIN rooms r ON r.room_id = e.room_id"
            " WHERE e.event_id IN ({in})",
            ids,
        )
        return {r[0]: self._event_from_row(r) for r in rows}

    def get_events(self, event_ids: Iterable[str]) -> D[dict[str, StoredEvent]]:
        return self._read(self._fetch_events, list(event_ids))

    def have_seen(self, event_ids: Iterable[str]) -> D[set[str]]:
        ids = list(event_ids)

        def txn(cur: Cursor) -> set[str]:
            return {
                r[0] for r in cur.q_in("SELECT event_id FROM events WHERE event_id IN ({in})", ids)
            }

        return self._read(txn)

    def get_rejected(self, event_ids: Iterable[str]) -> D[dict[str, str]]:
        ids = list(event_ids)

        def txn(cur: Cursor) -> dict[str, str]:
            rows = cur.q_in(
                "SELECT event_id, rejection_reason FROM events WHERE event_id IN ({in})"
                " AND status = 'rejected'",
                ids,
            )
            return {r[0]: r[1] or "" for r in rows}

        return self._read(txn)

    def get_forward_extremities(self, room_id: str) -> D[set[str]]:
        def txn(cur: Cursor) -> set[str]:
            return {
                r[0]
                for r in cur.q(
                    "SELECT event_id FROM forward_extremities WHERE room_id = ?", (room_id,)
                )
            }

        return self._read(txn)

    def get_max_depth(self, room_id: str) -> D[int]:
        def txn(cur: Cursor) -> int:
            rows = cur.q(
                "SELECT MAX(depth) FROM events WHERE room_id = ? AND status <> 'outlier'",
                (room_id,),
            )
            return int(rows[0][0] or 0)

        return self._read(txn)

    def get_max_stream_ordering(self) -> D[int]:
        def txn(cur: Cursor) -> int:
            return int(cur.q("SELECT MAX(stream_ordering) FROM events")[0][0] or 0)

        return self._read(txn)

    # -- state -----------------------------------------------------------------

    def _state_of(self, cur: Cursor, ids: list[str], after: bool) -> dict[str, dict[StateKey, str]]:
        col = "state_after_group" if after else "state_before_group"
        rows = cur.q_in(
            f"SELECT event_id, {col} FROM events WHERE event_id IN ({{in}}) AND {col} IS NOT NULL",
            ids,
        )
        # Ancestors have smaller IDs: resolving in ID order lets later groups start
        # from earlier ones instead of from their snapshot.
        memo: dict[int, dict[StateKey, str]] = {}
        for gid in sorted({int(r[1]) for r in rows}):
            memo[gid] = self._resolve_group(cur, gid, memo)
        return {eid: dict(memo[int(gid)]) for eid, gid in rows}

    def get_state_before(self, event_id: str) -> D[dict[StateKey, str] | None]:
        return self._read(self._state_of, [event_id], False).addCallback(lambda m: m.get(event_id))

    def get_state_after(self, event_id: str) -> D[dict[StateKey, str] | None]:
        return self._read(self._state_of, [event_id], True).addCallback(lambda m: m.get(event_id))

    def get_state_after_events(self, event_ids: Iterable[str]) -> D[dict[str, dict[StateKey, str]]]:
        return self._read(self._state_of, list(event_ids), True)

    def get_current_state(self, room_id: str) -> D[dict[StateKey, str]]:
        def txn(cur: Cursor) -> dict[StateKey, str]:
            rows = cur.q(
                "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?",
                (room_id,),
            )
            return {(r[0], r[1]): r[2] for r in rows}

        return self._read(txn)

    def get_current_state_events(
        self, room_id: str, types: Iterable[str] | None = None
    ) -> D[dict[StateKey, StoredEvent]]:
        wanted = list(types) if types is not None else None

        def txn(cur: Cursor) -> dict[StateKey, StoredEvent]:
            if wanted is None:
                rows = cur.q(
                    "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?",
                    (room_id,),
                )
            else:
                rows = cur.q_in(
                    "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?"
                    " AND type IN ({in})",
                    wanted,
                    before=(room_id,),
                )
            events = self._fetch_events(cur, [r[2] for r in rows])
            return {(r[0], r[1]): events[r[2]] for r in rows if r[2] in events}

        return self._read(txn)

    def get_joined_members(self, room_id: str) -> D[set[str]]:
        def txn(cur: Cursor) -> set[str]:
            rows = cur.q(
                "SELECT state_key FROM current_state WHERE room_id = ?"
                " AND type = 'm.room.member' AND membership = 'join'",
                (room_id,),
            )
            return {r[0] for r in rows}

        return self._read(txn)

    def get_joined_servers(self, room_id: str) -> D[set[str]]:
        return self.get_joined_members(room_id).addCallback(
            lambda users: {c.server_of(u) for u in users}
        )

    # -- auth chains -----------------------------------------------------------

    def _auth_graph(self, cur: Cursor, starts: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """The stored auth events of every stored event reachable from ``starts``.

        An event's auth events never change and events are never deleted, so an
        answer whose auth events were all stored stays true forever: such answers
        are kept in a process-wide LRU and the hot part of a room's auth DAG (power
        levels, join rules, members) is then walked without touching the database.
        What is not cached comes from one recursive query per round.
        """
        graph: dict[str, tuple[str, ...]] = {}
        cold: set[str] = set()
        stack = list(starts)
        with self._cache_lock:
            while stack:
                e = stack.pop()
                if e in graph or e in cold:
                    continue
                hit = self._auth_cache.get(e)
                if hit is None:
                    cold.add(e)
                    continue
                self._auth_cache.move_to_end(e)
                graph[e] = hit
                stack.extend(hit)
        # A fetch brings the whole closure of what it is asked for, so one suffices.
        if cold:
            graph.update(self._fetch_auth_closure(cur, list(cold)))
        return graph

    def _fetch_auth_closure(self, cur: Cursor, ids: list[str]) -> dict[str, tuple[str, ...]]:
        cur.index_nested_loops()
        found: dict[str, list[str]] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            # UNION (not UNION ALL) visits each event once, however many paths. Every
            # auth event of a node is itself a node, so "stored" is "a node that
            # joins events", decided below without another lookup.
            rows = cur.q(
                "WITH RECURSIVE sub(id) AS ("
                f" SELECT event_id FROM events WHERE event_id IN ({marks})"
                " UNION SELECT a.auth_id FROM event_auth a JOIN sub ON a.event_id = sub.id)"
                " SELECT s.id, a.auth_id FROM sub s JOIN events e ON e.event_id = s.id"
                " LEFT JOIN event_auth a ON a.event_id = s.id",
                list(chunk),
            )
            for node, auth in rows:
                deps = found.setdefault(node, [])
                if auth is not None:
                    deps.append(auth)
        complete = {k: all(a in found for a in v) for k, v in found.items()}
        found = {k: [a for a in v if a in found] for k, v in found.items()}
        out = {k: tuple(v) for k, v in found.items()}
        with self._cache_lock:
            for k, v in out.items():
                if complete[k]:
                    self._auth_cache[k] = v
                    self._auth_cache.move_to_end(k)
            while len(self._auth_cache) > self._auth_cache_size:
                self._auth_cache.popitem(last=False)
        return out

    @staticmethod
    def _chain_in(graph: Mapping[str, tuple[str, ...]], ids: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        todo = [a for e in ids if e in graph for a in graph[e]]
        while todo:
            e = todo.pop()
            if e in seen:
                continue
            seen.add(e)
            todo.extend(graph.get(e, ()))
        return seen

    def _auth_chain(self, cur: Cursor, ids: list[str]) -> set[str]:
        return self._chain_in(self._auth_graph(cur, ids), ids)

    def get_auth_chain(self, event_ids: Iterable[str]) -> D[set[str]]:
        return self._read(self._auth_chain, list(dict.fromkeys(event_ids)))

    def get_auth_chain_difference(self, state_sets: Iterable[Iterable[str]]) -> D[set[str]]:
        sets = [list(s) for s in state_sets]

        def txn(cur: Cursor) -> set[str]:
            # One graph for all sets: their chains overlap almost entirely.
            graph = self._auth_graph(cur, [e for s in sets for e in s])
            chains = [self._chain_in(graph, s) | {e for e in s if e in graph} for s in sets]
            if not chains:
                return set()
            union: set[str] = set().union(*chains)
            return union - set(chains[0]).intersection(*chains[1:])

        return self._read(txn)

    # -- history ---------------------------------------------------------------

    def _walk(
        self,
        cur: Cursor,
        room_id: str,
        start: list[str],
        stop: set[str],
        limit: int,
        min_depth: int,
    ) -> list[str]:
        import heapq

        def meta(ids: Iterable[str]) -> list[Row]:
            return cur.q_in(
                "SELECT event_id, depth, stream_ordering FROM events"
                " WHERE event_id IN ({in}) AND room_id = ?",
                ids,
                after=(room_id,),
            )

        heap: list[tuple[int, int, str]] = []
        seen: set[str] = set()
        for eid, depth, so in meta(start):
            seen.add(eid)
            heapq.heappush(heap, (-int(depth), -int(so), eid))
        # An event's prev_events enter the heap only when it is popped (depths are
        # remote data and need not decrease along edges), but they are fetched for
        # everything queued at once to save round trips.
        prevs_of: dict[str, list[tuple[str, int, int]]] = {}
        out: list[str] = []
        while heap and len(out) < limit:
            eid = heapq.heappop(heap)[2]
            out.append(eid)
            if len(out) >= limit:
                break
            if eid not in prevs_of:
                batch = [eid] + [h[2] for h in heap if h[2] not in prevs_of]
                edges = cur.q_in(
                    "SELECT event_id, prev_id FROM event_edges WHERE event_id IN ({in})", batch
                )
                info = {r[0]: r for r in meta({r[1] for r in edges})}
                for b in batch:
                    prevs_of[b] = []
                for e, p in edges:
                    if p in info:
                        prevs_of[e].append((p, int(info[p][1]), int(info[p][2])))
            for p, depth, so in prevs_of[eid]:
                if p in seen or p in stop or depth < min_depth:
                    continue
                seen.add(p)
                heapq.heappush(heap, (-depth, -so, p))
        return out

    def backfill(
        self, room_id: str, from_event_ids: Iterable[str], limit: int
    ) -> D[list[StoredEvent]]:
        start = list(from_event_ids)

        def txn(cur: Cursor) -> list[StoredEvent]:
            ids = self._walk(cur, room_id, start, set(), limit, 0)
            events = self._fetch_events(cur, ids)
            return [events[e] for e in ids]

        return self._read(txn)

    def get_missing_events(
        self,
        room_id: str,
        earliest_events: Iterable[str],
        latest_events: Iterable[str],
        limit: int,
        min_depth: int = 0,
    ) -> D[list[StoredEvent]]:
        stop = set(earliest_events)
        latest = list(latest_events)

        def txn(cur: Cursor) -> list[StoredEvent]:
            prevs = cur.q_in(
                "SELECT ed.prev_id FROM event_edges ed JOIN events e ON e.event_id = ed.event_id"
                " WHERE ed.event_id IN ({in})",
                latest,
            )
            starts = [
                r[0]
                for r in cur.q_in(
                    "SELECT event_id FROM events WHERE event_id IN ({in}) AND depth >= ?",
                    [p[0] for p in prevs if p[0] not in stop],
                    after=(min_depth,),
                )
            ]
            ids = self._walk(cur, room_id, starts, stop, limit, min_depth)
            events = self._fetch_events(cur, ids)
            return [events[e] for e in reversed(ids)]

        return self._read(txn)

    def get_event_at_timestamp(
        self, room_id: str, ts: int, direction: str
    ) -> D[tuple[str, int] | None]:
        if direction == "f":
            sql = (
                "SELECT event_id, origin_server_ts FROM events WHERE room_id = ?"
                " AND origin_server_ts >= ? AND status IN ('accepted', 'soft_failed')"
                " ORDER BY origin_server_ts, stream_ordering LIMIT 1"
            )
        else:
            sql = (
                "SELECT event_id, origin_server_ts FROM events WHERE room_id = ?"
                " AND origin_server_ts <= ? AND status IN ('accepted', 'soft_failed')"
                " ORDER BY origin_server_ts DESC, stream_ordering DESC LIMIT 1"
            )

        def txn(cur: Cursor) -> tuple[str, int] | None:
            rows = cur.q(sql, (room_id, ts))
            return (rows[0][0], int(rows[0][1])) if rows else None

        return self._read(txn)

    # -- received transactions -------------------------------------------------

    def claim_received_transaction(
        self, origin: str, txn_id: str, claimer: str, lease_ms: int = 60_000
    ) -> D[TxnClaim]:
        def txn(cur: Cursor) -> TxnClaim:
            now = self._clock()
            inserted = cur.q(
                "INSERT INTO received_transactions (origin, txn_id, claimer, claim_ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (origin, txn_id) DO NOTHING RETURNING origin",
                (origin, txn_id, claimer, now),
            )
            if inserted:
                return TxnClaim(TxnClaimStatus.CLAIMED)
            rows = cur.q(
                "SELECT claimer, claim_ts, response_json FROM received_transactions"
                " WHERE origin = ? AND txn_id = ?" + cur.for_update,
                (origin, txn_id),
            )
            who, ts, resp = rows[0]
            if resp is not None:
                return TxnClaim(TxnClaimStatus.DONE, json.loads(resp))
            if who not in (None, claimer) and now - int(ts) < lease_ms:
                return TxnClaim(TxnClaimStatus.IN_PROGRESS)
            cur.x(
                "UPDATE received_transactions SET claimer = ?, claim_ts = ?"
                " WHERE origin = ? AND txn_id = ?",
                (claimer, now, origin, txn_id),
            )
            return TxnClaim(TxnClaimStatus.CLAIMED)

        return self._run(txn)

    def store_received_transaction(
        self, origin: str, txn_id: str, response: Mapping[str, Any]
    ) -> D[None]:
        def txn(cur: Cursor) -> None:
            cur.x(
                "INSERT INTO received_transactions (origin, txn_id, claimer, claim_ts,"
                " response_json) VALUES (?, ?, NULL, ?, ?) ON CONFLICT (origin, txn_id)"
                " DO UPDATE SET claimer = NULL, response_json = excluded.response_json",
                (origin, txn_id, self._clock(), _dumps(response)),
            )

        return self._run(txn)

    def release_received_transaction(self, origin: str, txn_id: str, claimer: str) -> D[None]:
        def txn(cur: Cursor) -> None:
            cur.x(
                "DELETE FROM received_transactions WHERE origin = ? AND txn_id = ?"
                " AND claimer = ? AND response_json IS NULL",
                (origin, txn_id, claimer),
            )

        return self._run(txn)

    def get_received_transaction(self, origin: str, txn_id: str) -> D[Mapping[str, Any] | None]:
        def txn(cur: Cursor) -> Mapping[str, Any] | None:
            rows = cur.q(
                "SELECT response_json FROM received_transactions WHERE origin = ? AND txn_id = ?",
                (origin, txn_id),
            )
            return json.loads(rows[0][0]) if rows and rows[0][0] is not None else None

        return self._read(txn)

    # -- outbound queues -------------------------------------------------------

    def enqueue_pdus(self, destinations: Iterable[str], event_ids: Iterable[str]) -> D[None]:
        dests = list(dict.fromkeys(destinations))
        ids = list(dict.fromkeys(event_ids))

        def txn(cur: Cursor) -> None:
            rows = cur.q_in(
                "SELECT event_id, room_id, stream_ordering FROM events WHERE event_id IN ({in})",
                ids,
            )
            if len(rows) != len(ids):
                found = {r[0] for r in rows}
                missing = [e for e in ids if e not in found]
                raise ValueError(f"cannot queue unknown events {missing[:5]}")
            order = {e: i for i, e in enumerate(ids)}
            rows.sort(key=lambda r: order[r[0]])
            cur.many(
                "INSERT INTO pdu_queue (destination, event_id, room_id, stream_ordering)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (destination, event_id) DO NOTHING",
                [(d, r[0], r[1], r[2]) for d in dests for r in rows],
            )

        return self._run(txn)

    def enqueue_edu(self, destination: str, edu: Mapping[str, Any]) -> D[None]:
        def txn(cur: Cursor) -> None:
            cur.x(
                "INSERT INTO edu_queue (destination, json) VALUES (?, ?)",
                (destination, _dumps(edu)),
            )

        return self._run(txn)

    def claim_next_batch(
        self,
        destination: str,
        claimer: str,
        max_pdus: int = 50,
        max_edus: int = 100,
        lease_ms: int = 120_000,
    ) -> D[OutboundBatch | None]:
        def txn(cur: Cursor) -> OutboundBatch | None:
            now = self._clock()
            cur.x(
                "INSERT INTO destinations (destination) VALUES (?)"
                " ON CONFLICT (destination) DO NOTHING",
                (destination,),
            )
            # SKIP LOCKED: a concurrent claimer holds the row, so it holds the lease.
            lock = " FOR UPDATE SKIP LOCKED" if cur.postgres else ""
            rows = cur.q(
                "SELECT lease_claimer, lease_expires_ts FROM destinations"
                " WHERE destination = ?" + lock,
                (destination,),
            )
            if not rows:
                return None
            who, expires = rows[0]
            if who is not None and who != claimer and expires is not None and int(expires) > now:
                return None
            pdus = cur.q(
                "SELECT position, event_id, room_id, stream_ordering FROM pdu_queue"
                " WHERE destination = ? ORDER BY stream_ordering, position LIMIT ?",
                (destination, max_pdus),
            )
            edus = cur.q(
                "SELECT position, json FROM edu_queue WHERE destination = ?"
                " ORDER BY position LIMIT ?",
                (destination, max_edus),
            )
            if not pdus and not edus:
                if who == claimer:
                    cur.x(
                        "UPDATE destinations SET lease_claimer = NULL, lease_expires_ts = NULL"
                        " WHERE destination = ?",
                        (destination,),
                    )
                return None
            cur.x(
                "UPDATE destinations SET lease_claimer = ?, lease_expires_ts = ?"
                " WHERE destination = ?",
                (claimer, now + lease_ms, destination),
            )
            return OutboundBatch(
                destination,
                claimer,
                tuple(QueuedPdu(int(p[0]), p[1], p[2]) for p in pdus),
                tuple(QueuedEdu(int(e[0]), json.loads(e[1])) for e in edus),
                max((int(p[3]) for p in pdus), default=None),
            )

        return self._run(txn)

    def _release(self, cur: Cursor, destination: str, claimer: str) -> None:
        cur.x(
            "UPDATE destinations SET lease_claimer = NULL, lease_expires_ts = NULL"
            " WHERE destination = ? AND lease_claimer = ?",
            (destination, claimer),
        )

    def ack_batch(self, destination: str, batch: OutboundBatch) -> D[None]:
        def txn(cur: Cursor) -> None:
            cur.many(
                "DELETE FROM pdu_queue WHERE position = ?", [(p.position,) for p in batch.pdus]
            )
            cur.many(
                "DELETE FROM edu_queue WHERE position = ?", [(e.position,) for e in batch.edus]
            )
            if batch.max_stream_ordering is not None:
                cur.x(
                    "UPDATE destinations SET last_successful_stream = ? WHERE destination = ?"
                    " AND (last_successful_stream IS NULL OR last_successful_stream < ?)",
                    (batch.max_stream_ordering, destination, batch.max_stream_ordering),
                )
            self._release(cur, destination, batch.claimer)

        return self._run(txn)

    def release_batch(self, destination: str, batch: OutboundBatch) -> D[None]:
        return self._run(self._release, destination, batch.claimer)

    def get_destinations_with_pending(self) -> D[set[str]]:
        def txn(cur: Cursor) -> set[str]:
            rows = cur.q(
                "SELECT DISTINCT destination FROM pdu_queue"
                " UNION SELECT DISTINCT destination FROM edu_queue"
            )
            return {r[0] for r in rows}

        return self._read(txn)

    def collapse_pdu_queue(self, destination: str) -> D[int]:
        def txn(cur: Cursor) -> int:
            return cur.x(
                "DELETE FROM pdu_queue WHERE destination = ? AND position NOT IN ("
                " SELECT q.position FROM pdu_queue q WHERE q.destination = ? AND"
                " q.stream_ordering = (SELECT MAX(q2.stream_ordering) FROM pdu_queue q2"
                " WHERE q2.destination = q.destination AND q2.room_id = q.room_id))",
                (destination, destination),
            )

        return self._run(txn)

    def get_last_successful_stream_ordering(self, destination: str) -> D[int | None]:
        def txn(cur: Cursor) -> int | None:
            rows = cur.q(
                "SELECT last_successful_stream FROM destinations WHERE destination = ?",
                (destination,),
            )
            return int(rows[0][0]) if rows and rows[0][0] is not None else None

        return self._read(txn)

    def get_destination_retry(self, destination: str) -> D[DestinationRetry | None]:
        def txn(cur: Cursor) -> DestinationRetry | None:
            rows = cur.q(
                "SELECT failure_ts, retry_interval_ms FROM destinations WHERE destination = ?"
                " AND failure_ts IS NOT NULL",
                (destination,),
            )
            return DestinationRetry(int(rows[0][0]), int(rows[0][1])) if rows else None

        return self._read(txn)

    def set_destination_retry(
        self, destination: str, failure_ts: int, retry_interval_ms: int
    ) -> D[None]:
        def txn(cur: Cursor) -> None:
            cur.x(
                "INSERT INTO destinations (destination, failure_ts, retry_interval_ms)"
                " VALUES (?, ?, ?) ON CONFLICT (destination) DO UPDATE"
                " SET failure_ts = excluded.failure_ts,"
                " retry_interval_ms = excluded.retry_interval_ms",
                (destination, failure_ts, retry_interval_ms),
            )

        return self._run(txn)

    def reset_destination_retry(self, destination: str) -> D[None]:
        def txn(cur: Cursor) -> None:
            cur.x(
                "UPDATE destinations SET failure_ts = NULL, retry_interval_ms = NULL"
                " WHERE destination = ?",
                (destination,),
            )

        return self._run(txn)

    # -- keys ------------------------------------------------------------------

    def store_own_key(self, key: OwnKey) -> D[None]:
        def txn(cur: Cursor) -> None:
            cur.x(
                "INSERT INTO own_keys (key_id, verify_key, secret_seed, expired_ts)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (key_id) DO UPDATE SET"
                " verify_key = excluded.verify_key, secret_seed = excluded.secret_seed,"
                " expired_ts = excluded.expired_ts",
                (key.key_id, key.verify_key_b64, key.secret_seed_b64, key.expired_ts),
            )

        return self._run(txn)

    def get_own_keys(self) -> D[list[OwnKey]]:
        def txn(cur: Cursor) -> list[OwnKey]:
            rows = cur.q("SELECT key_id, verify_key, secret_seed, expired_ts FROM own_keys")
            keys = [OwnKey(r[0], r[1], r[2], None if r[3] is None else int(r[3])) for r in rows]
            keys.sort(key=lambda k: (k.expired_ts is not None, k.key_id))
            return keys

        return self._read(txn)

    def store_server_keys(
        self,
        server_name: str,
        keys: Iterable[ServerKey],
        raw_json: Mapping[str, Any] | None = None,
    ) -> D[None]:
        new = list(keys)
        raw = _dumps(raw_json) if raw_json is not None else None

        def txn(cur: Cursor) -> None:
            old = {
                r[0]: ServerKey(
                    server_name, r[0], r[1], int(r[2]), None if r[3] is None else int(r[3])
                )
                for r in cur.q_in(
                    "SELECT key_id, verify_key, valid_until_ts, expired_ts FROM server_keys"
                    " WHERE server_name = ? AND key_id IN ({in})" + cur.for_update,
                    [k.key_id for k in new],
                    before=(server_name,),
                )
            }
            rows = []
            for k in new:
                if k.key_id in old and not c.key_supersedes(k, old[k.key_id]):
                    continue
                rows.append(
                    (server_name, k.key_id, k.verify_key_b64, k.valid_until_ts, k.expired_ts, raw)
                )
            cur.many(
                "INSERT INTO server_keys (server_name, key_id, verify_key, valid_until_ts,"
                " expired_ts, json) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (server_name, key_id)"
                " DO UPDATE SET verify_key = excluded.verify_key,"
                " valid_until_ts = excluded.valid_until_ts, expired_ts = excluded.expired_ts,"
                " json = COALESCE(excluded.json, server_keys.json)",
                rows,
            )

        return self._run(txn)

    def _keys_rows(self, cur: Cursor, server_name: str, key_ids: list[str] | None) -> list[Row]:
        cols = "key_id, verify_key, valid_until_ts, expired_ts, json"
        if key_ids is None:
            return cur.q(f"SELECT {cols} FROM server_keys WHERE server_name = ?", (server_name,))
        return cur.q_in(
            f"SELECT {cols} FROM server_keys WHERE server_name = ? AND key_id IN ({{in}})",
            key_ids,
            before=(server_name,),
        )

    def get_server_keys(
        self, server_name: str, key_ids: Iterable[str] | None = None
    ) -> D[dict[str, ServerKey]]:
        ids = list(key_ids) if key_ids is not None else None

        def txn(cur: Cursor) -> dict[str, ServerKey]:
            return {
                r[0]: ServerKey(
                    server_name, r[0], r[1], int(r[2]), None if r[3] is None else int(r[3])
                )
                for r in self._keys_rows(cur, server_name, ids)
            }

        return self._read(txn)

    def get_server_keys_json(
        self, server_name: str, key_ids: Iterable[str] | None = None
    ) -> D[list[Mapping[str, Any]]]:
        ids = list(key_ids) if key_ids is not None else None

        def txn(cur: Cursor) -> list[Mapping[str, Any]]:
            raws = dict.fromkeys(
                r[4] for r in self._keys_rows(cur, server_name, ids) if r[4] is not None
            )
            return [json.loads(r) for r in raws]

        return self._read(txn)
