"""fedlib joining a room hosted by a second fedlib process on loopback.

    python benchmarks/join.py [-r REPEAT] [N ...]     (default: 1000 10000)

For each N a resident process (this script with ``--serve N``) starts a
loopback FederationService (TLS, self-signed) and creates a public room with N
joined members. This process then starts its own loopback server and joins the
room through fedlib.client.handshakes, without and with ``omit_members``, each
time as a fresh server with a fresh store. Printed (medians over REPEAT joins):
seconds until ``join_room`` returns, seconds until the full state is there
(partial joins), the reactor's worst stall during the join, then the peak of
Python heap allocations of one more join run under tracemalloc, the members the
joiner sees, and the seconds the resident took to set the room up.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, stdio, task
from twisted.protocols.basic import LineReceiver

from fedlib.auth.rules import CREATE_KEY, check_auth_with, select_auth_events
from fedlib.events.room_versions import get_room_version
from fedlib.rooms.builder import Preset, build_event
from fedlib.storage.interface import EventStatus, PersistItem, StateRef
from fedlib.testing import start_loopback


class _StopOnEOF(LineReceiver):
    def connectionLost(self, reason: Any = None) -> None:
        if reactor.running:  # type: ignore[attr-defined]
            reactor.stop()  # type: ignore[attr-defined]


#: Member joins persisted per store call when the room is set up.
SETUP_BATCH = 2000


@defer.inlineCallbacks
def add_members(server: Any, room_id: str, count: int) -> Any:
    """Join ``count`` local users to ``room_id`` in bulk: each join is built, hashed
    and signed as ``LocalRooms`` would (auth events by the selection rules, prev
    event the previous join, authorised against its auth events) and the joins are
    persisted in batches through the store's ``persist_events``, each one's state
    given by reference to the event before it. One join at a time through
    ``LocalRooms`` re-reads the room's state per event and takes minutes at 10,000.
    """
    svc = server.service
    store = svc.store
    version = get_room_version((yield store.get_room_version(room_id)))
    state = dict((yield store.get_current_state(room_id)))
    (prev,) = yield store.get_forward_extremities(room_id)
    prev_stored = (yield store.get_events([prev]))[prev]
    depth = prev_stored.depth
    create_id = state.get(CREATE_KEY)
    stub_member = server.user("m")
    shared = select_auth_events(
        version.identifier,
        {
            "type": "m.room.member",
            "state_key": stub_member,
            "sender": stub_member,
            "content": {"membership": "join"},
        },
        state,
    )
    auth_stored = yield store.get_events(shared)
    auth_map = {(s.event["type"], s.event["state_key"]): s.event for s in auth_stored.values()}
    now = int(svc.reactor.seconds() * 1000)
    items: list[PersistItem] = []
    for i in range(count):
        user = server.user(f"m{i}")
        depth += 1
        built = build_event(
            version,
            room_id=room_id,
            sender=user,
            event_type="m.room.member",
            content={"membership": "join"},
            state_key=user,
            prev_event_ids=[prev],
            auth_event_ids=shared,
            depth=depth,
            origin_server_ts=now,
            server_name=svc.config.server_name,
            signing_key=svc.config.signing_key,
        )
        # The user has no membership yet, so the shared auth events are all it needs.
        check_auth_with(version, built.event, auth_map, create_id)
        items.append(
            PersistItem(
                built.event,
                built.event_id,
                EventStatus.ACCEPTED,
                state_before=StateRef(prev),
            )
        )
        prev = built.event_id
        if len(items) >= SETUP_BATCH:
            yield store.persist_events(room_id, items)
            items = []
    if items:
        yield store.persist_events(room_id, items)


@defer.inlineCallbacks
def serve(members: int) -> Any:
    server = yield start_loopback()
    svc = server.service
    creator = server.user("creator")
    room_id = yield svc.create_room(creator, "10", preset=Preset.PUBLIC_CHAT, name="bench")
    start = time.perf_counter()
    yield add_members(server, room_id, members - 1)
    joined = yield svc.store.get_joined_members(room_id)
    assert len(joined) == members, len(joined)
    took = time.perf_counter() - start
    print(f"READY {server.server_name} {room_id} {took:.1f}", flush=True)
    stdio.StandardIO(_StopOnEOF())


class _LagProbe:
    """The longest the reactor went without running a 5 ms timer (its
    responsiveness while the join runs)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.worst = 0.0
        self._last = time.perf_counter()
        self._loop = task.LoopingCall(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self._last - self.interval)
        self._last = now

    def start(self) -> None:
        self._last = time.perf_counter()
        self._loop.start(self.interval, now=False)

    def stop(self) -> float:
        self._tick()
        self._loop.stop()
        return self.worst


@defer.inlineCallbacks
def measure(resident: str, room_id: str, omit: bool, trace: bool) -> Any:
    """One join by a fresh joining server; timed (with the reactor's worst lag), or
    traced for the peak of Python allocations (tracemalloc slows the join several
    times over, so a traced join is never the timed one)."""
    server = yield start_loopback()
    handshakes = server.service.handshakes
    user = server.user("joiner")
    probe = _LagProbe()
    if trace:
        tracemalloc.start()
    else:
        probe.start()
    start = time.perf_counter()
    yield handshakes.join_room(room_id, user, [resident], omit_members=omit)
    joined = time.perf_counter() - start
    yield handshakes.wait_for_full_state(room_id)
    full = time.perf_counter() - start
    peak = lag = 0.0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    else:
        lag = probe.stop()
    members = yield server.service.store.get_joined_members(room_id)
    # Kept running: the next joiner must be able to fetch this server's keys to
    # verify its join, now part of the room state.
    return joined, full, peak, lag, len(members), server


@defer.inlineCallbacks
def main_async(sizes: list[int], repeat: int) -> Any:
    print(
        f"{'members':>8} {'omit':>5} {'join s':>7} {'full s':>7} {'lag ms':>7} "
        f"{'peak MiB':>9} {'seen':>6} {'setup s':>8}"
    )
    for n in sizes:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        joiners = []
        try:
            assert proc.stdout is not None
            line = yield task.deferLater(reactor, 0, proc.stdout.readline)
            _, resident, room_id, setup = line.split()
            for omit in (False, True):
                runs = []
                for _ in range(repeat):
                    joined, full, _, lag, seen, joiner = yield measure(
                        resident, room_id, omit, False
                    )
                    joiners.append(joiner)
                    runs.append((joined, full, lag))
                _, _, peak, _, _, joiner = yield measure(resident, room_id, omit, True)
                joiners.append(joiner)
                joined = statistics.median(r[0] for r in runs)
                full = statistics.median(r[1] for r in runs)
                lag = statistics.median(r[2] for r in runs)
                print(
                    f"{n:>8} {omit!s:>5} {joined:>7.2f} {full:>7.2f} {lag * 1000:>7.0f} "
                    f"{peak / 2**20:>9.1f} {seen:>6} {setup:>8}",
                    flush=True,
                )
        finally:
            for joiner in joiners:
                yield joiner.stop()
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=60)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2])).addErrback(lambda f: (f.printTraceback(), reactor.stop()))  # type: ignore[attr-defined]
        reactor.run()  # type: ignore[attr-defined]
        return
    args = sys.argv[1:]
    repeat = 1
    if args[:1] == ["-r"]:
        repeat, args = int(args[1]), args[2:]
    sizes = [int(a) for a in args] or [1000, 10000]
    task.react(lambda _r: main_async(sizes, repeat))


if __name__ == "__main__":
    main()
