"""The storage suite against SqliteStore, plus SQLite-specific behaviour."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from fedlib.storage import SchemaTooNewError
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
        self.assertEqual(conn.execute("SELECT version FROM schema_version").fetchall(), [(1,)])
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
