"""python -m fedlib.check against scripted TLS servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import reactor, task, utils
from twisted.trial import unittest

from fedlib.check import run_checks
from fedlib.client.discovery import HttpResponse, ServerResolver
from fedlib.crypto.keys import generate_signing_key
from fedlib.crypto.signing import sign_json
from fedlib.keyring import build_server_keys_response
from tests.test_discovery import FakeDNS, FakeFetcher
from tests.transport_helpers import ScriptedServer, TestCA

DAY_MS = 24 * 3600 * 1000


def now_ms() -> int:
    return int(reactor.seconds() * 1000)  # type: ignore[attr-defined]


class CheckTests(unittest.TestCase):
    def setUp(self) -> None:
        self.ca = TestCA()
        self.addCleanup(self.ca.cleanup)
        self.server = ScriptedServer(self.ca.issue(["fed.test"], ["127.0.0.1"]))
        self.addCleanup(self.server.stop)
        self.name = f"127.0.0.1:{self.server.port_number}"
        self.key = generate_signing_key("k1")
        self.serve_keys(self.name, self.key)
        self.server.route(
            "/_matrix/federation/v1/version",
            lambda r: {"server": {"name": "scripted", "version": "9.9"}},
        )

    def serve_keys(self, name: str, key: Any, server: ScriptedServer | None = None) -> None:
        (server or self.server).route(
            "/_matrix/key/v2/server",
            lambda r: build_server_keys_response(name, key, now_ms() + DAY_MS),
        )

    async def test_all_pass(self) -> None:
        report = await run_checks(reactor, self.name, ca_bundle=self.ca.path, timeout=5)
        self.assertTrue(report.ok, report.to_text())
        self.assertEqual([c.name for c in report.checks], ["resolve", "tls", "keys", "version"])
        text = report.to_text()
        self.assertIn("[PASS] version: scripted 9.9", text)
        self.assertIn("ed25519:k1", text)
        self.assertIn("names: fed.test, 127.0.0.1", text)
        self.assertTrue(text.endswith("RESULT: PASS"))
        self.assertEqual(json.loads(json.dumps(report.to_dict()))["ok"], True)

    async def test_untrusted_certificate_fails(self) -> None:
        other = TestCA()
        self.addCleanup(other.cleanup)
        report = await run_checks(reactor, self.name, ca_bundle=other.path, timeout=5)
        self.assertFalse(report.ok)
        by_name = {c.name: c for c in report.checks}
        self.assertTrue(by_name["resolve"].ok)
        self.assertFalse(by_name["tls"].ok)
        # The certificate actually presented is shown to help the operator.
        self.assertTrue(any("fedlib test CA" in d for d in by_name["tls"].details))
        self.assertFalse(by_name["version"].ok)
        self.assertNotIn("not retrying", by_name["version"].summary)

    async def test_bad_keys_fail(self) -> None:
        forged = build_server_keys_response(self.name, self.key, now_ms() + DAY_MS)
        forged["verify_keys"] = {"ed25519:k1": {"key": "A" * 43}}
        self.server.route("/_matrix/key/v2/server", lambda r: forged)
        report = await run_checks(reactor, self.name, ca_bundle=self.ca.path, timeout=5)
        keys = next(c for c in report.checks if c.name == "keys")
        self.assertFalse(keys.ok)
        self.assertFalse(report.ok)

    async def test_expired_keys_fail(self) -> None:
        self.server.route(
            "/_matrix/key/v2/server",
            lambda r: build_server_keys_response(self.name, self.key, now_ms() - 1000),
        )
        report = await run_checks(reactor, self.name, ca_bundle=self.ca.path, timeout=5)
        keys = next(c for c in report.checks if c.name == "keys")
        self.assertFalse(keys.ok)
        self.assertIn("expired", keys.summary)

    async def test_notary(self) -> None:
        notary = ScriptedServer(self.ca.issue([], ["127.0.0.1"]))
        self.addCleanup(notary.stop)
        notary_name = f"127.0.0.1:{notary.port_number}"
        notary_key = generate_signing_key("n1")
        self.serve_keys(notary_name, notary_key, notary)
        origin_keys = build_server_keys_response(self.name, self.key, now_ms() + DAY_MS)
        notary.route(
            "/_matrix/key/v2/query",
            lambda r: {"server_keys": [sign_json(origin_keys, notary_name, notary_key)]},
        )
        report = await run_checks(
            reactor, self.name, ca_bundle=self.ca.path, notary=notary_name, timeout=5
        )
        self.assertTrue(report.ok, report.to_text())
        self.assertIn("vouches for ed25519:k1", report.to_text())
        # A notary that signs with the wrong key fails the step.
        impostor = generate_signing_key("n1")
        notary.route(
            "/_matrix/key/v2/query",
            lambda r: {"server_keys": [sign_json(origin_keys, notary_name, impostor)]},
        )
        report = await run_checks(
            reactor, self.name, ca_bundle=self.ca.path, notary=notary_name, timeout=5
        )
        self.assertFalse(next(c for c in report.checks if c.name == "notary").ok)

    async def test_well_known_delegation_shown(self) -> None:
        delegated = f"fed.test:{self.server.port_number}"
        self.serve_keys("example.test", self.key)
        fetcher = FakeFetcher(
            {
                "https://example.test/.well-known/matrix/server": HttpResponse(
                    200, {}, json.dumps({"m.server": delegated}).encode()
                )
            }
        )
        resolver = ServerResolver(FakeDNS(), fetcher, task.Clock())
        report = await run_checks(
            reactor,
            "example.test",
            ca_bundle=self.ca.path,
            host_overrides={"fed.test": "127.0.0.1"},
            resolver=resolver,
            timeout=5,
        )
        self.assertTrue(report.ok, report.to_text())
        resolve = report.checks[0]
        self.assertIn(f"Host: {delegated}", resolve.summary)
        self.assertIn("well_known_explicit_port", resolve.summary)
        self.assertTrue(any("m.server" in d for d in resolve.details))
        self.assertEqual(self.server.requests[-1]["host"], delegated)

    async def test_cli(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable,
            [
                "-m",
                "fedlib.check",
                self.name,
                "--json",
                "--ca-bundle",
                self.ca.path,
                "--timeout",
                "5",
            ],
            env=env,
        )
        self.assertEqual(code, 0, err)
        body = json.loads(out)
        self.assertTrue(body["ok"])
        self.assertEqual(len(body["checks"]), 4)

        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "fedlib.check", self.name, "--timeout", "5"],  # system CAs: untrusted
            env=env,
        )
        self.assertEqual(code, 1)
        self.assertIn(b"[FAIL] tls", out)
        self.assertIn(b"RESULT: FAIL", out)
