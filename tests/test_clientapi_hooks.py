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
