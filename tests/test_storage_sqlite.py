"""The storage suite against SqliteStore, plus SQLite-specific behaviour."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from fedlib.storage import SchemaTooNewError
from fedlib.storage.migrations import latest_version, migrate
from fedlib.storage.sql import Cursor
from fedlib.storage.sqlite import SqliteStore
from tests.storage_suite import FakeClock, StoreTestsMixin


class SqliteStoreTests(StoreTestsMixin, unittest.TestCase):
    def make_store(self, clock: FakeClock) -> defer.Deferred[Any]:
        path = os.path.abspath(self.mktemp()) + ".db"
        return SqliteStore.open(path, clock=clock)


class SqliteSchemaTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_reopen_keeps_data_and_version(self) -> Generator[Any, Any, None]:
        path = os.path.abspath(self.mktemp()) + ".db"
        store = yield SqliteStore.open(path)
        yield store.store_room("!r:a", "10")
        yield store.close()
        store = yield SqliteStore.open(path)
        self.assertEqual((yield store.get_room_version("!r:a")), "10")
        yield store.close()
        conn = sqlite3.connect(path)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(
            conn.execute("SELECT version FROM schema_version").fetchall(),
            [(latest_version("sqlite"),)],
        )
        conn.close()

    @defer.inlineCallbacks
    def test_newer_schema_refused(self) -> Generator[Any, Any, None]:
        path = os.path.abspath(self.mktemp()) + ".db"
        store = yield SqliteStore.open(path)
        yield store.close()
        conn = sqlite3.connect(path)
        conn.execute("UPDATE schema_version SET version = 999")
        conn.commit()
        conn.close()
        f = yield self.assertFailure(SqliteStore.open(path), SchemaTooNewError)
        self.assertIn("newer fedlib", str(f))

    @defer.inlineCallbacks
    def test_migration_from_v1_keeps_state(self) -> Generator[Any, Any, None]:
        """A database written with schema 1 (one row per state entry) opens under
        the current schema with the same state."""
        path = os.path.abspath(self.mktemp()) + ".db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN")
        cur = Cursor(conn.cursor(), postgres=False)
        self.assertEqual(migrate(cur, "sqlite", target=1), 1)
        write_v1_state(cur)
        conn.execute("COMMIT")
        conn.close()
        store = yield SqliteStore.open(path)
        self.addCleanup(store.close)
        self.assertEqual((yield store.get_state_after("$a")), V1_STATE_A)
        self.assertEqual((yield store.get_state_after("$b")), V1_STATE_B)


V1_STATE_A = {("m.room.create", ""): "$c", ("m.room.name", ""): "$a"}
V1_STATE_B = {("m.room.create", ""): "$c", ("m.room.topic", ""): "$b"}


def write_v1_state(cur: Cursor) -> None:
    """Rows as schema version 1 stored them: group 1 a snapshot, group 2 a delta
    that deletes the name and adds a topic."""
    cur.x("INSERT INTO rooms (room_id, room_version) VALUES ('!r:a', '10')")
    cur.x(
        "INSERT INTO state_groups (id, room_id, parent, depth, root_size) VALUES (1, '!r:a', NULL, 0, 2)"
    )
    cur.x(
        "INSERT INTO state_groups (id, room_id, parent, depth, root_size) VALUES (2, '!r:a', 1, 1, 2)"
    )
    cur.many(
        "INSERT INTO state_group_entries (group_id, type, state_key, event_id) VALUES (?, ?, ?, ?)",
        [
            (1, "m.room.create", "", "$c"),
            (1, "m.room.name", "", "$a"),
            (2, "m.room.name", "", None),
            (2, "m.room.topic", "", "$b"),
        ],
    )
    for so, (eid, group) in enumerate([("$a", 1), ("$b", 2)], start=1):
        cur.x(
            "INSERT INTO events (event_id, room_id, stream_ordering, depth, origin_server_ts,"
            " status, state_before_group, state_after_group, json)"
            " VALUES (?, '!r:a', ?, ?, 0, 'accepted', ?, ?, '{}')",
            (eid, so, so, group, group),
        )


class SqliteStateStorageTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_state_is_stored_as_deltas(self) -> Generator[Any, Any, None]:
        """600 joins and 600 messages: a copy of the state per event would hold
        ~360,000 entries; deltas with occasional snapshots hold a few thousand, and
        messages create no groups at all."""
        from fedlib.storage import PersistItem, StateRef
        from fedlib.storage.sql import _decode_entries
        from tests.storage_suite import ROOM, ev, member

        path = os.path.abspath(self.mktemp()) + ".db"
        store = yield SqliteStore.open(path)
        self.addCleanup(store.close)
        yield store.store_room(ROOM, "10")
        items = [
            PersistItem(
                ev("$create", [], 1, typ="m.room.create", state_key=""), "$create", state_before={}
            )
        ]
        prev = "$create"
        for i in range(1200):
            eid = f"$e{i}"
            e = (
                member(eid, f"@u{i}:s.example", [prev], i + 2)
                if i < 600
                else ev(eid, [prev], i + 2)
            )
            items.append(PersistItem(e, eid, state_before=StateRef(prev)))
            prev = eid
        for i in range(0, len(items), 50):
            yield store.persist_events(ROOM, items[i : i + 50])
        self.assertEqual(len((yield store.get_state_after(prev))), 601)
        conn = sqlite3.connect(path)
        blobs = [r[0] for r in conn.execute("SELECT entries FROM state_groups")]
        conn.close()
        # One per state event plus the empty state before the create event; none
        # for messages.
        self.assertEqual(len(blobs), 602)
        total = sum(len(_decode_entries(b)) for b in blobs)
        self.assertLess(total, 8000)


class OpenStoreTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_urls(self) -> Generator[Any, Any, None]:
        from fedlib.storage import MemoryStore, open_store

        mem = yield open_store("memory:")
        self.assertIsInstance(mem, MemoryStore)
        path = os.path.abspath(self.mktemp()) + ".db"
        store = yield open_store(f"sqlite://{path}")
        self.assertIsInstance(store, SqliteStore)
        yield store.store_room("!r:a", "10")
        yield store.close()
        self.assertTrue(os.path.exists(path))
        yield self.assertFailure(open_store("mysql://x"), ValueError)
        yield self.assertFailure(open_store("sqlite:"), ValueError)
