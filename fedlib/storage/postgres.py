"""PostgreSQL store for deployments with several fedlib processes on one database.

psycopg 3's synchronous ``ConnectionPool`` used from a Twisted thread pool of the
same size: every store call is one transaction on one pooled connection in a worker
thread, so the reactor never blocks and no asyncio bridge is needed.

Multi-process safety comes from the database, not from process-local locks:
persisting locks the room row (``SELECT ... FOR UPDATE``) so writers to one room
take turns and extremities/current state stay consistent; stream orderings come
from a sequence; received transactions are claimed with ``INSERT ... ON CONFLICT``
plus a row lock; a destination's sending lease is taken under ``FOR UPDATE SKIP
LOCKED``; schema migrations run under a transaction-level advisory lock.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from fedlib.storage import _common as c
from fedlib.storage.migrations import migrate
from fedlib.storage.sql import Cursor, SqlStore

T = TypeVar("T")

#: Arbitrary constant naming fedlib's migration advisory lock.
_MIGRATION_LOCK = 0x0FED11B
_RETRIES = 5
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresStore(SqlStore):
    """Open with :meth:`open`. ``schema`` puts fedlib's tables in that PostgreSQL
    schema (created if missing), e.g. to share a database with an embedder."""

    def __init__(
        self,
        conninfo: str,
        schema: str | None = None,
        reactor: Any = None,
        max_connections: int = 4,
        clock: Callable[[], int] = c.now_ms,
    ) -> None:
        super().__init__(clock)
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ValueError(f"bad schema name {schema!r}")
        self._reactor: Any = reactor
        self._schema = schema
        # JIT compilation is for analytics: recursive CTEs have huge cost estimates,
        # and compiling them took 300 ms for a query that runs in 0.3 ms.
        options = "-c jit=off"
        if schema is not None:
            options += f" -c search_path={schema}"
        kwargs: dict[str, Any] = {"autocommit": True, "options": options}
        self._pool = ConnectionPool(
            conninfo, min_size=1, max_size=max_connections, kwargs=kwargs, open=False
        )
        self._conninfo = conninfo
        self._threads = ThreadPool(1, max_connections, name="fedlib-postgres")
        self._threads.start()
        self._closed = False
        self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self._shutdown)

    @classmethod
    def open(
        cls, conninfo: str, schema: str | None = None, reactor: Any = None, **kwargs: Any
    ) -> defer.Deferred[PostgresStore]:
        """Deferred[PostgresStore], connected and migrated."""
        store = cls(conninfo, schema, reactor, **kwargs)
        d = threads.deferToThreadPool(store._reactor, store._threads, store._setup)

        def failed(f: Any) -> Any:
            d2 = store.close()
            d2.addBoth(lambda _: f)
            return d2

        return d.addCallbacks(lambda _: store, failed)

    def _setup(self) -> None:
        if self._schema is not None:
            # IF NOT EXISTS is not atomic: another process may create it meanwhile.
            with (
                psycopg.connect(self._conninfo, autocommit=True) as conn,
                contextlib.suppress(psycopg.errors.UniqueViolation),
            ):
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema}")
        self._pool.open(wait=True, timeout=10)

        def txn(cur: Cursor) -> int:
            cur.q("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            return migrate(cur, "postgres")

        self._in_txn(txn, ())

    def _in_txn(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        for attempt in range(_RETRIES):
            try:
                with self._pool.connection() as conn, conn.transaction():
                    cur = Cursor(conn.cursor(), postgres=True)
                    result = fn(cur, *args)
                for cb in cur.after_commit:
                    cb()
                return result
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _run(self, fn: Callable[..., T], *args: Any, write: bool = True) -> defer.Deferred[T]:
        if self._closed:
            return defer.fail(RuntimeError("store is closed"))
        return threads.deferToThreadPool(self._reactor, self._threads, self._in_txn, fn, args)

    def _next_streams(self, cur: Cursor, n: int) -> list[int]:
        if n == 0:
            return []
        rows = cur.q("SELECT nextval('events_stream_seq') FROM generate_series(1, ?)", (n,))
        return sorted(int(r[0]) for r in rows)

    def _shutdown(self) -> None:
        self._threads.stop()
        self._pool.close()

    def close(self) -> defer.Deferred[None]:
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        self._reactor.removeSystemEventTrigger(self._trigger)
        return threads.deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._shutdown
        )
