"""Keys through fedlib's own server acting as a notary, over real TLS on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from fedlib.client.transport import FederationClient
from fedlib.crypto.keys import generate_signing_key, key_id
from fedlib.errors import SignatureError
from fedlib.keyring import Keyring, Notary, build_server_keys_response
from fedlib.testing import quiet_dns, start_loopback
from tests.transport_helpers import ScriptedServer, TestCA

DAY_MS = 86_400_000


def now_ms() -> int:
    return int(reactor.seconds() * 1000)  # type: ignore[attr-defined]


class FedlibNotaryTests(unittest.TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        quiet_dns(self)
        self.notary = await start_loopback()
        self.addCleanup(self.notary.stop)
        self.notary_name = self.notary.service.config.server_name
        ca = TestCA()
        self.addCleanup(ca.cleanup)
        self.origin = ScriptedServer(ca.issue([], ["127.0.0.1"]))
        self.addCleanup(self.origin.stop)
        self.origin_name = f"127.0.0.1:{self.origin.port_number}"
        self.origin_key = generate_signing_key("o1")
        client = FederationClient(
            "asker.test",
            generate_signing_key("a"),
            reactor,
            ca_bundle=str(self.notary.directory / "tls.crt"),  # the notary's own certificate
            get_retries=0,
        )
        self.addCleanup(client.close_connections)
        self.keyring = Keyring(
            client, reactor, notaries=[Notary(self.notary_name)], fetch_directly=False
        )

    def serve(self, body: Any) -> None:
        self.origin.route("/_matrix/key/v2/server", lambda r: body)

    async def test_keys_vouched_for_by_fedlib(self) -> None:
        self.serve(build_server_keys_response(self.origin_name, self.origin_key, now_ms() + DAY_MS))
        keys = await self.keyring.get_verify_keys(self.origin_name, [key_id(self.origin_key)])
        self.assertEqual(list(keys), [key_id(self.origin_key)])
        self.assertEqual(len(self.origin.requests), 1)  # the notary asked, not us

    async def test_forged_origin_keys_are_not_vouched_for(self) -> None:
        forged = build_server_keys_response(self.origin_name, self.origin_key, now_ms() + DAY_MS)
        forged["verify_keys"] = {key_id(self.origin_key): {"key": "A" * 43}}
        self.serve(forged)
        with self.assertRaises(SignatureError):
            await self.keyring.get_verify_keys(self.origin_name, [key_id(self.origin_key)])
