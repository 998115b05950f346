"""Inbound federation load: signed /send transactions and send_join into a fedlib
server on SQLite, over real HTTP on 127.0.0.1.

    python benchmarks/inbound.py [--servers 4] [--rooms 2] [--txns 20]
                                 [--join-sizes 1000,10000] [--db DIR]

Reports accepted PDUs/s, p50/p99 transaction latency, peak RSS, and send_join (v2)
times with and without ``omit_members``. The load generator shares the process
and reactor with the server (so latency includes the client's share).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import treq
from twisted.internet import defer, reactor, task

from fedlib.canonical import encode_canonical_json
from fedlib.crypto.request_auth import sign_request
from fedlib.hooks import NullHooks
from fedlib.server.config import ServerConfig
from fedlib.server.resource import build_resource, build_site
from fedlib.storage.interface import EventStatus, PersistItem, StateRef
from fedlib.storage.sqlite import SqliteStore
from tests.server_helpers import FakeKeyring, Remote, RoomBuilder

US = "us.test"
ALICE = "@alice:us.test"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def persist_room(store: Any, rb: RoomBuilder, batch: int = 2000) -> None:
    """Store a linear room as accepted, each event's state given by reference to the
    previous event (a full map per event would be quadratic)."""
    await store.store_room(rb.room_id, rb.version)
    items: list[PersistItem] = []
    prev: str | None = None
    for event_id, ev in rb.events.items():
        before: Any = {} if prev is None else StateRef(prev)
        items.append(
            PersistItem(
                event=ev, event_id=event_id, status=EventStatus.ACCEPTED, state_before=before
            )
        )
        prev = event_id
        if len(items) >= batch:
            await store.persist_events(rb.room_id, items)
            items = []
    if items:
        await store.persist_events(rb.room_id, items)


async def put(base: str, origin: Remote, path: str, body: Any) -> tuple[int, Any]:
    auth = sign_request("PUT", path, origin.name, US, origin.key, body)
    resp = await treq.put(
        base + path,
        data=encode_canonical_json(body),
        headers={"Authorization": [auth], "Content-Type": ["application/json"]},
    )
    return resp.code, await resp.json()


async def get(base: str, origin: Remote, path: str) -> tuple[int, Any]:
    auth = sign_request("GET", path, origin.name, US, origin.key)
    resp = await treq.get(base + path, headers={"Authorization": [auth]})
    return resp.code, await resp.json()


async def load(
    args: argparse.Namespace, base: str, store: Any, us: Remote, remotes: list[Remote]
) -> None:
    rooms: list[tuple[Remote, RoomBuilder]] = []
    for remote in remotes:
        for _ in range(args.rooms):
            rb = RoomBuilder("10", {US: us, remote.name: remote})
            rb.create_room(ALICE, extra_members=[f"@u:{remote.name}"])
            await persist_room(store, rb)
            rooms.append((remote, rb))
    latencies: list[float] = []
    accepted = 0
    sent = 0

    async def origin_worker(remote: Remote) -> None:
        nonlocal accepted, sent
        mine = [rb for r, rb in rooms if r is remote]
        for t in range(args.txns):
            rb = mine[t % len(mine)]
            pdus = []
            for _ in range(50):
                eid, ev = rb.make("m.room.message", f"@u:{remote.name}", {"body": "hello"})
                rb.accept(eid, ev)
                pdus.append(ev)
            body = {
                "origin": remote.name,
                "origin_server_ts": int(time.time() * 1000),
                "pdus": pdus,
            }
            start = time.perf_counter()
            code, answer = await put(base, remote, f"/_matrix/federation/v1/send/{t}", body)
            latencies.append(time.perf_counter() - start)
            sent += len(pdus)
            if code == 200:
                accepted += sum(1 for r in answer["pdus"].values() if not r)

    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(origin_worker(r)) for r in remotes])
    elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"servers={len(remotes)} rooms/server={args.rooms} txns/server={args.txns} (50 PDUs each)"
    )
    print(f"accepted {accepted}/{sent} PDUs in {elapsed:.2f}s: {accepted / elapsed:.0f} PDUs/s")
    print(
        f"transaction latency p50={statistics.median(latencies) * 1000:.0f}ms "
        f"p99={p99 * 1000:.0f}ms; peak RSS {rss_mib():.0f} MiB"
    )


async def joins(
    args: argparse.Namespace, base: str, store: Any, us: Remote, remote: Remote
) -> None:
    for size in [int(s) for s in args.join_sizes.split(",") if s]:
        built = time.perf_counter()
        rb = RoomBuilder("10", {US: us, remote.name: remote})
        rb.create_room(ALICE)
        for i in range(size):
            rb.add(
                "m.room.member",
                f"@m{i}:{remote.name}",
                {"membership": "join"},
                f"@m{i}:{remote.name}",
            )
        await persist_room(store, rb)
        built = time.perf_counter() - built
        for omit in (False, True):
            user = f"@joiner{int(omit)}:{remote.name}"
            code, answer = await get(
                base, remote, f"/_matrix/federation/v1/make_join/{rb.room_id}/{quote(user)}?ver=10"
            )
            assert code == 200, answer
            eid, ev = rb.make(
                "m.room.member",
                user,
                {"membership": "join"},
                user,
                prev=answer["event"]["prev_events"],
                auth=answer["event"]["auth_events"],
            )
            query = "?omit_members=true" if omit else ""
            start = time.perf_counter()
            code, answer = await put(
                base, remote, f"/_matrix/federation/v2/send_join/{rb.room_id}/{eid}{query}", ev
            )
            took = time.perf_counter() - start
            assert code == 200, answer
            rb.accept(eid, ev)
            print(
                f"send_join v2 members={size} omit_members={omit}: {took * 1000:.0f}ms, "
                f"state={len(answer['state'])} auth_chain={len(answer['auth_chain'])} "
                f"(room built and stored in {built:.1f}s); peak RSS {rss_mib():.0f} MiB"
            )


async def main(args: argparse.Namespace) -> None:
    db_dir = args.db or tempfile.mkdtemp(prefix="fedlib-bench-")
    store = await SqliteStore.open(os.path.join(db_dir, "inbound.db"))
    us = Remote(US)
    remotes = [Remote(f"r{i}.test") for i in range(args.servers)]
    keyring = FakeKeyring(us, *remotes)
    config = ServerConfig(server_name=US, signing_key=us.key, rate_per_second=1e6, rate_burst=10**6)
    site = build_site(build_resource(config, keyring, store, NullHooks()))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        await load(args, base, store, us, remotes)
        await joins(args, base, store, us, remotes[0])
    finally:
        await port.stopListening()
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--rooms", type=int, default=2)
    parser.add_argument("--txns", type=int, default=20)
    parser.add_argument("--join-sizes", default="1000,10000")
    parser.add_argument("--db", default=None)
    task.react(lambda _r: defer.ensureDeferred(main(parser.parse_args())))
