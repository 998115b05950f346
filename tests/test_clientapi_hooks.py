"""ClientHooks (what fedlib tells the client API), the store, the rate limiter."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from fedlib.clientapi import ClientHooks, IClientStore, Notifier, SQLiteClientStore
from fedlib.clientapi.ratelimit import RateLimiter
from fedlib.errors import MatrixError
from fedlib.hooks import IFederationHooks, NewPdu
from tests.clientapi_helpers import SERVER, ClientTestCase

ALICE = f"@alice:{SERVER}"


def member(room: str, user: str, membership: str) -> dict[str, Any]:
    return {
        "type": "m.room.member",
        "room_id": room,
        "sender": "@x:remote.example",
        "state_key": user,
        "content": {"membership": membership},
    }


class Hooks(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.store = SQLiteClientStore(":memory:")
        self.addCleanup(self.store.close)
        self.notifier = Notifier()
        self.hooks = ClientHooks(SERVER, self.store, self.notifier)
        yield self.store.create_account(ALICE, None, 0)

    def test_interfaces(self) -> None:
        self.assertTrue(IFederationHooks.providedBy(self.hooks))
        self.assertTrue(IClientStore.providedBy(self.store))

    @defer.inlineCallbacks
    def test_invites_only_for_accounts(self) -> Any:
        stripped = [{"type": "m.room.name", "state_key": "", "content": {"name": "N"}}]
        ok = yield self.hooks.on_invite(
            "10", member("!r:remote.example", ALICE, "invite"), stripped
        )
        self.assertTrue(ok)
        self.assertEqual(self.notifier.head, 1)
        got = yield self.store.get_membership("!r:remote.example", ALICE)
        self.assertEqual(got.membership, "invite")
        self.assertEqual(got.stripped_state[0]["content"], {"name": "N"})
        ghost = f"@ghost:{SERVER}"
        ok = yield self.hooks.on_invite("10", member("!r:remote.example", ghost, "invite"), [])
        self.assertFalse(ok)
        self.assertIsNone((yield self.store.get_membership("!r:remote.example", ghost)))
        self.assertEqual(self.notifier.head, 1)
        self.assertTrue((yield self.hooks.is_local_user_known(ALICE)))
        self.assertFalse((yield self.hooks.is_local_user_known(ghost)))
        self.assertEqual((yield self.hooks.query_profile(ALICE, None)), {"displayname": "alice"})
        self.assertIsNone((yield self.hooks.query_profile(ghost, None)))

    @defer.inlineCallbacks
    def test_new_pdus_stream_and_memberships(self) -> Any:
        pdus = [
            NewPdu("$a", "!r:x", "10", member("!r:x", ALICE, "join"), {}),
            NewPdu("$b", "!r:x", "10", member("!r:x", "@bob:elsewhere", "join"), {}),
            NewPdu("$c", "!r:x", "10", {"type": "m.room.message", "content": {}}, {}),
        ]
        waiter = self.notifier.wait()
        yield self.hooks.on_new_pdus("!r:x", pdus)
        self.assertEqual((yield waiter), 3)
        # Reported twice (a retry), stored once.
        yield self.hooks.on_new_pdus("!r:x", pdus[:1])
        entries = yield self.store.get_room_entries("!r:x", 0, 100, 10, newest_first=False)
        self.assertEqual([e.event_id for e in entries], ["$a", "$b", "$c"])
        rows = yield self.store.get_memberships(ALICE)
        self.assertEqual([(m.room_id, m.membership, m.pos) for m in rows], [("!r:x", "join", 1)])
        self.assertEqual((yield self.store.get_memberships("@bob:elsewhere")), [])

    def test_cancelled_waiter_is_forgotten(self) -> None:
        d = self.notifier.wait()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.notifier.advance(5)
        self.assertEqual(self.notifier.head, 5)


class Limiter(unittest.TestCase):
    def test_bucket(self) -> None:
        clock = task.Clock()
        limiter = RateLimiter(clock, rate=1.0, burst=2)
        limiter.check("a")
        limiter.record("a")
        limiter.record("a")
        with self.assertRaises(MatrixError) as e:
            limiter.check("a")
        self.assertEqual((e.exception.code, e.exception.errcode), (429, "M_LIMIT_EXCEEDED"))
        limiter.check("b")
        clock.advance(1.0)
        limiter.check("a")


class BodyLimit(ClientTestCase):
    @defer.inlineCallbacks
    def test_large_body_refused(self) -> Any:
        _, token = yield self.register("alice")
        room = (yield self.ok("POST", "createRoom", {}, token=token))["room_id"]
        before = yield self.room_snapshot(room)
        big = b'{"body": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        code, _ = yield self.call(
            "PUT", f"rooms/{room}/send/m.room.message/1", raw=big, token=token
        )
        self.assertEqual(code, 413)
        self.assertEqual((yield self.room_snapshot(room)), before)


#: The client store's tables as fedlib wrote them before the schema had a version.
_V0_SCHEMA = """
CREATE TABLE accounts (user_id TEXT PRIMARY KEY, password_hash TEXT, created_ts INTEGER NOT NULL);
CREATE TABLE sessions (token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, device_id TEXT NOT NULL);
CREATE TABLE txns (
    token_hash TEXT NOT NULL, txn_id TEXT NOT NULL, event_id TEXT NOT NULL,
    PRIMARY KEY (token_hash, txn_id));
INSERT INTO accounts VALUES ('@old:hs', NULL, 5);
INSERT INTO txns VALUES ('tok', 't1', '$old');
"""


class Schema(unittest.TestCase):
    def path(self) -> str:
        import os
        import tempfile

        d = tempfile.mkdtemp(prefix="fedlib-clientstore-")
        return os.path.join(d, "clientapi.db")

    def version(self, path: str) -> int:
        import sqlite3

        conn = sqlite3.connect(path)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()

    @defer.inlineCallbacks
    def test_txns_scoped(self) -> Any:
        store = SQLiteClientStore(":memory:")
        self.addCleanup(store.close)
        yield store.store_txn("tok", "t", "$a", "send/!a:hs/m.room.message")
        yield store.store_txn("tok", "t", "$b", "send/!b:hs/m.room.message")
        self.assertEqual((yield store.get_txn("tok", "t", "send/!a:hs/m.room.message")), "$a")
        self.assertEqual((yield store.get_txn("tok", "t", "send/!b:hs/m.room.message")), "$b")
        self.assertIsNone((yield store.get_txn("tok", "t", "send/!a:hs/other")))
        yield store.delete_sessions(["tok"])
        self.assertIsNone((yield store.get_txn("tok", "t", "send/!a:hs/m.room.message")))

    @defer.inlineCallbacks
    def test_unversioned_file_migrated(self) -> Any:
        import sqlite3

        from fedlib.clientapi.store import SCHEMA_VERSION

        path = self.path()
        conn = sqlite3.connect(path)
        conn.executescript(_V0_SCHEMA)
        conn.close()
        store = SQLiteClientStore(path)
        self.addCleanup(store.close)
        self.assertEqual((yield store.get_account("@old:hs")).created_ts, 5)
        # The old row kept its event but not an endpoint: no send finds it.
        self.assertEqual((yield store.get_txn("tok", "t1", "")), "$old")
        self.assertIsNone((yield store.get_txn("tok", "t1", "send/!r:hs/m.room.message")))
        yield store.store_txn("tok", "t1", "$new", "send/!r:hs/m.room.message")
        self.assertEqual((yield store.get_txn("tok", "t1", "send/!r:hs/m.room.message")), "$new")
        self.assertEqual(self.version(path), SCHEMA_VERSION)

    @defer.inlineCallbacks
    def test_reopen_and_newer_file_refused(self) -> Any:
        import sqlite3

        from fedlib.clientapi.store import SCHEMA_VERSION, SchemaError

        path = self.path()
        store = SQLiteClientStore(path)
        yield store.store_txn("tok", "t", "$a", "s")
        yield store.close()
        store = SQLiteClientStore(path)
        self.assertEqual((yield store.get_txn("tok", "t", "s")), "$a")
        yield store.close()
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        self.assertRaises(SchemaError, SQLiteClientStore, path)
