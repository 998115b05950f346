"""The storage suite against PostgresStore (each test in a fresh schema)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from fedlib.storage import SchemaTooNewError, open_store
from fedlib.storage.postgres import PostgresStore
from tests.pg_util import PG_URL, drop_schema, fresh_schema, postgres_unavailable
from tests.storage_suite import FakeClock, StoreTestsMixin

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
