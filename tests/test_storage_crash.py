"""Crash safety of SqliteStore: SIGKILL a writer at random moments, then check that
every acknowledged write survived and the database is consistent."""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from fedlib.storage.sqlite import SqliteStore
from tests.storage_crash_child import DEST, ROOM

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_and_kill(path: str, seed: str, rng: random.Random) -> list[str]:
    """Start the child, let it acknowledge at least one batch, SIGKILL it after a
    random extra moment and return the lines it had fully written."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.storage_crash_child", path, seed],
        cwd=_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    buf = b""
    deadline: float | None = None
    start = time.monotonic()
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if now - start > 60:
            proc.kill()
            raise AssertionError("child made no progress: " + proc.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
        ready, _, _ = select.select([proc.stdout], [], [], 0.05)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError("child exited: " + proc.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
            buf += chunk
            if deadline is None and b"\n" in buf:
                deadline = time.monotonic() + rng.uniform(0.0, 0.7)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    buf += proc.stdout.read()
    proc.stdout.close()
    proc.stderr.close()  # type: ignore[union-attr]
    # A line cut by the kill has no newline: it was not acknowledged.
    return buf.decode().split("\n")[:-1]


class CrashTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_sigkill_loses_no_acknowledged_write(self) -> Generator[Any, Any, None]:
        path = os.path.abspath(self.mktemp()) + ".db"
        rng = random.Random()
        acked: list[str] = []
        sent_reports = 0
        for round_no in range(5):
            lines = run_and_kill(path, f"r{round_no}", rng)
            for line in lines:
                if line.startswith("ACK "):
                    acked.extend(line[4:].split(","))
                elif line.startswith("SENT "):
                    sent_reports += 1
        self.assertTrue(len(acked) > 5)

        conn = sqlite3.connect(path)
        self.assertEqual(conn.execute("PRAGMA integrity_check").fetchone()[0], "ok")
        self.assertEqual(conn.execute("PRAGMA foreign_key_check").fetchall(), [])
        conn.close()

        store = yield SqliteStore.open(path)
        try:
            yield self._check(store, acked)
        finally:
            yield store.close()

    @defer.inlineCallbacks
    def _check(self, store: SqliteStore, acked: list[str]) -> Generator[Any, Any, None]:
        seen = yield store.have_seen(acked)
        self.assertEqual(set(acked) - seen, set(), "acknowledged events lost")

        # Rebuild the chain from the stored events and compare state everywhere.
        all_ids: list[str] = []
        tip = next(iter((yield store.get_forward_extremities(ROOM))))
        chain = yield store.backfill(ROOM, [tip], 10**6)
        self.assertEqual((yield store.get_forward_extremities(ROOM)), {tip})
        chain.reverse()
        self.assertEqual(chain[0].event["type"], "m.room.create")
        self.assertEqual([e.depth for e in chain], list(range(1, len(chain) + 1)))
        self.assertTrue(set(acked) <= {e.event_id for e in chain})
        state: dict[tuple[str, str], str] = {}
        expected_after: dict[str, dict[tuple[str, str], str]] = {}
        for e in chain:
            all_ids.append(e.event_id)
            if "state_key" in e.event:
                state = dict(state)
                state[(e.event["type"], e.event["state_key"])] = e.event_id
            expected_after[e.event_id] = state
        got = yield store.get_state_after_events(all_ids)
        for eid in all_ids:
            self.assertEqual(got[eid], expected_after[eid], eid)
        self.assertEqual((yield store.get_current_state(ROOM)), expected_after[tip])
        joined = {
            sk
            for (t, sk), eid in expected_after[tip].items()
            if t == "m.room.member"
            and next(e for e in chain if e.event_id == eid).event["content"]["membership"] == "join"
        }
        self.assertEqual((yield store.get_joined_members(ROOM)), joined)

        # Queue: every acknowledged event is still queued or was delivered (an ack
        # records the delivered position in the same transaction).
        last = (yield store.get_last_successful_stream_ordering(DEST)) or 0
        queued: set[str] = set()
        while True:
            batch = yield store.claim_next_batch(DEST, "checker", max_pdus=1000)
            if batch is None:
                break
            queued.update(batch.event_ids)
            yield store.ack_batch(DEST, batch)
        events = yield store.get_events(acked)
        for eid in acked:
            self.assertTrue(eid in queued or events[eid].stream_ordering <= last, eid)
        self.assertTrue(all(events[e].stream_ordering > last for e in queued))
