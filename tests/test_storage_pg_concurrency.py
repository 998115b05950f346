"""Several processes sharing one PostgreSQL database: nothing lost, nothing
duplicated, each queue item sent by one sender, each transaction processed once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from fedlib.storage import EventStatus
from fedlib.storage.postgres import PostgresStore
from tests.pg_util import PG_URL, drop_schema, fresh_schema, postgres_unavailable
from tests.storage_pg_child import DEST, ROOM

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP = postgres_unavailable()
BATCHES = 30


def run_children(schema: str, names: list[str]) -> dict[str, list[str]]:
    procs = {
        n: subprocess.Popen(
            [sys.executable, "-m", "tests.storage_pg_child", PG_URL, schema, n, str(BATCHES)],
            cwd=_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in names
    }
    lines = {}
    for n, p in procs.items():
        stdout, stderr = p.communicate(timeout=100)
        if p.returncode != 0:
            raise AssertionError(f"child {n} failed: {stderr[-3000:]}")
        lines[n] = stdout.splitlines()
    return lines


class ConcurrencyTests(unittest.TestCase):
    if _SKIP:
        skip = _SKIP
    timeout = 120

    @defer.inlineCallbacks
    def test_two_processes(self) -> Generator[Any, Any, None]:
        schema = fresh_schema()
        self.addCleanup(threads.deferToThread, drop_schema, schema)
        # Create the schema first so the children do not race on an empty database.
        store = yield PostgresStore.open(PG_URL, schema)
        self.addCleanup(store.close)
        lines = yield threads.deferToThread(run_children, schema, ["p1", "p2"])

        def field(kind: str) -> list[str]:
            out = []
            for ls in lines.values():
                for line in ls:
                    if line.startswith(kind + " ") and line[len(kind) + 1 :]:
                        out.extend(line[len(kind) + 1 :].split(","))
            return out

        new = field("NEW")
        self.assertEqual(len(new), len(set(new)), "an event was inserted twice")
        shared = [e for e in new if e.startswith("$shared_")]
        self.assertEqual(sorted(shared), sorted(f"$shared_{b}" for b in range(BATCHES)))
        own = {e for e in new if not e.startswith("$shared_")}
        self.assertEqual(len(own), 2 * BATCHES * 5)

        sent = field("SENT")
        self.assertEqual(len(sent), len(set(sent)), "a PDU was sent twice")
        self.assertEqual(set(sent), own, "queued PDUs lost")
        self.assertIsNone((yield store.claim_next_batch(DEST, "checker")))

        txns = field("TXN")
        self.assertEqual(sorted(txns), sorted(f"t{b}" for b in range(BATCHES)))

        # Every stored event is there once with a distinct stream ordering, and the
        # extremities are exactly the accepted events nothing points at.
        events = yield store.get_events(new)
        self.assertEqual(set(events), set(new))
        orders = [e.stream_ordering for e in events.values()]
        self.assertEqual(len(orders), len(set(orders)))
        pointed = {
            p
            for e in events.values()
            if e.status is EventStatus.ACCEPTED
            for p in e.event["prev_events"]
        }
        expect_ext = {
            e.event_id
            for e in events.values()
            if e.status is EventStatus.ACCEPTED and e.event_id not in pointed
        }
        self.assertEqual((yield store.get_forward_extremities(ROOM)), expect_ext)
