"""Child process of the storage crash test: persists events into a SQLite store in a
loop, queues them for a destination, sends (claims and acks) some, and prints one
line per acknowledged step so the parent knows what must survive a SIGKILL.

Usage: python -m tests.storage_crash_child DB_PATH SEED
Lines: ``ACK id,id,...`` after persist + enqueue returned; ``SENT n`` after an ack.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task

from fedlib.storage import PersistItem, StateRef
from fedlib.storage.sqlite import SqliteStore

ROOM = "!crash:a.example"
DEST = "b.example"


def _event(eid: str, prev: str | None, depth: int, rng: random.Random) -> dict[str, Any]:
    e: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": ROOM,
        "sender": "@u:a.example",
        "prev_events": [prev] if prev else [],
        "auth_events": [],
        "depth": depth,
        "origin_server_ts": depth,
        "content": {"body": eid},
    }
    if prev is None:
        e.update(type="m.room.create", state_key="", content={})
    elif rng.random() < 0.3:
        e.update(
            type="m.room.member",
            state_key=f"@m{rng.randrange(200)}:s{rng.randrange(4)}.example",
            content={"membership": rng.choice(["join", "leave"])},
        )
    return e


@defer.inlineCallbacks
def main(reactor: Any, path: str, seed: str) -> Generator[Any, Any, None]:
    rng = random.Random(seed)
    store = yield SqliteStore.open(path, reactor)
    yield store.store_room(ROOM, "10")
    ext = yield store.get_forward_extremities(ROOM)
    prev = next(iter(ext)) if ext else None
    depth = yield store.get_max_depth(ROOM)
    n = 0
    while True:
        items = []
        for _ in range(rng.randrange(1, 30)):
            depth += 1
            n += 1
            eid = f"${seed}_{n}"
            items.append(
                PersistItem(
                    _event(eid, prev, depth, rng),
                    eid,
                    state_before=StateRef(prev) if prev else {},
                )
            )
            prev = eid
        yield store.persist_events(ROOM, items)
        yield store.enqueue_pdus([DEST], [i.event_id for i in items])
        sys.stdout.write("ACK " + ",".join(i.event_id for i in items) + "\n")
        sys.stdout.flush()
        if rng.random() < 0.5:
            batch = yield store.claim_next_batch(DEST, f"sender-{seed}", lease_ms=0)
            if batch is not None:
                yield store.ack_batch(DEST, batch)
                sys.stdout.write(f"SENT {len(batch.pdus)}\n")
                sys.stdout.flush()


if __name__ == "__main__":
    task.react(main, sys.argv[1:3])
