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


def _membership_of(sync: dict[str, Any], room_id: str, user_id: str) -> str | None:
    """The latest membership of ``user_id`` seen in a /sync answer's joined room."""
    found = None
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    for section in ("state", "timeline"):
        for ev in room.get(section, {}).get("events", []):
            if ev.get("type") == "m.room.member" and ev.get("state_key") == user_id:
                found = ev.get("content", {}).get("membership")
    return found


class MembershipHandshakes(SynapseTestCase):
    """Scenario 3: knocks both ways (room v10), then invite and join; leaves and
    rejected invites both ways."""

    @defer.inlineCallbacks
    def test_synapse_knocks_on_fedlib_room_then_invited_and_joins(self) -> Any:
        room_id = yield self.fed.service.create_room(
            self.alice,
            "10",
            initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
        )
        bob = self.user("bob")
        with _Timer("synapse knocks on fedlib room (make_knock+send_knock)"):
            yield bob.knock(room_id, [self.fed.server_name], reason="let me in")
        yield self.wait_member(room_id, bob.user_id, "knock")
        with _Timer("fedlib invites synapse user (/invite v2)"):
            yield self.fed.service.invite(room_id, self.alice, bob.user_id)
        yield bob.sync_until(lambda s: room_id in s.get("rooms", {}).get("invite", {}))
        yield bob.join(room_id, [self.fed.server_name])
        yield self.wait_member(room_id, bob.user_id, "join")

    @defer.inlineCallbacks
    def test_fedlib_knocks_on_synapse_room_then_invited_and_joins(self) -> Any:
        carol = self.user("carol")
        created = yield carol.create_room(
            room_version="10",
            initial_state=[{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}],
        )
        room_id = created["room_id"]
        with _Timer("fedlib knocks on synapse room (make_knock+send_knock)"):
            yield self.fed.service.knock_room(room_id, self.alice, [self.synapse.server_name])
        yield carol.sync_until(lambda s: _membership_of(s, room_id, self.alice) == "knock")
        with _Timer("synapse invites fedlib user (/invite v2)"):
            yield carol.invite(room_id, self.alice)
        yield self.wait_fedlib(
            lambda: self.fed.service.store.get_stripped_room(
                __import__("fedlib.storage", fromlist=["StrippedKind"]).StrippedKind.INVITE,
                room_id,
                self.alice,
            ),
            what="stored invite",
        )
        yield self.fed.service.join_room(room_id, self.alice, [self.synapse.server_name])
        yield carol.sync_until(lambda s: _membership_of(s, room_id, self.alice) == "join")

    @defer.inlineCallbacks
    def test_leaves_both_ways(self) -> Any:
        # A Synapse user leaves a fedlib room.
        room_id = yield self.fed.service.create_room(self.alice, "10", preset="public_chat")
        bob = self.user("bob")
        yield bob.join(room_id, [self.fed.server_name])
        yield self.wait_member(room_id, bob.user_id)
        yield bob.leave(room_id)
        yield self.wait_member(room_id, bob.user_id, "leave")
        # A fedlib user leaves a Synapse room.
        carol = self.user("carol")
        created = yield carol.create_room(preset="public_chat", room_version="10")
        syn_room = created["room_id"]
        yield self.fed.service.join_room(syn_room, self.alice, [self.synapse.server_name])
        yield carol.sync_until(lambda s: _membership_of(s, syn_room, self.alice) == "join")
        yield self.fed.service.leave(syn_room, self.alice)
        yield carol.sync_until(lambda s: _membership_of(s, syn_room, self.alice) == "leave")

    @defer.inlineCallbacks
    def test_rejected_invites_both_ways(self) -> Any:
        # fedlib rejects an invite from Synapse (make_leave/send_leave on Synapse).
        carol = self.user("carol")
        created = yield carol.create_room(room_version="10")
        syn_room = created["room_id"]
        yield carol.invite(syn_room, self.alice)
        from fedlib.storage import StrippedKind

        yield self.wait_fedlib(
            lambda: self.fed.service.store.get_stripped_room(
                StrippedKind.INVITE, syn_room, self.alice
            ),
            what="stored invite",
        )
        with _Timer("fedlib rejects synapse invite (make_leave+send_leave)"):
            yield self.fed.service.leave(syn_room, self.alice)
        yield carol.sync_until(lambda s: _membership_of(s, syn_room, self.alice) == "leave")
        # Synapse rejects an invite from fedlib (make_leave/send_leave on fedlib).
        room_id = yield self.fed.service.create_room(self.alice, "10")
        bob = self.user("bob")
        yield self.fed.service.invite(room_id, self.alice, bob.user_id)
        yield bob.sync_until(lambda s: room_id in s.get("rooms", {}).get("invite", {}))
        with _Timer("synapse rejects fedlib invite (make_leave+send_leave)"):
            yield bob.leave(room_id)
        yield self.wait_member(room_id, bob.user_id, "leave")


class ReadEndpoints(SynapseTestCase):
    """Scenario 4: fedlib's client reads Synapse's read endpoints; Synapse
    backfills from fedlib."""

    @defer.inlineCallbacks
    def test_fedlib_reads_synapse(self) -> Any:
        carol = self.user("carol")
        created = yield carol.create_room(preset="public_chat", room_version="11")
        room_id = created["room_id"]
        yield self.fed.service.join_room(room_id, self.alice, [self.synapse.server_name])
        sent = yield carol.send_message(room_id, "read me")
        event_id = sent["event_id"]
        yield self.wait_fedlib_message(room_id, "read me")
        client = self.fed.service.client
        dest = self.synapse.server_name
        with _Timer("fedlib GET synapse /state_ids"):
            ids = yield client.get_state_ids(dest, room_id, event_id)
        with _Timer("fedlib GET synapse /state"):
            state = yield client.get_state(dest, room_id, event_id, room_version="11")
        self.assertEqual(len(ids.pdu_ids), len(state.pdus))
        self.assertTrue(ids.auth_chain_ids)
        types = {p["type"] for p in state.pdus}
        self.assertTrue({"m.room.create", "m.room.power_levels", "m.room.member"} <= types)
        with _Timer("fedlib GET synapse /event"):
            event = yield client.get_event(dest, event_id, room_version="11")
        self.assertEqual(event["content"]["body"], "read me")
        with _Timer("fedlib GET synapse /event_auth"):
            chain = yield client.get_event_auth(dest, room_id, event_id, room_version="11")
        self.assertIn("m.room.create", {e["type"] for e in chain})
        with _Timer("fedlib GET synapse /backfill"):
            older = yield client.backfill(dest, room_id, [event_id], 10, room_version="11")
        self.assertIn("m.room.message", {e["type"] for e in older})
        with _Timer("fedlib GET synapse /timestamp_to_event"):
            found = yield client.timestamp_to_event(dest, room_id, 0, "f")
        self.assertTrue(found.event_id.startswith("$"))

    @defer.inlineCallbacks
    def test_synapse_backfills_from_fedlib(self) -> Any:
        room_id = yield self.fed.service.create_room(self.alice, "10", preset="public_chat")
        for i in range(30):
            yield self.fed.service.send_event(
                room_id, self.alice, "m.room.message", {"msgtype": "m.text", "body": f"old {i}"}
            )
        bob = self.user("bob")
        yield bob.join(room_id, [self.fed.server_name])
        with _Timer("synapse backfills 30 messages from fedlib"):
            answer = yield bob.messages(room_id, limit=50)
        bodies = [e.get("content", {}).get("body") for e in answer.get("chunk", [])]
        self.assertIn("old 0", bodies)


class Restarts(SynapseTestCase):
    """Scenario 6: queued events survive a restart of either side."""

    @defer.inlineCallbacks
    def _room_with_bob(self) -> Any:
        room_id = yield self.fed.service.create_room(self.alice, "10", preset="public_chat")
        bob = self.user("bob")
        yield bob.join(room_id, [self.fed.server_name])
        yield self.wait_member(room_id, bob.user_id)
        return room_id, bob

    @defer.inlineCallbacks
    def test_fedlib_restart_delivers_queued_events(self) -> Any:
        room_id, bob = yield self._room_with_bob()
        yield self.synapse.stop()
        try:
            for i in range(3):
                yield self.fed.service.send_event(
                    room_id, self.alice, "m.room.message", {"msgtype": "m.text", "body": f"q{i}"}
                )
            port = self.fed.port.getHost().port
            yield self.fed.stop()
        finally:
            yield self.synapse.start()
        with _Timer("fedlib restart: queued events reach synapse"):
            self.fed = yield self.start_fedlib(port)
            pred = timeline_bodies(room_id)
            yield bob.sync_until(lambda s: {"q0", "q1", "q2"} <= set(pred(s)), timeout=90)
        yield bob.send_message(room_id, "after restart")
        yield self.wait_fedlib_message(room_id, "after restart")

    @defer.inlineCallbacks
    def test_synapse_restart_gets_queued_events(self) -> Any:
        room_id, bob = yield self._room_with_bob()
        yield self.synapse.stop()
        try:
            for i in range(3):
                yield self.fed.service.send_event(
                    room_id, self.alice, "m.room.message", {"msgtype": "m.text", "body": f"s{i}"}
                )
        finally:
            yield self.synapse.start()
        with _Timer("synapse restart: queued events from fedlib arrive"):
            pred = timeline_bodies(room_id)
            yield bob.sync_until(lambda s: {"s0", "s1", "s2"} <= set(pred(s)), timeout=90)
