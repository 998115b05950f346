"""Child process of the PostgreSQL concurrency test. Several run at once against
one schema: each persists events into the same room (on top of whatever the room's
extremities are), persists shared outliers both try to insert, claims shared
incoming transactions, and drains the same outbound queue.

Usage: python -m tests.storage_pg_child CONNINFO SCHEMA NAME BATCHES
Lines: ``NEW id,...`` events this process inserted, ``SENT id,...`` PDUs it
delivered, ``TXN id`` transactions it processed.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task

from fedlib.storage import EventStatus, PersistItem, StateRef, TxnClaimStatus
from fedlib.storage.postgres import PostgresStore

ROOM = "!conc:a.example"
DEST = "b.example"


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@defer.inlineCallbacks
def drain(store: PostgresStore, name: str, until_empty: bool) -> Generator[Any, Any, None]:
    while True:
        batch = yield store.claim_next_batch(DEST, name, max_pdus=7, lease_ms=60_000)
        if batch is None:
            return
        out("SENT " + ",".join(batch.event_ids))
        yield store.ack_batch(DEST, batch)
        if not until_empty:
            return


@defer.inlineCallbacks
def main(
    reactor: Any, conninfo: str, schema: str, name: str, batches: str
) -> Generator[Any, Any, None]:
    store = yield PostgresStore.open(conninfo, schema, reactor)
    yield store.store_room(ROOM, "10")
    for b in range(int(batches)):
        ext = sorted((yield store.get_forward_extremities(ROOM)))
        depth = (yield store.get_max_depth(ROOM)) + 1
        items = []
        prev = ext
        for i in range(5):
            eid = f"${name}_{b}_{i}"
            e = {
                "type": "m.room.message",
                "room_id": ROOM,
                "sender": f"@{name}:a.example",
                "prev_events": prev,
                "auth_events": [],
                "depth": depth + i,
                "origin_server_ts": depth + i,
                "content": {},
            }
            ref = StateRef(prev[0]) if prev else None
            items.append(PersistItem(e, eid, state_before=ref if ref else {}))
            prev = [eid]
        shared = f"$shared_{b}"
        items.append(
            PersistItem(
                {"type": "m.room.message", "room_id": ROOM, "prev_events": [], "depth": 1},
                shared,
                EventStatus.OUTLIER,
            )
        )
        so = yield store.persist_events(ROOM, items)
        out("NEW " + ",".join(sorted(so)))
        yield store.enqueue_pdus([DEST], [i.event_id for i in items[:-1]])
        claim = yield store.claim_received_transaction("origin", f"t{b}", name)
        if claim.status is TxnClaimStatus.CLAIMED:
            out(f"TXN t{b}")
            yield store.store_received_transaction("origin", f"t{b}", {"by": name})
        yield drain(store, name, until_empty=False)
    yield drain(store, name, until_empty=True)
    yield store.close()


if __name__ == "__main__":
    task.react(main, sys.argv[1:5])
