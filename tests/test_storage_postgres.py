"""The storage suite against PostgresStore (each test in a fresh schema)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from fedlib.storage import SchemaTooNewError, open_store
from fedlib.storage.migrations import migrate
from fedlib.storage.postgres import PostgresStore
from fedlib.storage.sql import Cursor
from tests.pg_util import PG_URL, drop_schema, fresh_schema, postgres_unavailable
from tests.storage_suite import FakeClock, StoreTestsMixin
from tests.test_storage_sqlite import V1_STATE_A, V1_STATE_B, write_v1_state

_SKIP = postgres_unavailable()


class PostgresStoreTests(StoreTestsMixin, unittest.TestCase):
    if _SKIP:
        skip = _SKIP

    def make_store(self, clock: FakeClock) -> defer.Deferred[Any]:
        schema = fresh_schema()
        # Cleanups run last-added first: the store closes before its schema drops.
        self.addCleanup(threads.deferToThread, drop_schema, schema)
        return PostgresStore.open(PG_URL, schema, clock=clock)


class PostgresSchemaTests(unittest.TestCase):
    if _SKIP:
        skip = _SKIP

    @defer.inlineCallbacks
    def test_open_store_url_and_newer_schema(self) -> Generator[Any, Any, None]:
        schema = fresh_schema()
        self.addCleanup(threads.deferToThread, drop_schema, schema)
        store = yield open_store(f"{PG_URL}?schema={schema}")
        yield store.store_room("!r:a", "11")
        yield store.close()
        store = yield open_store(f"{PG_URL}?schema={schema}")
        self.assertEqual((yield store.get_room_version("!r:a")), "11")
        yield store.close()

        def bump() -> None:
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f"UPDATE {schema}.schema_version SET version = 999")

        yield threads.deferToThread(bump)
        f = yield self.assertFailure(PostgresStore.open(PG_URL, schema), SchemaTooNewError)
        self.assertIn("newer fedlib", str(f))

    @defer.inlineCallbacks
    def test_migration_from_v1_keeps_state(self) -> Generator[Any, Any, None]:
        schema = fresh_schema()
        self.addCleanup(threads.deferToThread, drop_schema, schema)

        def old_database() -> None:
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
                conn.execute(f"SET search_path = {schema}")
                with conn.transaction():
                    cur = Cursor(conn.cursor(), postgres=True)
                    self.assertEqual(migrate(cur, "postgres", target=1), 1)
                    write_v1_state(cur)
                    cur.x("SELECT setval('state_groups_id_seq', 2)")

        yield threads.deferToThread(old_database)
        store = yield PostgresStore.open(PG_URL, schema)
        self.addCleanup(store.close)
        self.assertEqual((yield store.get_state_after("$a")), V1_STATE_A)
        self.assertEqual((yield store.get_state_after("$b")), V1_STATE_B)

    @defer.inlineCallbacks
    def test_concurrent_first_opens(self) -> Generator[Any, Any, None]:
        """Several stores opening one empty schema at once: one migrates, all work."""
        schema = fresh_schema()
        self.addCleanup(threads.deferToThread, drop_schema, schema)
        results = yield defer.gatherResults(
            [PostgresStore.open(PG_URL, schema) for _ in range(4)], consumeErrors=True
        )
        for store in results:
            self.addCleanup(store.close)
        yield results[0].store_room("!r:a", "10")
        self.assertEqual((yield results[3].get_room_version("!r:a")), "10")
