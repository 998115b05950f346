"""Benchmark fedlib.state.resolve on a generated forked room, optionally against Synapse.

    python benchmarks/stateres.py --members 10000 --conflicted 2 --branches 2 --seed 1
    python benchmarks/stateres.py --members 10000 --compare synapse

The room (tests/fixtures/stateres_rooms.py ``big_room``) is deterministic for a
seed: ``--members`` joins, then ``--branches`` lines of history that change about
``--conflicted`` % of the members' state between them. PDUs are complete with
real event IDs (reference hashes from room v3 on) and content hashes; the
signature is a fixed placeholder, which state resolution never reads.

Each run resolves from the plain PDU dicts with nothing carried over between
runs; the median of ``--runs`` runs is reported, in CPU time (``process_time``:
steady on a machine shared with other work) and wall-clock time. The speed
ratio is of CPU medians.

``--compare synapse`` runs Synapse's ``resolve_events_with_store`` on the same
room in a worker process of the Synapse virtualenv (``FEDLIB_SYNAPSE_VENV``,
default /work/synapse-venv), which generates the room itself from the same seed;
both sides check a digest of the input and of the result. Runs alternate between
fedlib and the worker, so changes in the machine's load fall on both alike.
Synapse's store is an in-memory shim that turns PDU dicts into Synapse events on
first use in each run (that cost is counted, as fedlib's parsing is) and computes
the auth chain difference by walking the auth DAG in Python, which Synapse's
database would answer from its chain cover index; Synapse's time is therefore
shown with and without the time spent in that shim method, and the headline
speed ratio uses the time without it.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _load_big_room() -> Any:
    # By path, not through the ``tests`` package: its ``__init__`` needs
    # hypothesis, which the Synapse virtualenv running the worker lacks.
    import importlib.util

    path = os.path.join(ROOT, "tests", "fixtures", "stateres_rooms.py")
    spec = importlib.util.spec_from_file_location("_stateres_rooms", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.big_room


big_room = _load_big_room()

State = dict[tuple[str, str], str]


def digest_state(state: State) -> str:
    rows = sorted([k[0], k[1], v] for k, v in state.items())
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def digest_input(events: dict[str, Any], sets: list[State]) -> str:
    h = hashlib.sha256()
    for eid in sorted(events):
        h.update(eid.encode())
    for s in sets:
        h.update(digest_state(s).encode())
    return h.hexdigest()[:16]


def build(args: argparse.Namespace) -> tuple[dict[str, Any], list[State]]:
    """The room, as a server would hold it: the generator shares string objects
    between events and state maps, which makes hashing and comparing them
    unrealistically cheap, so everything goes through JSON (as PDUs and state
    do, from the network or the database) and comes back with its own strings."""
    events, sets = big_room(
        args.room_version,
        args.seed,
        members=args.members,
        conflicted_percent=args.conflicted,
        branches=args.branches,
    )
    events = json.loads(json.dumps(events))
    rows = json.loads(json.dumps([[[t, k, v] for (t, k), v in s.items()] for s in sets]))
    return events, [{(t, k): v for t, k, v in s} for s in rows]


def time_runs(fn: Any, runs: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds of each run. The CPU time (``process_time``)
    is the steadier figure on a machine shared with other work."""
    wall, cpu = [], []
    for _ in range(runs):
        gc.collect()
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return wall, cpu


def run_fedlib(args: argparse.Namespace) -> None:
    from fedlib.state import resolve

    start = time.perf_counter()
    events, sets = build(args)
    gen_s = time.perf_counter() - start
    conflicted = {k for k in set().union(*sets) if len({s.get(k) for s in sets}) > 1}
    print(
        f"room v{args.room_version}: {args.members} members, {len(events)} events, "
        f"{len(conflicted)} conflicted keys over {args.branches} branches "
        f"(generated in {gen_s:.1f} s)"
    )
    result: State = {}

    def once() -> None:
        nonlocal result
        result = resolve(args.room_version, sets, events)

    worker = None
    if args.compare == "synapse":
        venv = os.environ.get("FEDLIB_SYNAPSE_VENV", "/work/synapse-venv")
        cmd = [os.path.join(venv, "bin", "python"), os.path.abspath(__file__), "--synapse-worker"]
        for name in ("members", "conflicted", "branches", "seed", "room_version"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        worker = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert worker.stdin is not None and worker.stdout is not None
        same_input = worker.stdout.readline().split()[-1] == digest_input(events, sets)

    def ask(command: str) -> Any:
        assert worker is not None and worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(command + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())

    # Runs alternate between the two resolvers (the other process waiting), so a
    # change in the machine's load falls on both alike.
    wall: list[float] = []
    cpu: list[float] = []
    theirs: list[dict[str, float]] = []
    for _ in range(args.runs):
        w, c = time_runs(once, 1)
        wall += w
        cpu += c
        if worker is not None:
            theirs.append(ask("run"))
    median_ms = statistics.median(cpu) * 1000
    print(
        f"fedlib.state.resolve: median {median_ms:.2f} ms CPU "
        f"({statistics.median(wall) * 1000:.2f} ms wall), min {min(cpu) * 1000:.2f} ms CPU"
    )
    if worker is None:
        return
    same_result = ask("result")["result"] == digest_state(result)
    ask("quit")
    worker.wait()
    syn_ms = statistics.median(t["cpu"] for t in theirs) * 1000
    syn_excl_ms = statistics.median(t["excl"] for t in theirs) * 1000
    syn_wall_ms = statistics.median(t["wall"] for t in theirs) * 1000
    print(
        f"synapse resolve_events_with_store: median {syn_ms:.2f} ms CPU "
        f"({syn_excl_ms:.2f} ms without the shim's auth chain difference; "
        f"{syn_wall_ms:.2f} ms wall)"
    )
    print(f"same input: {same_input}; identical result: {same_result}")
    print(f"speed-up: {syn_excl_ms / median_ms:.1f}x ({syn_ms / median_ms:.1f}x counting the shim)")
    if not (same_input and same_result):
        sys.exit(1)


def drive(coro: Any) -> Any:
    """Run a coroutine that never really suspends (the in-memory store answers
    at once), without an event loop's overhead on the measured time."""
    try:
        while True:
            coro.send(None)
    except StopIteration as done:
        return done.value


def run_synapse_worker(args: argparse.Namespace) -> None:
    import synapse.event_auth  # noqa: F401  (imported first: breaks an import cycle)
    from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
    from synapse.events import make_event_from_dict
    from synapse.state import v1 as synapse_v1
    from synapse.state import v2 as synapse_v2
    from synapse.storage.databases.main.event_federation import StateDifference

    events, sets = build(args)
    rv = KNOWN_ROOM_VERSIONS[args.room_version]
    v1_format = args.room_version in ("1", "2")

    class Clock:
        async def sleep(self, duration: Any) -> None:
            return None

    class Store:
        def __init__(self) -> None:
            self.converted: dict[str, Any] = {}
            self.diff_s = 0.0  # CPU seconds in get_auth_chain_difference

        def event(self, eid: str) -> Any:
            ev = self.converted.get(eid)
            if ev is None:
                ev = self.converted[eid] = make_event_from_dict(dict(events[eid]), rv)
            return ev

        async def get_events(self, ids: Any, allow_rejected: bool = False) -> dict[str, Any]:
            return {eid: self.event(eid) for eid in ids if eid in events}

        async def get_auth_chain_difference(
            self, room_id: str, state_sets: Any, conflicted: Any, extra: Any
        ) -> Any:
            start = time.process_time()
            create = "$" + room_id[1:] if rv.identifier == "12" else None
            chains = []
            for s in state_sets:
                seen = set(s)
                stack = list(seen)
                while stack:
                    pdu = events[stack.pop()]
                    auth = pdu["auth_events"]
                    ids = [a[0] for a in auth] if v1_format else list(auth)
                    if create is not None and pdu["type"] != "m.room.create":
                        ids.append(create)
                    for aid in ids:
                        if aid not in seen:
                            seen.add(aid)
                            stack.append(aid)
                chains.append(seen)
            diff = set().union(*chains) - chains[0].intersection(*chains[1:])
            subgraph = None
            if conflicted is not None:
                subgraph = _subgraph(conflicted)
            self.diff_s += time.process_time() - start
            return StateDifference(auth_difference=diff, conflicted_subgraph=subgraph)

    def _subgraph(conflicted: set[str]) -> set[str]:
        # Ancestors of conflicted events that are also descendants of one.
        back = set(conflicted)
        stack = list(back)
        citers: dict[str, set[str]] = {}
        while stack:
            eid = stack.pop()
            pdu = events[eid]
            auth = pdu["auth_events"]
            ids = [a[0] for a in auth] if v1_format else list(auth)
            if rv.identifier == "12" and pdu["type"] != "m.room.create":
                ids.append("$" + pdu["room_id"][1:])
            for aid in ids:
                citers.setdefault(aid, set()).add(eid)
                if aid not in back:
                    back.add(aid)
                    stack.append(aid)
        fwd = set(conflicted)
        stack = list(fwd)
        while stack:
            for c in citers.get(stack.pop(), ()):
                if c not in fwd:
                    fwd.add(c)
                    stack.append(c)
        return back & fwd

    room_id = events[next(iter(sets[0].values()))].get("room_id") or ""
    if not room_id:
        room_id = "!" + next(iter(sets[0].values()))[1:]
    resolved: Any = None

    def once() -> dict[str, float]:
        nonlocal resolved
        gc.collect()
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        store = Store()
        if args.room_version == "1":

            async def factory(ids: Any) -> Any:
                return await store.get_events(ids)

            coro = synapse_v1.resolve_events_with_store(room_id, rv, sets, None, factory)
        else:
            coro = synapse_v2.resolve_events_with_store(Clock(), room_id, rv, sets, None, store)
        # Synapse returns a ChainMap over the unconflicted and resolved maps; it
        # is turned into a dict only after the clock stops, as Synapse's callers
        # use it as it is.
        resolved = drive(coro)
        cpu = time.process_time() - start_cpu
        wall = time.perf_counter() - start_wall
        return {"cpu": cpu, "wall": wall, "excl": cpu - store.diff_s}

    # A small line protocol on stdin/stdout, driven by run_fedlib.
    print("ready", digest_input(events, sets), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            answer: dict[str, Any] = once()
        elif command == "result":
            answer = {"result": digest_state(dict(resolved))}
        else:
            print("{}", flush=True)
            return
        print(json.dumps(answer), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--conflicted", type=float, default=2.0, help="percent of members")
    parser.add_argument("--branches", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--room-version", default="10")
    parser.add_argument("--compare", choices=("synapse",))
    parser.add_argument("--synapse-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.synapse_worker:
        run_synapse_worker(args)
    else:
        run_fedlib(args)


if __name__ == "__main__":
    main()
