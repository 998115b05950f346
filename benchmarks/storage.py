"""Storage benchmark: persist throughput and read latency for SQLite and PostgreSQL.

Builds one room of synthetic events (no signatures): a create event, ``--members``
joins, then messages with occasional membership changes and a power-levels change
every 1,000 events (``--pl-every``; each is authed by the previous one, so
auth chains grow deep), persisted in batches of 50. Then
measures, as medians over ``--reads`` runs: get 100 random events by ID, the state
after a random event, the auth chain of a random join and of the last power-levels event (the deepest
chain), and the auth chain difference of two full states (first call, then warm:
the stores cache immutable auth edges); finally the on-disk size.

    python benchmarks/storage.py                 # 10,000 members, 100,000 events
    python benchmarks/storage.py --quick         # 1,000 members, 10,000 events
    python benchmarks/storage.py --backend sqlite
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedlib.storage import PersistItem, StateRef

ROOM = "!bench:a.example"
PG_URL = os.environ.get("FEDLIB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def build_events(
    members: int, total: int, seed: int = 1, pl_every: int = 1000
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    prev: str | None = None
    pl = "$create"
    users: list[str] = []

    def add(eid: str, typ: str, sk: str | None, content: dict[str, Any], auth: list[str]) -> None:
        nonlocal prev
        e: dict[str, Any] = {
            "event_id": eid,
            "type": typ,
            "room_id": ROOM,
            "sender": "@creator:a.example",
            "prev_events": [prev] if prev else [],
            "auth_events": auth,
            "depth": len(out) + 1,
            "origin_server_ts": 1_600_000_000_000 + len(out) * 1000,
            "content": content,
            "hashes": {"sha256": "x" * 43},
            "signatures": {"a.example": {"ed25519:k": "s" * 86}},
        }
        if sk is not None:
            e["state_key"] = sk
        out.append(e)
        prev = eid

    add("$create", "m.room.create", "", {"room_version": "10"}, [])
    add("$pl0", "m.room.power_levels", "", {"users": {}}, ["$create"])
    pl = "$pl0"
    add("$jr", "m.room.join_rules", "", {"join_rule": "public"}, ["$create", pl])
    for i in range(members):
        u = f"@user{i}:s{i % 50}.example"
        users.append(u)
        add(f"$join{i}", "m.room.member", u, {"membership": "join"}, ["$create", pl, "$jr"])
    n = 0
    while len(out) < total:
        n += 1
        r = rng.random()
        if n % pl_every == 0:
            add(f"$pl{n}", "m.room.power_levels", "", {"users": {}}, ["$create", pl])
            pl = f"$pl{n}"
        elif r < 0.05:
            u = rng.choice(users)
            m = rng.choice(["join", "leave"])
            add(f"$m{n}", "m.room.member", u, {"membership": m}, ["$create", pl, "$jr"])
        else:
            add(f"$msg{n}", "m.room.message", None, {"body": f"hello {n}"}, ["$create", pl])
    return out


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


@defer.inlineCallbacks
def run(
    store: Any, events: list[dict[str, Any]], reads: int
) -> Generator[Any, Any, dict[str, Any]]:
    yield store.store_room(ROOM, "10")
    t0 = time.perf_counter()
    prev: str | None = None
    for i in range(0, len(events), 50):
        items = []
        for e in events[i : i + 50]:
            items.append(PersistItem(e, e["event_id"], state_before=StateRef(prev) if prev else {}))
            prev = e["event_id"]
        yield store.persist_events(ROOM, items)
    persist_s = time.perf_counter() - t0
    rng = random.Random(2)
    ids = [e["event_id"] for e in events]
    joins = [e["event_id"] for e in events if e["type"] == "m.room.member"]

    last_pl = [e["event_id"] for e in events if e["type"] == "m.room.power_levels"][-1]
    get100, state, chain, deep = [], [], [], []
    for _ in range(reads):
        sample = rng.sample(ids, 100)
        t = time.perf_counter()
        got = yield store.get_events(sample)
        get100.append(time.perf_counter() - t)
        assert len(got) == 100
        eid = rng.choice(ids[len(ids) // 2 :])
        t = time.perf_counter()
        st = yield store.get_state_after(eid)
        state.append(time.perf_counter() - t)
        assert st
        j = rng.choice(joins[len(joins) // 2 :])
        t = time.perf_counter()
        ch = yield store.get_auth_chain([j])
        chain.append(time.perf_counter() - t)
        assert "$create" in ch
        t = time.perf_counter()
        dch = yield store.get_auth_chain([last_pl])
        deep.append(time.perf_counter() - t)
    # State resolution's input: the auth chain difference of two full states.
    mid = yield store.get_state_after(ids[len(ids) // 2])
    end = yield store.get_state_after(ids[-1])
    diff_runs = []
    for _ in range(4):
        t = time.perf_counter()
        diff = yield store.get_auth_chain_difference([set(mid.values()), set(end.values())])
        diff_runs.append(time.perf_counter() - t)
    return {
        "chain_diff_cold_ms": diff_runs[0] * 1000,
        "chain_diff_ms": median_ms(diff_runs[1:]),
        "chain_diff_size": len(diff),
        "events": len(events),
        "persist_events_per_s": len(events) / persist_s,
        "get_100_events_ms": median_ms(get100),
        "state_after_event_ms": median_ms(state),
        "state_size": len(st),
        "auth_chain_of_join_ms": median_ms(chain),
        "auth_chain_size": len(ch),
        "deep_chain_ms": median_ms(deep),
        "deep_chain_size": len(dch),
    }


@defer.inlineCallbacks
def bench_sqlite(events: list[dict[str, Any]], reads: int) -> Generator[Any, Any, dict[str, Any]]:
    from fedlib.storage.sqlite import SqliteStore

    tmp = tempfile.mkdtemp(prefix="fedlib-bench-")
    path = os.path.join(tmp, "bench.db")
    try:
        store = yield SqliteStore.open(path)
        res = yield run(store, events, reads)
        yield store.close()
        import sqlite3

        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        groups, size = conn.execute(
            "SELECT COUNT(*), SUM(LENGTH(entries)) FROM state_groups"
        ).fetchone()
        res["state_groups"], res["state_mb"] = groups, size / 2**20
        conn.close()
        res["disk_mb"] = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 2**20
        return res
    finally:
        shutil.rmtree(tmp)


@defer.inlineCallbacks
def bench_postgres(events: list[dict[str, Any]], reads: int) -> Generator[Any, Any, dict[str, Any]]:
    import uuid

    import psycopg

    from fedlib.storage.postgres import PostgresStore

    schema = "fedlib_bench_" + uuid.uuid4().hex[:8]
    store = yield PostgresStore.open(PG_URL, schema)
    try:
        res = yield run(store, events, reads)
    finally:
        yield store.close()
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        size = conn.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'S')",
            (schema,),
        ).fetchone()
        res["disk_mb"] = int(size[0]) / 2**20 if size else 0.0
        row = conn.execute(
            f"SELECT COUNT(*), SUM(LENGTH(entries)) FROM {schema}.state_groups"
        ).fetchone()
        assert row is not None
        res["state_groups"], res["state_mb"] = int(row[0]), int(row[1]) / 2**20
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return res


@defer.inlineCallbacks
def main(reactor: Any, argv: list[str]) -> Generator[Any, Any, None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1,000 members, 10,000 events")
    p.add_argument("--members", type=int)
    p.add_argument("--events", type=int)
    p.add_argument("--reads", type=int, default=30)
    p.add_argument(
        "--pl-every", type=int, default=1000, help="a power-levels change every N events"
    )
    p.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = p.parse_args(argv)
    members = args.members or (1_000 if args.quick else 10_000)
    total = args.events or (10_000 if args.quick else 100_000)
    events = build_events(members, total, pl_every=args.pl_every)
    print(f"room: {members} members, {len(events)} events, batches of 50")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for name in backends:
        fn = bench_sqlite if name == "sqlite" else bench_postgres
        res = yield fn(events, args.reads)
        print(
            f"{name:9s} persist {res['persist_events_per_s']:8.0f} ev/s | "
            f"get 100 events {res['get_100_events_ms']:6.2f} ms | "
            f"state after event ({res['state_size']} keys) {res['state_after_event_ms']:6.2f} ms | "
            f"auth chain of a join ({res['auth_chain_size']} events) "
            f"{res['auth_chain_of_join_ms']:6.2f} ms | deep auth chain ({res['deep_chain_size']}) "
            f"{res['deep_chain_ms']:6.2f} ms | auth chain difference of two full states "
            f"({res['chain_diff_size']}) first {res['chain_diff_cold_ms']:7.2f} ms, "
            f"then {res['chain_diff_ms']:7.2f} ms | on disk {res['disk_mb']:.1f} MiB, "
            f"{res['state_groups']} state groups holding {res['state_mb']:.1f} MiB of JSON"
        )


if __name__ == "__main__":
    task.react(main, [sys.argv[1:]])
