"""Time and peak memory of processing a send_join answer, in process.

A fake resident (the one of tests/test_handshakes.py) hosts a room of N members;
fedlib's Handshakes.join_room runs against it with a MemoryStore, with and
without omit_members. Network and the resident's own work are excluded from
the peak-memory figure only in so far as the resident's room exists before the
measurement starts; the time includes verifying every signature, the auth
checks, and persisting.

    python benchmarks/join_handshake.py [N ...]     (default: 1000 10000)
"""

from __future__ import annotations

import os
import sys
import time
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task

from fedlib.client.gaps import GapFiller
from fedlib.client.handshakes import Handshakes, JoinResult
from fedlib.crypto.keys import get_verify_key, key_id
from fedlib.keyring import FetchedKey, Keyring
from fedlib.storage.memory import MemoryStore
from tests.handshake_fakes import Server
from tests.test_handshakes import BOB, FakeClient, Resident, _result


def _pump(clock: task.Clock, d: defer.Deferred[Any]) -> Any:
    """Run the clock's due calls (verification yields between chunks) until ``d``
    fires; its result."""
    out: list[Any] = []
    d.addBoth(out.append)
    while not out:
        assert clock.getDelayedCalls(), "Deferred did not fire"
        clock.advance(0)
    return _result(defer.succeed(out[0]))


def run(
    members: int, omit: bool, version: str = "10", trace: bool = False
) -> tuple[float, float, int]:
    hs1, us = Server("hs1"), Server("us")
    client = FakeClient()
    res = Resident(hs1, version, members=members)
    client.residents["hs1"] = res
    client.residents["hs2"] = res
    store = MemoryStore()
    clock = task.Clock()
    # The real keyring (its cache filled, nothing to fetch): verify_pdus looks keys
    # up through it as it does in a server.
    keyring = Keyring(None, clock, fetch_directly=False)
    for server in (hs1, us):
        kid = key_id(server.key)
        keyring.add_keys(server.name, {kid: FetchedKey(kid, get_verify_key(server.key), 2**62)})
    # Hold the background state fetch of a partial join until the join returned,
    # so the two are timed apart.
    state_ids = client.get_state_ids

    def later(*args: Any) -> Any:
        d = state_ids(*args)
        held: defer.Deferred[Any] = defer.Deferred()
        d.addBoth(lambda r: clock.callLater(0, held.callback, r))
        return held

    client.get_state_ids = later  # type: ignore[method-assign]
    handshakes = Handshakes(
        server_name="us",
        signing_key=us.key,
        client=client,
        store=store,
        keyring=keyring,
        clock=clock,
        gaps=GapFiller(client, store, keyring, clock),
    )
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    result: Any = _pump(clock, handshakes.join_room(res.room_id, BOB, ["hs1"], omit_members=omit))
    elapsed = time.perf_counter() - start
    assert isinstance(result, JoinResult), result
    start = time.perf_counter()
    _pump(clock, handshakes.wait_for_full_state(res.room_id))
    resync = time.perf_counter() - start
    assert not _result(store.is_partial_state(res.room_id))
    peak = 0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return elapsed, resync, peak


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    print(f"{'members':>8} {'omit_members':>12} {'join s':>7} {'resync s':>8} {'peak MiB':>9}")
    for n in sizes:
        for omit in (False, True):
            seconds, resync, _ = run(n, omit)
            _, _, peak = run(n, omit, trace=True)
            print(f"{n:>8} {omit!s:>12} {seconds:>7.2f} {resync:>8.2f} {peak / 2**20:>9.1f}")


if __name__ == "__main__":
    main()
