"""``python -m fedlib.admin register-user`` and the twistd plugin's client options."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.python import usage
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from fedlib.admin import register_user
from fedlib.clientapi import PasswordHasher, SQLiteClientStore
from fedlib.testing import quiet_dns


class RegisterUser(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)

    @defer.inlineCallbacks
    def account(self, user_id: str) -> Any:
        store = SQLiteClientStore(str(self.dir / "clientapi.db"))
        try:
            return (yield store.get_account(user_id))
        finally:
            yield store.close()

    @defer.inlineCallbacks
    def test_register_user(self) -> Any:
        user = yield register_user(reactor, str(self.dir), "alice", "pw", "hs.example", rounds=4)
        self.assertEqual(user, "@alice:hs.example")
        account = yield self.account(user)
        self.assertTrue(PasswordHasher(4).check_sync("pw", account.password_hash))
        self.assertFalse(PasswordHasher(4).check_sync("wrong", account.password_hash))
        with self.assertRaises(KeyError):
            yield register_user(reactor, str(self.dir), "@alice:hs.example", "x", rounds=4)
        account_again = yield self.account(user)
        self.assertEqual(account_again, account)

    @defer.inlineCallbacks
    def test_refusals(self) -> Any:
        for user, password, server in [
            ("bob", "pw", None),  # No server name known yet.
            ("Bad Name", "pw", "hs.example"),
            ("@carol:hs.example", "", None),
        ]:
            with self.assertRaises(ValueError):
                yield register_user(reactor, str(self.dir), user, password, server, rounds=4)
        with self.assertRaises(ValueError):
            yield register_user(reactor, str(self.dir / "missing"), "@d:hs", "pw", rounds=4)
        self.assertIsNone((yield self.account("@carol:hs.example")))

    @defer.inlineCallbacks
    def test_recorded_server_name(self) -> Any:
        store = SQLiteClientStore(str(self.dir / "clientapi.db"))
        yield store.set_meta("server_name", "127.0.0.1:8448")
        yield store.close()
        user = yield register_user(reactor, str(self.dir), "dave", "pw", rounds=4)
        self.assertEqual(user, "@dave:127.0.0.1:8448")

    def test_command_line(self) -> None:
        def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "fedlib.admin", "register-user", *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=60,
            )

        base = ["--data-dir", str(self.dir), "--server-name", "hs.example"]
        out = run(*base, "erin", stdin="from stdin\n")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("@erin:hs.example", out.stdout)
        out = run(*base, "--password", "x", "erin")
        self.assertEqual(out.returncode, 1)
        self.assertIn("already exists", out.stderr)
        out = run(*base, "--password", "x", "NO!")
        self.assertEqual(out.returncode, 2)
        store_path = str(self.dir / "clientapi.db")
        with sqlite3.connect(store_path) as conn:
            (stored,) = conn.execute(
                "SELECT password_hash FROM accounts WHERE user_id = '@erin:hs.example'"
            ).fetchone()
        self.assertTrue(PasswordHasher().check_sync("from stdin", stored))


class PluginOptions(unittest.TestCase):
    timeout = 60

    def options(self, *extra: str) -> Any:
        from twisted.plugins.fedlib_plugin import Options

        opts = Options()
        opts.parseOptions(
            [
                "--server-name",
                "127.0.0.1:1",
                "--data-dir",
                self.mktemp(),
                "--listen",
                "tcp:0:interface=127.0.0.1",
                *extra,
            ]
        )
        return opts

    def test_parsed(self) -> None:
        opts = self.options("--client-listen", "tcp:0:interface=127.0.0.1")
        prepared = opts["fedlib"]
        self.assertEqual(prepared["client_listen"], "tcp:0:interface=127.0.0.1")
        self.assertFalse(prepared["enable_registration"])
        self.assertTrue(prepared["client_db"].endswith("clientapi.db"))
        self.assertNotIn("client_listen", self.options()["fedlib"])
        with self.assertRaises(usage.UsageError):
            self.options("--client-listen", "nonsense:1")

    @defer.inlineCallbacks
    def test_standalone_service_serves_clients(self) -> Any:
        from twisted.plugins.fedlib_plugin import StandaloneService

        quiet_dns(self)
        opts = self.options("--client-listen", "tcp:0:interface=127.0.0.1", "--enable-registration")
        svc = StandaloneService(opts["fedlib"])
        svc.startService()
        yield svc._starting
        self.addCleanup(svc.stopService)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        port = svc.client_api.ports[0].getHost().port
        url = f"http://127.0.0.1:{port}/_matrix/client/v3/register"
        body = {"username": "zed", "password": "pw", "auth": {"type": "m.login.dummy"}}
        resp = yield treq.post(url, data=json.dumps(body).encode(), pool=pool)
        answer = json.loads((yield resp.content()))
        self.assertEqual(resp.code, 200, answer)
        self.assertEqual(answer["user_id"], "@zed:127.0.0.1:1")
        # The federation side knows the user through the hooks.
        known = yield svc.federation.hooks.is_local_user_known("@zed:127.0.0.1:1")
        self.assertTrue(known)
        yield svc.stopService()
        self.assertEqual(svc.client_api.ports, [])
