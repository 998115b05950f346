"""fedlib joining a room hosted by a second fedlib process on loopback.

    python benchmarks/join.py [N ...]          (default: 1000 10000)

For each N a resident process (this script with ``--serve N``) starts a
loopback FederationService (TLS, self-signed) and creates a public room with N
joined members. This process then starts its own loopback server and joins the
room through fedlib.client.handshakes, once with and once without
``omit_members``, each time into a fresh store. Printed: seconds until
``join_room`` returns, seconds until the full state is there (partial joins), and
the peak of Python heap allocations during the join (tracemalloc).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, stdio, task
from twisted.protocols.basic import LineReceiver

from fedlib.client.handshakes import Handshakes
from fedlib.rooms.builder import Preset
from fedlib.testing import start_loopback


class _StopOnEOF(LineReceiver):
    def connectionLost(self, reason: Any = None) -> None:
        if reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]


@defer.inlineCallbacks
def serve(members: int) -> Any:
    server = yield start_loopback()
    svc = server.service
    creator = server.user("creator")
    room_id = yield svc.create_room(creator, "10", preset=Preset.PUBLIC_CHAT, name="bench")
    for i in range(members - 1):
        yield svc.join_room(room_id, server.user(f"m{i}"))
    print(f"READY {server.server_name} {room_id}", flush=True)
    stdio.StandardIO(_StopOnEOF())


@defer.inlineCallbacks
def measure(resident: str, room_id: str, omit: bool) -> Any:
    server = yield start_loopback()
    handshakes = Handshakes.from_service(server.service)
    user = server.user("joiner")
    tracemalloc.start()
    start = time.perf_counter()
    yield handshakes.join_room(room_id, user, [resident], omit_members=omit)
    joined = time.perf_counter() - start
    yield handshakes.wait_for_full_state(room_id)
    full = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    members = yield server.service.store.get_joined_members(room_id)
    # Kept running: the next joiner must be able to fetch this server's keys to
    # verify its join, now part of the room state.
    return joined, full, peak, len(members), server


@defer.inlineCallbacks
def main_async(sizes: list[int]) -> Any:
    print(f"{'members':>8} {'omit':>5} {'join s':>7} {'full s':>7} {'peak MiB':>9} {'seen':>6}")
    for n in sizes:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = yield task.deferLater(reactor, 0, proc.stdout.readline)
            _, resident, room_id = line.split()
            joiners = []
            for omit in (False, True):
                joined, full, peak, seen, joiner = yield measure(resident, room_id, omit)
                joiners.append(joiner)
                print(
                    f"{n:>8} {omit!s:>5} {joined:>7.2f} {full:>7.2f} "
                    f"{peak / 2**20:>9.1f} {seen:>6}",
                    flush=True,
                )
            for joiner in joiners:
                yield joiner.stop()
        finally:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=60)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2])).addErrback(lambda f: (f.printTraceback(), reactor.stop()))  # type: ignore[attr-defined]
        reactor.run()  # type: ignore[attr-defined]
        return
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    task.react(lambda _r: main_async(sizes))


if __name__ == "__main__":
    main()
