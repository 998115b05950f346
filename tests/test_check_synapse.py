"""The client transport, keyring and fedlib.check against a real Synapse on 127.0.0.1.

Uses the interop harness (``tests.interop.synapse``); skipped only when Synapse
cannot be installed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from fedlib.check import run_checks
from fedlib.client.transport import FederationClient
from fedlib.crypto.keys import generate_signing_key, key_id
from fedlib.keyring import Keyring, Notary, build_server_keys_response
from fedlib.testing import quiet_dns
from tests.transport_helpers import ScriptedServer, TestCA


class SynapseTransportTests(unittest.TestCase):
    timeout = 180

    def setUp(self) -> None:
        from tests.interop.synapse import shared_synapse

        quiet_dns(self)
        self.synapse = shared_synapse()
        self.ca_path = str(self.synapse.dir / "tls.crt")  # Synapse's self-signed certificate

    def client(self) -> FederationClient:
        client = FederationClient(
            "fedlib-check.invalid", generate_signing_key("c"), reactor, ca_bundle=self.ca_path
        )
        self.addCleanup(client.close_connections)
        return client

    async def test_check_passes(self) -> None:
        report = await run_checks(reactor, self.synapse.server_name, ca_bundle=self.ca_path)
        self.assertTrue(report.ok, report.to_text())
        self.assertIn("Synapse", report.checks[-1].summary)

    async def test_keys_directly(self) -> None:
        client = self.client()
        raw = await client.get_server_keys(self.synapse.server_name)
        kid = next(iter(raw["verify_keys"]))
        keyring = Keyring(client, reactor)
        keys = await keyring.get_verify_keys(
            self.synapse.server_name,
            [kid],
            int(reactor.seconds() * 1000),  # type: ignore[attr-defined]
        )
        self.assertEqual(list(keys), [kid])
        # The key object is signed by Synapse: the keyring accepts it as such.
        await keyring.verify_json_for_server(self.synapse.server_name, raw)

    async def test_synapse_as_notary(self) -> None:
        ca = TestCA()
        self.addCleanup(ca.cleanup)
        origin = ScriptedServer(ca.issue([], ["127.0.0.1"]))
        self.addCleanup(origin.stop)
        origin_name = f"127.0.0.1:{origin.port_number}"
        origin_key = generate_signing_key("fl1")
        origin.route(
            "/_matrix/key/v2/server",
            lambda r: build_server_keys_response(
                origin_name,
                origin_key,
                int(reactor.seconds() * 1000) + 86_400_000,  # type: ignore[attr-defined]
            ),
        )
        keyring = Keyring(
            self.client(),
            reactor,
            notaries=[Notary(self.synapse.server_name)],
            fetch_directly=False,
        )
        keys: Any = await keyring.get_verify_keys(origin_name, [key_id(origin_key)])
        self.assertEqual(list(keys), [key_id(origin_key)])
        # Synapse fetched the keys from the origin itself; we never did.
        self.assertTrue(origin.requests)
        self.assertTrue(all(r["uri"] == "/_matrix/key/v2/server" for r in origin.requests))
