"""MemoryStore and the SQL stores must answer alike: random room histories (forks,
merges given as state maps, every event status, outliers de-outliered later) go into
both, then every query is compared."""

from __future__ import annotations

import os
import random
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from fedlib.storage import EventStatus, MemoryStore, PersistItem, StateRef
from fedlib.storage.sqlite import SqliteStore
from tests.pg_util import PG_URL, drop_schema, fresh_schema, postgres_unavailable
from tests.storage_suite import ROOM, ev

_PG_SKIP = postgres_unavailable()

STATUSES = [EventStatus.ACCEPTED] * 15 + [
    EventStatus.REJECTED,
    EventStatus.REJECTED,
    EventStatus.SOFT_FAILED,
    EventStatus.OUTLIER,
    EventStatus.OUTLIER,
]


def sync(d: defer.Deferred[Any]) -> Any:
    """The result of an already-fired Deferred (MemoryStore answers at once)."""
    out: list[Any] = []
    d.addBoth(out.append)
    if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class DifferentialTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def _history(self, seed: int, backend: str = "sqlite") -> Generator[Any, Any, None]:
        rng = random.Random(seed)
        mem = MemoryStore()
        if backend == "sqlite":
            sql = yield SqliteStore.open(os.path.abspath(self.mktemp()) + ".db")
        else:
            if _PG_SKIP:
                raise unittest.SkipTest(_PG_SKIP)
            from fedlib.storage.postgres import PostgresStore

            schema = fresh_schema()
            self.addCleanup(threads.deferToThread, drop_schema, schema)
            sql = yield PostgresStore.open(PG_URL, schema)
        self.addCleanup(sql.close)
        stores = [mem, sql]
        for s in stores:
            yield s.store_room(ROOM, "10")
        create = ev("$c", [], 1, typ="m.room.create", state_key="")
        for s in stores:
            yield s.persist_events(ROOM, [PersistItem(create, "$c", state_before={})])
        with_state = ["$c"]  # events that can be prev_events (non-outliers)
        outliers: list[tuple[dict[str, Any], str]] = []
        all_ids = ["$c"]
        n = 0
        for _ in range(60):
            batch: list[PersistItem] = []
            current = None
            for _ in range(rng.randrange(1, 8)):
                n += 1
                eid = f"$e{n}"
                prevs = rng.sample(
                    with_state[-6:], min(len(with_state[-6:]), rng.choice([1, 1, 2]))
                )
                if any(p in {b.event_id for b in batch} for p in prevs):
                    prevs = [prevs[0]]
                depth = 1 + max(
                    sync(mem.get_events(prevs))[p].depth if p in sync(mem.get_events(prevs)) else 0
                    for p in prevs
                )
                r = rng.random()
                kw: dict[str, Any] = {"auth": rng.sample(all_ids, min(3, len(all_ids)))}
                if r < 0.4:
                    e = ev(
                        eid,
                        prevs,
                        depth,
                        typ="m.room.member",
                        state_key=f"@u{rng.randrange(12)}:s{rng.randrange(3)}",
                        membership=rng.choice(["join", "leave"]),
                        ts=rng.randrange(0, 500),
                        **kw,
                    )
                elif r < 0.5:
                    e = ev(
                        eid,
                        prevs,
                        depth,
                        typ="m.room.name",
                        state_key="",
                        ts=rng.randrange(0, 500),
                        **kw,
                    )
                else:
                    e = ev(eid, prevs, depth, ts=rng.randrange(0, 500), **kw)
                status = rng.choice(STATUSES)
                all_ids.append(eid)
                if status is EventStatus.OUTLIER:
                    batch.append(PersistItem(e, eid, status))
                    outliers.append((e, eid))
                    continue
                in_batch = [b for b in batch if b.event_id == prevs[0]]
                if len(prevs) == 1 and (in_batch or rng.random() < 0.7):
                    before: Any = StateRef(prevs[0])
                else:
                    merged: dict[tuple[str, str], str] = {}
                    for p in prevs:
                        merged.update(sync(mem.get_state_after(p)) or {})
                    if rng.random() < 0.2:
                        merged.pop(("m.room.name", ""), None)
                    before = merged
                reason = "nope" if status is EventStatus.REJECTED else None
                batch.append(PersistItem(e, eid, status, reason, state_before=before))
                if status is not EventStatus.REJECTED:
                    with_state.append(eid)
            if rng.random() < 0.1 and len(outliers) > 0:
                # De-outlier an old outlier whose prevs have state.
                e, eid = outliers.pop(0)
                if all(p in with_state for p in e["prev_events"]) and e["prev_events"]:
                    batch.append(PersistItem(e, eid, state_before=StateRef(e["prev_events"][0])))
            if rng.random() < 0.1:
                current = StateRef("$c")
            results = []
            for s in stores:
                results.append((yield s.persist_events(ROOM, batch, current_state=current)))
            self.assertEqual(set(results[0]), set(results[1]))
            # Outliers whose prevs were only in this batch may still be valid prevs later.
            with_state = [w for w in with_state if w in sync(mem.have_seen([w]))]

        yield self._compare(stores, all_ids, rng)

    @defer.inlineCallbacks
    def _compare(
        self, stores: list[Any], ids: list[str], rng: random.Random
    ) -> Generator[Any, Any, None]:
        async_results: list[list[Any]] = [[], []]
        for i, s in enumerate(stores):
            out = async_results[i]
            evs = yield s.get_events(ids)
            out.append(
                {k: (v.status, v.rejection_reason, v.depth, v.event) for k, v in evs.items()}
            )
            orders = sorted(evs, key=lambda k: evs[k].stream_ordering)
            out.append(orders)
            out.append((yield s.have_seen(ids + ["$none"])))
            out.append((yield s.get_rejected(ids)))
            out.append((yield s.get_forward_extremities(ROOM)))
            out.append((yield s.get_current_state(ROOM)))
            out.append((yield s.get_joined_members(ROOM)))
            out.append((yield s.get_joined_servers(ROOM)))
            out.append((yield s.get_max_depth(ROOM)))
            for e in ids:
                out.append((e, (yield s.get_state_before(e)), (yield s.get_state_after(e))))
            out.append((yield s.get_state_after_events(ids)))
            r = random.Random(7)
            for _ in range(15):
                pick = r.sample(ids, 3)
                out.append((yield s.get_auth_chain(pick)))
                out.append((yield s.get_auth_chain_difference([pick[:1], pick[1:]])))
                out.append(
                    ["backfill", pick]
                    + [x.event_id for x in (yield s.backfill(ROOM, pick, r.randrange(1, 30)))]
                )
                out.append(
                    [
                        x.event_id
                        for x in (
                            yield s.get_missing_events(
                                ROOM, pick[:1], pick[1:], r.randrange(1, 30), r.randrange(0, 5)
                            )
                        )
                    ]
                )
                ts = r.randrange(-10, 510)
                out.append((yield s.get_event_at_timestamp(ROOM, ts, "f")))
                out.append((yield s.get_event_at_timestamp(ROOM, ts, "b")))
        for a, b in zip(async_results[0], async_results[1], strict=True):
            self.assertEqual(a, b)

    def test_seed_1(self) -> defer.Deferred[None]:
        return self._history(1)

    def test_seed_2(self) -> defer.Deferred[None]:
        return self._history(2)

    def test_seed_3(self) -> defer.Deferred[None]:
        return self._history(3)

    def test_postgres_seed_4(self) -> defer.Deferred[None]:
        return self._history(4, "postgres")
