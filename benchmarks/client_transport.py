"""Outbound federation on loopback: signed requests over TLS, and keyring checks.

    .venv/bin/python benchmarks/client_transport.py [--requests N] [--concurrency C]

1. ``FederationClient.get_event`` against a TLS server in the same process on
   127.0.0.1 (a throwaway CA, verification on): X-Matrix signing, pooled TLS
   connections, bounded body reading and strict JSON parsing per request. The
   server's cost is included (one process, one core), so this is a floor.
2. ``Keyring.verify_event`` per second for room-v10 events with cached keys (what
   each received PDU costs once keys are known).
3. First request to a new destination (resolution + TCP + TLS handshake).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task

from fedlib.client.transport import FederationClient
from fedlib.crypto.keys import generate_signing_key
from fedlib.crypto.signing import sign_event
from fedlib.keyring import Keyring, build_server_keys_response
from tests.transport_helpers import ScriptedServer, TestCA

EVENT = {
    "room_id": "!room:remote.test",
    "sender": "@alice:remote.test",
    "type": "m.room.message",
    "content": {"body": "x" * 200, "msgtype": "m.text"},
    "origin_server_ts": 1_700_000_000_000,
    "auth_events": ["$a", "$b", "$c"],
    "prev_events": ["$p"],
    "depth": 10,
}


async def bench(reactor: Any, n: int, concurrency: int) -> None:
    ca = TestCA()
    server = ScriptedServer(ca.issue([], ["127.0.0.1"]))
    dest = f"127.0.0.1:{server.port_number}"
    key = generate_signing_key("k1")
    signed = sign_event("10", EVENT, "remote.test", key)
    server.route("/_matrix/federation/v1/event/", lambda r: {"origin": "x", "pdus": [signed]})
    server.route(
        "/_matrix/key/v2/server",
        lambda r: build_server_keys_response(
            "remote.test", key, int(reactor.seconds() * 1000) + 86_400_000
        ),
    )
    client = FederationClient("bench.test", generate_signing_key("b"), reactor, ca_bundle=ca.path)

    start = time.perf_counter()
    await client.get_event(dest, "$first")
    first = time.perf_counter() - start
    print(f"first request to a new destination (TLS handshake): {first * 1000:.1f} ms")

    start = time.perf_counter()
    for i in range(n):
        await client.get_event(dest, f"$e{i}")
    seq = time.perf_counter() - start
    print(f"sequential signed GETs: {n / seq:.0f} req/s ({seq / n * 1000:.2f} ms each)")

    sem = defer.DeferredSemaphore(concurrency)
    start = time.perf_counter()
    await defer.gatherResults(
        [sem.run(client.get_event, dest, f"$c{i}") for i in range(n)], consumeErrors=True
    )
    par = time.perf_counter() - start
    print(f"{concurrency} concurrent signed GETs: {n / par:.0f} req/s")

    # Keyring: keys fetched once over the same TLS server, then cached.
    class _Direct:
        def get_server_keys(self, _dest: str) -> Any:
            return client.request("GET", dest, "/_matrix/key/v2/server", sign=False)

    keyring = Keyring(_Direct(), reactor)
    await keyring.verify_event("10", signed)
    count = 5000
    start = time.perf_counter()
    for _ in range(count):
        await keyring.verify_event("10", signed)
    kv = time.perf_counter() - start
    print(f"Keyring.verify_event (cached keys, v10): {count / kv:.0f} events/s")

    await client.agent.pool.closeCachedConnections()  # type: ignore[attr-defined]
    await server.stop()
    ca.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    task.react(lambda r: defer.ensureDeferred(bench(r, args.requests, args.concurrency)))


if __name__ == "__main__":
    main()
