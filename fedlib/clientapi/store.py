"""What the client-facing API keeps for itself: accounts, access tokens,
transaction IDs, filters, room aliases, and its own stream of room events.

The federation store (:class:`fedlib.storage.interface.IFederationStore`) knows
rooms and events but nothing about users or sessions; those live behind
:class:`IClientStore`, a separate interface so that an embedder can keep them in
its own user database. :class:`SQLiteClientStore` is the implementation
``twistd fedlib`` uses: a small SQLite file of its own (``DIR/clientapi.db``),
separate from the federation database so that it works whatever backend the
federation store uses (SQLite or PostgreSQL).

The event stream: every event that reaches the client API through the
federation hooks gets a position here, in arrival order. ``/sync`` tokens and
``/messages`` tokens are positions in this stream. Memberships of local users
are kept beside it (the latest position at which each changed), so that a sync
finds a user's rooms without reading room state.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

__all__ = [
    "Account",
    "IClientStore",
    "Membership",
    "SQLiteClientStore",
    "Session",
    "StreamEntry",
]

T = TypeVar("T")


@attrs.frozen(slots=True)
class Account:
    user_id: str
    #: ``None`` for accounts that cannot log in with a password.
    password_hash: str | None
    created_ts: int


@attrs.frozen(slots=True)
class Session:
    """A logged-in device: what an access token stands for."""

    user_id: str
    device_id: str
    #: SHA-256 of the token (hex); the token itself is never stored.
    token_hash: str


@attrs.frozen(slots=True)
class StreamEntry:
    pos: int
    room_id: str
    event_id: str


@attrs.frozen(slots=True)
class Membership:
    """A local user's latest membership of a room, as the client API last saw it.

    ``event`` and ``stripped_state`` are kept for invites and knocks into rooms
    this server is not in, where the room's state is not in the federation store.
    """

    room_id: str
    user_id: str
    membership: str
    pos: int
    event: Mapping[str, Any] | None
    stripped_state: tuple[Mapping[str, Any], ...]


class IClientStore(Interface):
    """Storage of the client-facing API. Every method returns a Deferred."""

    def close() -> Any:
        """Deferred[None]."""

    # -- accounts and sessions -------------------------------------------------

    def create_account(user_id: str, password_hash: str | None, created_ts: int) -> Any:
        """Deferred[bool]: ``False`` when the user ID is taken (nothing changed)."""

    def get_account(user_id: str) -> Any:
        """Deferred[Account | None]."""

    def set_password_hash(user_id: str, password_hash: str) -> Any:
        """Deferred[bool]: ``False`` for an unknown user."""

    def add_session(session: Session) -> Any:
        """Deferred[None]."""

    def get_session(token_hash: str) -> Any:
        """Deferred[Session | None]."""

    def delete_sessions(token_hashes: Iterable[str]) -> Any:
        """Deferred[None]; also forgets their transaction IDs."""

    def list_sessions(user_id: str) -> Any:
        """Deferred[list[Session]]."""

    # -- idempotent sends and filters -------------------------------------------

    def get_txn(token_hash: str, txn_id: str, scope: str = "") -> Any:
        """Deferred[str | None]: the event ID an earlier send with this ID gave.

        A transaction ID is scoped to the access token and to the endpoint it was
        used on: ``scope`` names that endpoint (the client API passes
        ``send/{roomId}/{eventType}``), so the same ID on another path is another
        request."""

    def store_txn(token_hash: str, txn_id: str, event_id: str, scope: str = "") -> Any:
        """Deferred[None]."""

    def add_filter(user_id: str, filter_json: Mapping[str, Any]) -> Any:
        """Deferred[str]: the new filter's ID."""

    def get_filter(user_id: str, filter_id: str) -> Any:
        """Deferred[Mapping | None]."""

    # -- the published room directory ----------------------------------------------

    def set_room_public(room_id: str, public: bool) -> Any:
        """Deferred[None]: publish the room in (or remove it from) the room directory."""

    def is_room_public(room_id: str) -> Any:
        """Deferred[bool]."""

    def get_public_room_ids() -> Any:
        """Deferred[list[str]]: the published rooms, in no particular order."""

    # -- room aliases ------------------------------------------------------------

    def create_alias(alias: str, room_id: str, creator: str) -> Any:
        """Deferred[bool]: ``False`` when the alias exists."""

    def get_alias(alias: str) -> Any:
        """Deferred[tuple[room_id, creator] | None]."""

    def delete_alias(alias: str) -> Any:
        """Deferred[None]."""

    # -- the event stream ----------------------------------------------------------

    def append_events(
        room_id: str,
        event_ids: Iterable[str],
        memberships: Iterable[tuple[str, str, str | None]] = (),
    ) -> Any:
        """Deferred[int]: give the events not seen before a position each and
        record ``(user_id, membership, event_id)`` changes of local users (at the
        position of their event, or a new one when ``event_id`` is ``None``).
        Returns the stream's head afterwards."""

    def set_stripped_membership(
        room_id: str,
        user_id: str,
        membership: str,
        event: Mapping[str, Any] | None,
        stripped_state: Iterable[Mapping[str, Any]],
    ) -> Any:
        """Deferred[int]: record an invite or knock (with the state shared with it)
        at a new position; returns the stream's head."""

    def get_head() -> Any:
        """Deferred[int]: the newest position (0 when empty)."""

    def get_memberships(user_id: str) -> Any:
        """Deferred[list[Membership]]."""

    def get_membership(room_id: str, user_id: str) -> Any:
        """Deferred[Membership | None]."""

    def get_room_entries(
        room_id: str, after: int, upto: int, limit: int, newest_first: bool = True
    ) -> Any:
        """Deferred[list[StreamEntry]]: the room's events with ``after < pos <= upto``,
        at most ``limit``, newest first unless ``newest_first`` is false."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    user_id TEXT PRIMARY KEY, password_hash TEXT, created_ts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, device_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id);
CREATE TABLE IF NOT EXISTS txns (
    token_hash TEXT NOT NULL, scope TEXT NOT NULL, txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL, PRIMARY KEY (token_hash, scope, txn_id));
CREATE TABLE IF NOT EXISTS filters (
    filter_id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,
    filter_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT PRIMARY KEY, room_id TEXT NOT NULL, creator TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stream (
    pos INTEGER PRIMARY KEY AUTOINCREMENT, room_id TEXT NOT NULL, event_id TEXT UNIQUE);
CREATE INDEX IF NOT EXISTS stream_room ON stream (room_id, pos);
CREATE TABLE IF NOT EXISTS memberships (
    room_id TEXT NOT NULL, user_id TEXT NOT NULL, membership TEXT NOT NULL,
    pos INTEGER NOT NULL, event_json TEXT, stripped_json TEXT,
    PRIMARY KEY (room_id, user_id));
CREATE INDEX IF NOT EXISTS memberships_user ON memberships (user_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS room_directory (room_id TEXT PRIMARY KEY);
"""

#: The schema's version, kept in SQLite's ``user_version``. A file without one
#: (version 0) is from before versioning and is brought up to date by
#: :data:`_MIGRATIONS` when opened; a newer file is refused.
SCHEMA_VERSION = 2

#: ``_MIGRATIONS[n]`` takes a file from version ``n`` to ``n + 1``.
_MIGRATIONS: dict[int, str] = {
    # Transaction IDs scoped to the endpoint as well as the token. Earlier rows
    # did not record their endpoint: they keep the empty scope, which no send
    # uses, so a retry across the upgrade is a new request.
    0: """
    ALTER TABLE txns RENAME TO txns_v0;
    CREATE TABLE txns (
        token_hash TEXT NOT NULL, scope TEXT NOT NULL, txn_id TEXT NOT NULL,
        event_id TEXT NOT NULL, PRIMARY KEY (token_hash, scope, txn_id));
    INSERT INTO txns SELECT token_hash, '', txn_id, event_id FROM txns_v0;
    DROP TABLE txns_v0;
    """,
    # The published room directory (empty: rooms created before were not recorded).
    1: """
    CREATE TABLE IF NOT EXISTS room_directory (room_id TEXT PRIMARY KEY);
    """,
}


class SchemaError(Exception):
    """The client store's file is from a newer fedlib."""


def _upgrade(conn: sqlite3.Connection) -> None:
    """Create the schema in a new file, or migrate an older one, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"client store schema version {version} is newer than this fedlib "
                f"supports ({SCHEMA_VERSION})"
            )
        fresh = (
            conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'accounts'"
            ).fetchone()
            is None
        )
        if not fresh:
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@implementer(IClientStore)
class SQLiteClientStore:
    """:class:`IClientStore` on one SQLite file (or ``":memory:"``).

    One connection, used from one worker thread, so that statements never block
    the reactor and writes never contend with each other.
    """

    def __init__(self, path: str, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # Before the pool starts: a file that cannot be used leaves no thread.
            _upgrade(self._conn)
        except BaseException:
            self._conn.close()
            raise
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="fedlib-clientapi-db")
        self._pool.start()
        # Like the reactor's own pool: stopped at shutdown even when close() was
        # never reached (a failed start), so its thread cannot keep the process alive.
        self._shutdown_trigger = reactor.addSystemEventTrigger(
            "during", "shutdown", self._pool.stop
        )
        self._lock = threading.Lock()
        self._closed = False

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> defer.Deferred[T]:
        if self._closed:
            return defer.fail(RuntimeError("client store is closed"))

        def work() -> T:
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._conn)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
                return result

        return threads.deferToThreadPool(self._reactor, self._pool, work)

    def close(self) -> defer.Deferred[None]:
        if self._closed:
            return defer.succeed(None)
        self._closed = True

        def shut() -> None:
            with self._lock:
                self._conn.close()

        def stop_pool(result: Any) -> Any:
            self._pool.stop()
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            return result

        d = threads.deferToThreadPool(self._reactor, self._pool, shut)
        d.addBoth(stop_pool)
        return d

    # -- outside the interface: what the admin command needs -------------------------

    def set_meta(self, key: str, value: str) -> defer.Deferred[None]:
        """Record a fact about the server (``server_name``) for offline tools."""

        def q(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

        return self._run(q)

    def get_meta(self, key: str) -> defer.Deferred[str | None]:
        def q(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return str(row[0]) if row else None

        return self._run(q)

    # -- accounts -------------------------------------------------------------------

    def create_account(
        self, user_id: str, password_hash: str | None, created_ts: int
    ) -> defer.Deferred[bool]:
        def q(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT OR IGNORE INTO accounts VALUES (?, ?, ?)",
                (user_id, password_hash, created_ts),
            )
            return cur.rowcount == 1

        return self._run(q)

    def get_account(self, user_id: str) -> defer.Deferred[Account | None]:
        def q(c: sqlite3.Connection) -> Account | None:
            row = c.execute(
                "SELECT user_id, password_hash, created_ts FROM accounts WHERE user_id = ?",
                (user_id,),
            ).fetchone()
            return Account(*row) if row else None

        return self._run(q)

    def set_password_hash(self, user_id: str, password_hash: str) -> defer.Deferred[bool]:
        def q(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE accounts SET password_hash = ? WHERE user_id = ?",
                (password_hash, user_id),
            )
            return cur.rowcount == 1

        return self._run(q)

    def add_session(self, session: Session) -> defer.Deferred[None]:
        def q(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO sessions (token_hash, user_id, device_id) VALUES (?, ?, ?)",
                (session.token_hash, session.user_id, session.device_id),
            )

        return self._run(q)

    def get_session(self, token_hash: str) -> defer.Deferred[Session | None]:
        def q(c: sqlite3.Connection) -> Session | None:
            row = c.execute(
                "SELECT user_id, device_id, token_hash FROM sessions WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            return Session(*row) if row else None

        return self._run(q)

    def delete_sessions(self, token_hashes: Iterable[str]) -> defer.Deferred[None]:
        hashes = [(h,) for h in token_hashes]

        def q(c: sqlite3.Connection) -> None:
            c.executemany("DELETE FROM sessions WHERE token_hash = ?", hashes)
            c.executemany("DELETE FROM txns WHERE token_hash = ?", hashes)

        return self._run(q)

    def list_sessions(self, user_id: str) -> defer.Deferred[list[Session]]:
        def q(c: sqlite3.Connection) -> list[Session]:
            rows = c.execute(
                "SELECT user_id, device_id, token_hash FROM sessions WHERE user_id = ?",
                (user_id,),
            ).fetchall()
            return [Session(*r) for r in rows]

        return self._run(q)

    # -- txns and filters -------------------------------------------------------------

    def get_txn(self, token_hash: str, txn_id: str, scope: str = "") -> defer.Deferred[str | None]:
        def q(c: sqlite3.Connection) -> str | None:
            row = c.execute(
                "SELECT event_id FROM txns WHERE token_hash = ? AND scope = ? AND txn_id = ?",
                (token_hash, scope, txn_id),
            ).fetchone()
            return str(row[0]) if row else None

        return self._run(q)

    def store_txn(
        self, token_hash: str, txn_id: str, event_id: str, scope: str = ""
    ) -> defer.Deferred[None]:
        def q(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT OR IGNORE INTO txns (token_hash, scope, txn_id, event_id) "
                "VALUES (?, ?, ?, ?)",
                (token_hash, scope, txn_id, event_id),
            )

        return self._run(q)

    def add_filter(self, user_id: str, filter_json: Mapping[str, Any]) -> defer.Deferred[str]:
        text = json.dumps(filter_json)

        def q(c: sqlite3.Connection) -> str:
            cur = c.execute(
                "INSERT INTO filters (user_id, filter_json) VALUES (?, ?)", (user_id, text)
            )
            return str(cur.lastrowid)

        return self._run(q)

    def get_filter(self, user_id: str, filter_id: str) -> defer.Deferred[Mapping[str, Any] | None]:
        def q(c: sqlite3.Connection) -> Mapping[str, Any] | None:
            if not filter_id.isdigit():
                return None
            row = c.execute(
                "SELECT filter_json FROM filters WHERE filter_id = ? AND user_id = ?",
                (int(filter_id), user_id),
            ).fetchone()
            return json.loads(row[0]) if row else None  # type: ignore[no-any-return]

        return self._run(q)

    # -- aliases ---------------------------------------------------------------------

    def create_alias(self, alias: str, room_id: str, creator: str) -> defer.Deferred[bool]:
        def q(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT OR IGNORE INTO aliases VALUES (?, ?, ?)", (alias, room_id, creator)
            )
            return cur.rowcount == 1

        return self._run(q)

    def get_alias(self, alias: str) -> defer.Deferred[tuple[str, str] | None]:
        def q(c: sqlite3.Connection) -> tuple[str, str] | None:
            row = c.execute(
                "SELECT room_id, creator FROM aliases WHERE alias = ?", (alias,)
            ).fetchone()
            return (str(row[0]), str(row[1])) if row else None

        return self._run(q)

    def delete_alias(self, alias: str) -> defer.Deferred[None]:
        def q(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM aliases WHERE alias = ?", (alias,))

        return self._run(q)

    # -- room directory ----------------------------------------------------------------

    def set_room_public(self, room_id: str, public: bool) -> defer.Deferred[None]:
        def q(c: sqlite3.Connection) -> None:
            if public:
                c.execute("INSERT OR IGNORE INTO room_directory VALUES (?)", (room_id,))
            else:
                c.execute("DELETE FROM room_directory WHERE room_id = ?", (room_id,))

        return self._run(q)

    def is_room_public(self, room_id: str) -> defer.Deferred[bool]:
        def q(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT 1 FROM room_directory WHERE room_id = ?", (room_id,))
            return row.fetchone() is not None

        return self._run(q)

    def get_public_room_ids(self) -> defer.Deferred[list[str]]:
        def q(c: sqlite3.Connection) -> list[str]:
            rows = c.execute("SELECT room_id FROM room_directory ORDER BY room_id").fetchall()
            return [str(r[0]) for r in rows]

        return self._run(q)

    # -- stream -------------------------------------------------------------------------

    @staticmethod
    def _head(c: sqlite3.Connection) -> int:
        row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'stream'").fetchone()
        return int(row[0]) if row else 0

    def append_events(
        self,
        room_id: str,
        event_ids: Iterable[str],
        memberships: Iterable[tuple[str, str, str | None]] = (),
    ) -> defer.Deferred[int]:
        ids = list(event_ids)
        changes = list(memberships)

        def q(c: sqlite3.Connection) -> int:
            for eid in ids:
                # Checked first: an ignored INSERT would still advance AUTOINCREMENT.
                if c.execute("SELECT 1 FROM stream WHERE event_id = ?", (eid,)).fetchone():
                    continue
                c.execute("INSERT INTO stream (room_id, event_id) VALUES (?, ?)", (room_id, eid))
            for user_id, membership, change_id in changes:
                row = None
                if change_id is not None:
                    row = c.execute(
                        "SELECT pos FROM stream WHERE event_id = ?", (change_id,)
                    ).fetchone()
                if row is None:
                    cur = c.execute(
                        "INSERT INTO stream (room_id, event_id) VALUES (?, ?)",
                        (room_id, change_id),
                    )
                    pos = int(cur.lastrowid or 0)
                else:
                    pos = int(row[0])
                old = c.execute(
                    "SELECT pos FROM memberships WHERE room_id = ? AND user_id = ?",
                    (room_id, user_id),
                ).fetchone()
                if old is not None and int(old[0]) > pos:
                    continue  # A later change is already recorded.
                c.execute(
                    "INSERT OR REPLACE INTO memberships VALUES (?, ?, ?, ?, NULL, NULL)",
                    (room_id, user_id, membership, pos),
                )
            return self._head(c)

        return self._run(q)

    def set_stripped_membership(
        self,
        room_id: str,
        user_id: str,
        membership: str,
        event: Mapping[str, Any] | None,
        stripped_state: Iterable[Mapping[str, Any]],
    ) -> defer.Deferred[int]:
        event_text = json.dumps(event) if event is not None else None
        state_text = json.dumps(list(stripped_state))

        def q(c: sqlite3.Connection) -> int:
            cur = c.execute("INSERT INTO stream (room_id, event_id) VALUES (?, NULL)", (room_id,))
            c.execute(
                "INSERT OR REPLACE INTO memberships VALUES (?, ?, ?, ?, ?, ?)",
                (room_id, user_id, membership, cur.lastrowid, event_text, state_text),
            )
            return self._head(c)

        return self._run(q)

    def get_head(self) -> defer.Deferred[int]:
        return self._run(self._head)

    @staticmethod
    def _membership(row: Any) -> Membership:
        return Membership(
            room_id=row[0],
            user_id=row[1],
            membership=row[2],
            pos=int(row[3]),
            event=json.loads(row[4]) if row[4] else None,
            stripped_state=tuple(json.loads(row[5])) if row[5] else (),
        )

    def get_memberships(self, user_id: str) -> defer.Deferred[list[Membership]]:
        def q(c: sqlite3.Connection) -> list[Membership]:
            rows = c.execute(
                "SELECT * FROM memberships WHERE user_id = ? ORDER BY pos", (user_id,)
            ).fetchall()
            return [self._membership(r) for r in rows]

        return self._run(q)

    def get_membership(self, room_id: str, user_id: str) -> defer.Deferred[Membership | None]:
        def q(c: sqlite3.Connection) -> Membership | None:
            row = c.execute(
                "SELECT * FROM memberships WHERE room_id = ? AND user_id = ?", (room_id, user_id)
            ).fetchone()
            return self._membership(row) if row else None

        return self._run(q)

    def get_room_entries(
        self, room_id: str, after: int, upto: int, limit: int, newest_first: bool = True
    ) -> defer.Deferred[list[StreamEntry]]:
        order = "DESC" if newest_first else "ASC"

        def q(c: sqlite3.Connection) -> list[StreamEntry]:
            rows = c.execute(
                "SELECT pos, room_id, event_id FROM stream WHERE room_id = ? AND pos > ? "
                f"AND pos <= ? AND event_id IS NOT NULL ORDER BY pos {order} LIMIT ?",
                (room_id, after, upto, limit),
            ).fetchall()
            return [StreamEntry(int(r[0]), r[1], r[2]) for r in rows]

        return self._run(q)
