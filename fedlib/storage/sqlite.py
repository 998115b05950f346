"""The embedded default store: SQLite through the standard library's sqlite3.

One dedicated writer thread owns the only writing connection (SQLite allows one
writer at a time anyway, and a single writer makes ``BEGIN IMMEDIATE`` never wait);
a small pool of reader threads each own a read-only connection, which WAL lets read
a consistent snapshot while the writer works. Twisted's ``adbapi`` would hand any
connection to any query, which gains nothing here and loses the writer ordering.

Durability: WAL with ``synchronous=FULL`` fsyncs the log at every commit, and a
Deferred fires only after the commit returned, so an acknowledged write survives
``kill -9`` (and power loss, as far as the disk honours fsync).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from fedlib.storage import _common as c
from fedlib.storage.migrations import migrate
from fedlib.storage.sql import Cursor, SqlStore

T = TypeVar("T")


class SqliteStore(SqlStore):
    """Open with :meth:`open` (which also runs migrations)."""

    def __init__(
        self,
        path: str,
        reactor: Any = None,
        readers: int = 2,
        clock: Callable[[], int] = c.now_ms,
    ) -> None:
        super().__init__(clock)
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor: Any = reactor
        self._path = path
        # An in-memory database is private to one connection: no reader pool then.
        self._shared = path != ":memory:"
        self._writer_pool = ThreadPool(1, 1, name=f"fedlib-sqlite-writer:{path}")
        self._reader_pool = (
            ThreadPool(1, readers, name=f"fedlib-sqlite-reader:{path}")
            if self._shared and readers > 0
            else None
        )
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._writer_conn: sqlite3.Connection | None = None
        self._closed = False
        self._writer_pool.start()
        if self._reader_pool is not None:
            self._reader_pool.start()
        self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self._stop_pools)

    @classmethod
    def open(cls, path: str, reactor: Any = None, **kwargs: Any) -> defer.Deferred[SqliteStore]:
        """Deferred[SqliteStore] with the schema migrated (or a failure such as
        :class:`SchemaTooNewError`, after which the store is closed)."""
        store = cls(path, reactor, **kwargs)
        d = store._run(lambda cur: migrate(cur, "sqlite"))

        def failed(f: Any) -> Any:
            d2 = store.close()
            d2.addBoth(lambda _: f)
            return d2

        return d.addCallbacks(lambda _: store, failed)

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=60, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _conn(self, write: bool) -> sqlite3.Connection:
        if write or self._reader_pool is None:
            if self._writer_conn is None:
                self._writer_conn = self._connect(False)
            return self._writer_conn
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect(True)
        return conn

    def _in_txn(self, write: bool, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._conn(write)
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        cur = Cursor(conn.cursor(), postgres=False)
        try:
            result = fn(cur, *args)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for cb in cur.after_commit:
            cb()
        return result

    def _run(self, fn: Callable[..., T], *args: Any, write: bool = True) -> defer.Deferred[T]:
        if self._closed:
            return defer.fail(RuntimeError("store is closed"))
        use_writer = write or self._reader_pool is None
        pool = self._writer_pool if use_writer else self._reader_pool
        assert pool is not None
        return threads.deferToThreadPool(self._reactor, pool, self._in_txn, use_writer, fn, args)

    def _next_streams(self, cur: Cursor, n: int) -> list[int]:
        # Only the writer thread allocates, so MAX + 1 cannot race.
        top = int(cur.q("SELECT COALESCE(MAX(stream_ordering), 0) FROM events")[0][0])
        return list(range(top + 1, top + 1 + n))

    def _stop_pools(self) -> None:
        self._writer_pool.stop()
        if self._reader_pool is not None:
            self._reader_pool.stop()
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    def close(self) -> defer.Deferred[None]:
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        self._reactor.removeSystemEventTrigger(self._trigger)
        # Joining the pools waits for in-flight queries: do it off the reactor thread.
        return threads.deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._stop_pools
        )
