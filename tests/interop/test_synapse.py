"""fedlib and a real Synapse federating on loopback: the scenarios of the
interoperability issue, each an independent test with its own fedlib server,
users and rooms (one Synapse process serves the class).

Handshake timings are written to ``_trial_temp/interop-timings.json``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from fedlib.testing import quiet_dns, start_loopback
from tests.interop.synapse import SynapseServer, SynapseUser, shared_synapse, timeline_bodies

TIMINGS: dict[str, float] = {}


def _record(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 3)
    path = Path("interop-timings.json")
    known = json.loads(path.read_text()) if path.exists() else {}
    known.update(TIMINGS)
    path.write_text(json.dumps(known, indent=1, sort_keys=True))


class _Timer:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> _Timer:
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            _record(self.name, time.monotonic() - self.start)


class SynapseTestCase(unittest.TestCase):
    timeout = 180
    synapse: SynapseServer

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        quiet_dns(self)
        self.synapse = shared_synapse()
        if self.synapse.proc is None or self.synapse.proc.poll() is not None:
            yield self.synapse.start()
        self.dir = Path(self.mktemp()).resolve()
        self.fed = yield self.start_fedlib()
        self.addCleanup(lambda: self.fed.stop())
        self.alice = self.fed.user("alice")

    def start_fedlib(self, port: int = 0) -> Any:
        return start_loopback(
            database=f"sqlite://{self.dir / 'fedlib.db'}", directory=self.dir, port=port
        )

    def user(self, name: str) -> SynapseUser:
        # Blocking registration is fine: nothing federates during it.
        user = self.synapse.register_blocking(f"{name}{secrets.token_hex(3)}")
        self.addCleanup(user.close)
        return user

    @defer.inlineCallbacks
    def fedlib_messages(self, room_id: str) -> Any:
        store = self.fed.service.store
        extremities = yield store.get_forward_extremities(room_id)
        events = yield store.backfill(room_id, extremities, 200)
        return [
            e.event["content"].get("body")
            for e in events
            if e.event.get("type") == "m.room.message" and not e.rejected
        ]

    @defer.inlineCallbacks
    def wait_fedlib(self, check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
        from twisted.internet import reactor

        deadline = time.monotonic() + timeout
        while True:
            value = yield check()
            if value:
                return value
            if time.monotonic() > deadline:
                self.fail(f"fedlib: {what} not met within {timeout}s")
            yield task.deferLater(reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def wait_fedlib_message(self, room_id: str, body: str) -> Any:
        @defer.inlineCallbacks
        def check() -> Any:
            return body in (yield self.fedlib_messages(room_id))

        yield self.wait_fedlib(check, what=f"message {body!r} in {room_id}")

    @defer.inlineCallbacks
    def wait_member(self, room_id: str, user_id: str, membership: str = "join") -> Any:
        store = self.fed.service.store

        @defer.inlineCallbacks
        def check() -> Any:
            state = yield store.get_current_state_events(room_id, ["m.room.member"])
            ev = state.get(("m.room.member", user_id))
            return ev is not None and ev.event["content"].get("membership") == membership

        yield self.wait_fedlib(check, what=f"{user_id} {membership} in {room_id}")


def _state_of(state: list[Mapping[str, Any]], etype: str, key: str) -> Any:
    for ev in state:
        if ev["type"] == etype and ev.get("state_key") == key:
            return ev
    return None


class SynapseJoinsFedlibRoom(SynapseTestCase):
    """Scenario 1 (and 5: each room version)."""

    @defer.inlineCallbacks
    def _scenario(self, version: str) -> Any:
        room_id = yield self.fed.service.create_room(
            self.alice, version, preset="public_chat", name=f"fedlib v{version}"
        )
        bob = self.user("bob")
        with _Timer(f"synapse joins fedlib room v{version} (make_join+send_join)"):
            yield bob.join(room_id, [self.fed.server_name])
        yield self.wait_member(room_id, bob.user_id)
        with _Timer(f"fedlib -> synapse message v{version}"):
            yield self.fed.service.send_event(
                room_id, self.alice, "m.room.message", {"msgtype": "m.text", "body": "from fedlib"}
            )
            pred = timeline_bodies(room_id)
            yield bob.sync_until(lambda s: "from fedlib" in pred(s))
        with _Timer(f"synapse -> fedlib message v{version}"):
            yield bob.send_message(room_id, "from synapse")
            yield self.wait_fedlib_message(room_id, "from synapse")
        state = yield bob.state(room_id)
        self.assertEqual(
            _state_of(state, "m.room.name", "")["content"]["name"], f"fedlib v{version}"
        )

    def test_v10(self) -> Any:
        return self._scenario("10")

    def test_v11(self) -> Any:
        return self._scenario("11")

    def test_v12(self) -> Any:
        return self._scenario("12")


class FedlibJoinsSynapseRoom(SynapseTestCase):
    """Scenario 2 (and 5)."""

    @defer.inlineCallbacks
    def _scenario(self, version: str, omit_members: bool = False) -> Any:
        carol = self.user("carol")
        created = yield carol.create_room(
            preset="public_chat", room_version=version, name=f"synapse v{version}"
        )
        room_id = created["room_id"]
        with _Timer(f"fedlib joins synapse room v{version} omit_members={omit_members}"):
            yield self.fed.service.join_room(
                room_id, self.alice, [self.synapse.server_name], omit_members=omit_members
            )
        pred = timeline_bodies(room_id)
        yield carol.sync_until(lambda s: pred(s) is not None and self._joined(s, room_id))
        with _Timer(f"synapse -> fedlib message (joined room) v{version}"):
            yield carol.send_message(room_id, "hello fedlib")
            yield self.wait_fedlib_message(room_id, "hello fedlib")
        with _Timer(f"fedlib -> synapse message (joined room) v{version}"):
            yield self.fed.service.send_event(
                room_id, self.alice, "m.room.message", {"msgtype": "m.text", "body": "hi synapse"}
            )
            yield carol.sync_until(lambda s: "hi synapse" in pred(s))

    def _joined(self, sync: dict[str, Any], room_id: str) -> bool:
        room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
        events = room.get("timeline", {}).get("events", []) + room.get("state", {}).get(
            "events", []
        )
        return any(
            e.get("type") == "m.room.member"
            and e.get("state_key") == self.alice
            and e.get("content", {}).get("membership") == "join"
            for e in events
        ) or bool(getattr(self, "_seen_join", False))

    def test_v10(self) -> Any:
        return self._scenario("10")

    def test_v11(self) -> Any:
        return self._scenario("11")

    def test_v12(self) -> Any:
        return self._scenario("12")

    def test_v12_omit_members(self) -> Any:
        return self._scenario("12", omit_members=True)
