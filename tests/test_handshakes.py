"""Tests for fedlib.client.handshakes against fake resident servers, good and bad."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from fedlib.auth.rules import select_auth_events
from fedlib.client.gaps import GapConfig, GapFiller
from fedlib.client.handshakes import HandshakeConfig, HandshakeError, Handshakes, JoinResult
from fedlib.client.transport import (
    InvalidResponseError,
    MakeMembershipResponse,
    RemoteError,
    SendJoinResponse,
    StateIdsResponse,
    StateResponse,
)
from fedlib.crypto.signing import sign_event
from fedlib.errors import MatrixError
from fedlib.events.hashing import compute_event_id
from fedlib.events.room_versions import get_room_version
from fedlib.rooms.builder import (
    BuiltEvent,
    Preset,
    build_event,
    build_room,
    room_creation_templates,
)
from fedlib.storage.interface import StrippedKind, StrippedRoom
from fedlib.storage.memory import MemoryStore
from tests.handshake_fakes import FakeKeyring, Server

US = "us"
ALICE = "@alice:hs1"
BOB = "@bob:us"


class Resident:
    """A resident server "name" hosting one room, answering the client methods."""

    def __init__(self, server: Server, version: str, members: int = 0, **room: Any) -> None:
        self.server = server
        self.version = version
        self.ts = 1_000_000
        templates = room_creation_templates(version, ALICE, preset=Preset.PUBLIC_CHAT, **room)
        built = build_room(
            version,
            ALICE,
            templates,
            server_name=server.name,
            signing_key=server.key,
            origin_server_ts=self.ts,
            room_id=None if get_room_version(version).room_id_is_create_hash else "!r:hs1",
        )
        self.room_id = built.room_id
        self.events: dict[str, dict[str, Any]] = {e.event_id: dict(e.event) for e in built.events}
        self.state = built.state
        self.last = built.events[-1].event_id
        self.depth = len(built.events)
        self.mode: set[str] = set()
        self.calls: list[str] = []
        self.sent_joins: list[dict[str, Any]] = []
        self.held: list[Any] = []
        for i in range(members):
            self.add(
                self._build(f"@m{i}:hs1", "m.room.member", {"membership": "join"}, f"@m{i}:hs1")
            )

    def _build(
        self, sender: str, etype: str, content: Mapping[str, Any], state_key: str | None
    ) -> BuiltEvent:
        stub = {"type": etype, "state_key": state_key, "sender": sender, "content": content}
        return build_event(
            self.version,
            room_id=self.room_id,
            sender=sender,
            event_type=etype,
            content=content,
            state_key=state_key,
            prev_event_ids=[self.last],
            auth_event_ids=select_auth_events(self.version, stub, self.state),
            depth=self.depth + 1,
            origin_server_ts=self.ts,
            server_name=self.server.name,
            signing_key=self.server.key,
            referenced_events=self.events,
        )

    def add(self, built: BuiltEvent) -> None:
        self.events[built.event_id] = dict(built.event)
        if built.state_key is not None:
            self.state[built.state_key] = built.event_id
        self.last = built.event_id
        self.depth += 1

    def auth_chain(self, ids: list[str]) -> set[str]:
        from fedlib.storage._common import auth_ids

        seen: set[str] = set()
        todo = list(ids)
        while todo:
            for a in auth_ids(self.events[todo.pop()]):
                if a not in seen:
                    seen.add(a)
                    todo.append(a)
        return seen

    def _answer(self, value: Any) -> Any:
        if "500" in self.mode:
            return defer.fail(
                RemoteError(500, "M_UNKNOWN", "Internal server error", self.server.name)
            )
        if "slow" in self.mode:
            return defer.Deferred()
        if "truncated" in self.mode:
            return defer.fail(InvalidResponseError(self.server.name, "response body truncated"))
        return defer.succeed(value)

    def make_membership(self, user_id: str, membership: str) -> Any:
        self.calls.append(f"make_{membership}")
        content: dict[str, Any] = {"membership": membership}
        if "restricted" in self.mode:
            content["join_authorised_via_users_server"] = ALICE
        built = self._build(user_id, "m.room.member", content, user_id)
        template = {
            k: v for k, v in built.event.items() if k not in ("signatures", "hashes", "event_id")
        }
        if "wrong_template" in self.mode:
            template["sender"] = "@mallory:hs1"
        if "bad_version" in self.mode:
            return self._answer(MakeMembershipResponse(template, "999"))
        return self._answer(MakeMembershipResponse(template, self.version))


class FakeClient:
    """Routes client calls to the resident of each destination."""

    def __init__(self) -> None:
        self.residents: dict[str, Resident] = {}
        self.calls: list[tuple[str, str]] = []

    def _res(self, dest: str) -> Resident:
        self.calls.append((dest, "call"))
        if dest not in self.residents:
            raise RemoteError(404, "M_NOT_FOUND", "Unknown room", dest)
        return self.residents[dest]

    def make_join(self, dest: str, room_id: str, user_id: str, versions: Any = None) -> Any:
        return self._res(dest).make_membership(user_id, "join")

    def make_knock(self, dest: str, room_id: str, user_id: str, versions: Any = None) -> Any:
        return self._res(dest).make_membership(user_id, "knock")

    def make_leave(self, dest: str, room_id: str, user_id: str) -> Any:
        return self._res(dest).make_membership(user_id, "leave")

    def send_join(
        self,
        dest: str,
        room_id: str,
        event_id: str,
        event: Mapping[str, Any],
        *,
        room_version: str | None = None,
        omit_members: bool = False,
    ) -> Any:
        res = self._res(dest)
        res.calls.append("send_join")
        assert compute_event_id(res.version, dict(event)) == event_id
        res.sent_joins.append(dict(event))
        state_ids = dict(res.state)
        if omit_members:
            state_ids = {k: v for k, v in state_ids.items() if k[0] != "m.room.member"}
        from fedlib.storage._common import auth_ids

        join_auth = auth_ids(event)
        chain = res.auth_chain(list(state_ids.values()) + join_auth) | set(join_auth)
        state = [dict(res.events[e]) for e in state_ids.values()]
        auth_chain = [dict(res.events[e]) for e in sorted(chain)]
        returned = None
        if "restricted" in res.mode:
            returned = sign_event(res.version, event, res.server.name, res.server.key)
        bad_sig = {res.server.name: {"ed25519:k1": "A" * 86}}
        if "bad_signature" in res.mode:
            # The power levels, in both lists: the join's auth needs them.
            state = [
                dict(s, signatures=bad_sig) if s["type"] == "m.room.power_levels" else s
                for s in state
            ]
            auth_chain = [
                dict(a, signatures=bad_sig) if a["type"] == "m.room.power_levels" else a
                for a in auth_chain
            ]
        if "bad_member_signature" in res.mode:
            # A member event nothing else depends on.
            state = [
                dict(s, signatures=bad_sig) if s.get("state_key") == "@m1:hs1" else s for s in state
            ]
        if "bad_copy" in res.mode:
            # A bad copy in state of an event whose good copy is in the auth chain.
            state = [
                dict(s, signatures=bad_sig) if s["type"] == "m.room.join_rules" else s
                for s in state
            ]
        if "forged_chain" in res.mode:
            # A power-levels event, validly signed, sent by someone with no power.
            forged = res._build(
                "@mallory:hs1", "m.room.power_levels", {"users": {"@mallory:hs1": 100}}, ""
            )
            state = [s for s in state if s["type"] != "m.room.power_levels"] + [dict(forged.event)]
        if "inconsistent" in res.mode:
            # The state says the room is invite-only: the join cannot be allowed.
            jr = res._build(ALICE, "m.room.join_rules", {"join_rule": "invite"}, "")
            res.events[jr.event_id] = dict(jr.event)
            state = [s for s in state if s["type"] != "m.room.join_rules"] + [dict(jr.event)]
        if "missing_auth" in res.mode:
            auth_chain = [a for a in auth_chain if a["type"] != "m.room.power_levels"]
            state = [s for s in state if s["type"] != "m.room.power_levels"]
        if "state_lacks_pl" in res.mode:
            state = [s for s in state if s["type"] != "m.room.power_levels"]
        if "wrong_room" in res.mode:
            state.append(dict(state[0], room_id="!other:hs1"))
        if "slow_send_join" in res.mode:
            return defer.Deferred()
        if "held_send_join" in res.mode:
            answer = res._answer(
                SendJoinResponse(dest, tuple(state), tuple(auth_chain), returned, False, None)
            )
            held: defer.Deferred[Any] = defer.Deferred()
            res.held.append(lambda: answer.chainDeferred(held))
            return held
        if "garbage" in res.mode:
            return defer.succeed({"state": "nonsense"})
        return res._answer(
            SendJoinResponse(
                origin=dest,
                state=tuple(state),
                auth_chain=tuple(auth_chain),
                event=returned,
                members_omitted=omit_members,
                servers_in_room=(dest, "hs2") if omit_members else None,
            )
        )

    def send_knock(self, dest: str, room_id: str, event_id: str, event: Mapping[str, Any]) -> Any:
        res = self._res(dest)
        res.calls.append("send_knock")
        create = res.events[res.state[("m.room.create", "")]]
        return res._answer(
            (
                {
                    "type": "m.room.create",
                    "state_key": "",
                    "sender": ALICE,
                    "content": create["content"],
                },
            )
        )

    def send_leave(self, dest: str, room_id: str, event_id: str, event: Mapping[str, Any]) -> Any:
        res = self._res(dest)
        res.calls.append("send_leave")
        res.sent_joins.append(dict(event))
        return res._answer(None)

    def invite(
        self,
        dest: str,
        room_id: str,
        event_id: str,
        event: Mapping[str, Any],
        room_version: str,
        invite_room_state: Any = (),
    ) -> Any:
        res = self._res(dest)
        res.calls.append("invite")
        signed = sign_event(room_version, event, res.server.name, res.server.key)
        if "tamper_invite" in res.mode:
            signed = sign_event(
                room_version,
                dict(event, content={"membership": "invite", "x": 1}),
                res.server.name,
                res.server.key,
            )
        if "bad_invite_sig" in res.mode:
            signed["signatures"][res.server.name] = {"ed25519:k1": "A" * 86}
        return res._answer(signed)

    def get_state_ids(self, dest: str, room_id: str, event_id: str) -> Any:
        res = self._res(dest)
        state = {k: v for k, v in res.state.items() if k != ("m.room.member", BOB)}
        if "resync_lies" in res.mode:
            state = {k: v for k, v in state.items() if k[0] != "m.room.create"}
        chain = res.auth_chain(list(state.values()))
        return res._answer(StateIdsResponse(tuple(state.values()), tuple(chain)))

    def get_state(self, dest: str, room_id: str, event_id: str, **kw: Any) -> Any:
        res = self._res(dest)
        state = {k: v for k, v in res.state.items() if k != ("m.room.member", BOB)}
        chain = res.auth_chain(list(state.values())) - set(state.values())
        return res._answer(
            StateResponse(
                tuple(res.events[e] for e in state.values()),
                tuple(res.events[e] for e in chain),
            )
        )

    def get_event(self, dest: str, event_id: str, **kw: Any) -> Any:
        res = self._res(dest)
        if event_id not in res.events:
            return defer.fail(RemoteError(404, "M_NOT_FOUND", "no", dest))
        return res._answer(dict(res.events[event_id]))

    def query_directory(self, dest: str, alias: str) -> Any:
        from fedlib.client.transport import DirectoryResponse

        res = self._res(dest)
        return defer.succeed(DirectoryResponse(res.room_id, ("hs1",)))


def _result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    return out[0]


class HandshakeTestBase(unittest.TestCase):
    version = "10"

    def setUp(self) -> None:
        self.hs1 = Server("hs1")
        self.hs2 = Server("hs2")
        self.us = Server(US)
        self.keyring = FakeKeyring(self.hs1, self.hs2, self.us)
        self.store = MemoryStore()
        self.client = FakeClient()
        self.clock = task.Clock()
        self.joined: list[tuple[str, str, Any]] = []
        outer = self

        class Hooks:
            def on_room_joined(self, room_id: str, room_version: str, state: Any) -> None:
                outer.joined.append((room_id, room_version, state))

        self.handshakes = Handshakes(
            server_name=US,
            signing_key=self.us.key,
            client=self.client,
            store=self.store,
            keyring=self.keyring,
            clock=self.clock,
            hooks=Hooks(),
            gaps=GapFiller(self.client, self.store, self.keyring, self.clock, GapConfig(timeout=5)),
            config=HandshakeConfig(request_timeout=10, send_join_timeout=20, resync_retry_delay=1),
        )

    def resident(self, name: str = "hs1", members: int = 0, **kw: Any) -> Resident:
        server = self.hs1 if name == "hs1" else self.hs2
        res = Resident(server, self.version, members=members, **kw)
        self.client.residents[name] = res
        return res

    def assertNothingStored(self, room_id: str) -> None:
        self.assertIsNone(_result(self.store.get_room(room_id)))
        self.assertEqual(_result(self.store.get_current_state(room_id)), {})

    def join_fails(self, res: Resident, *text: str, **kw: Any) -> HandshakeError:
        failure = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1"], **kw))
        self.assertTrue(hasattr(failure, "value"), f"join did not fail: {failure!r}")
        self.assertIsInstance(failure.value, HandshakeError)
        for t in text:
            self.assertIn(t, failure.value.msg)
        self.assertNothingStored(res.room_id)
        return failure.value  # type: ignore[no-any-return]


class JoinTests(HandshakeTestBase):
    def test_join(self) -> None:
        res = self.resident(members=3)
        result = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1"]))
        self.assertIsInstance(result, JoinResult, str(result))
        self.assertEqual(result.via, "hs1")
        self.assertFalse(result.partial_state)
        self.assertEqual(dict(result.state_before), res.state)
        # What we sent is signed by us, with our origin, and passes verification.
        sent = res.sent_joins[0]
        self.assertEqual(sent["origin"], US)
        self.assertIn(US, sent["signatures"])
        self.assertEqual(compute_event_id(self.version, sent), result.event_id)
        current = _result(self.store.get_current_state(res.room_id))
        self.assertEqual(current[("m.room.member", BOB)], result.event_id)
        self.assertEqual(
            current[("m.room.member", "@m2:hs1")], res.state[("m.room.member", "@m2:hs1")]
        )
        self.assertEqual(_result(self.store.get_joined_servers(res.room_id)), {"hs1", US})
        self.assertEqual(_result(self.store.get_state_before(result.event_id)), res.state)
        self.assertFalse(_result(self.store.is_partial_state(res.room_id)))
        self.assertEqual(self.joined[0][0], res.room_id)
        self.assertEqual(self.joined[0][2][("m.room.member", BOB)], result.event_id)

    def test_join_by_alias(self) -> None:
        res = self.resident()
        result = _result(self.handshakes.join_room("#room:hs1", BOB))
        self.assertIsInstance(result, JoinResult, str(result))
        self.assertEqual(result.room_id, res.room_id)

    def test_tries_servers_in_order(self) -> None:
        res = self.resident("hs1")
        res.mode.add("500")
        good = Resident(self.hs2, self.version)
        # The same room on hs2 (same events, different helper).
        good.room_id, good.events, good.state, good.last = (
            res.room_id,
            res.events,
            dict(res.state),
            res.last,
        )
        self.client.residents["hs2"] = good
        result = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1", "hs2"]))
        self.assertIsInstance(result, JoinResult, str(result))
        self.assertEqual(result.via, "hs2")

    def test_all_fail_names_each_server(self) -> None:
        res = self.resident("hs1")
        res.mode.add("500")
        failure = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1", "nowhere"]))
        err = failure.value
        self.assertIsInstance(err, HandshakeError)
        self.assertEqual(set(err.failures), {"hs1", "nowhere"})
        self.assertIn("hs1", err.msg)
        self.assertIn("nowhere", err.msg)
        self.assertNothingStored(res.room_id)

    def test_500(self) -> None:
        res = self.resident()
        res.mode.add("500")
        err = self.join_fails(res, "hs1", "Internal server error")
        self.assertEqual(err.code, 500)

    def test_slow_make_join_times_out(self) -> None:
        res = self.resident()
        res.mode.add("slow")
        d = self.handshakes.join_room(res.room_id, BOB, ["hs1"])
        self.assertFalse(d.called)
        self.clock.advance(10)
        failure = _result(d)
        self.assertIsInstance(failure.value, HandshakeError)
        self.assertIn("make_join timed out", failure.value.msg)
        self.assertEqual(failure.value.code, 504)
        self.assertNothingStored(res.room_id)

    def test_slow_send_join_times_out(self) -> None:
        res = self.resident()
        res.mode.add("slow_send_join")
        d = self.handshakes.join_room(res.room_id, BOB, ["hs1"])
        self.clock.advance(19)
        self.assertFalse(d.called)
        self.clock.advance(1)
        failure = _result(d)
        self.assertIn("send_join timed out", failure.value.msg)
        self.assertNothingStored(res.room_id)

    def test_garbage_answer(self) -> None:
        res = self.resident()
        res.mode.add("garbage")
        err = self.join_fails(res, "hs1")
        self.assertEqual(err.code, 502)

    def test_truncated(self) -> None:
        res = self.resident()
        res.mode.add("truncated")
        self.join_fails(res, "truncated")

    def test_bad_signature_on_needed_event(self) -> None:
        res = self.resident(members=2)
        res.mode.add("bad_signature")
        self.join_fails(res, "inconsistent send_join answer", "missing")

    def test_bad_signature_on_member_is_dropped(self) -> None:
        res = self.resident(members=2)
        res.mode.add("bad_member_signature")
        result = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1"]))
        self.assertIsInstance(result, JoinResult, str(result))
        bad_id = res.state[("m.room.member", "@m1:hs1")]
        self.assertNotIn(("m.room.member", "@m1:hs1"), result.state_before)
        self.assertEqual(_result(self.store.have_seen([bad_id])), set())
        current = _result(self.store.get_current_state(res.room_id))
        self.assertNotIn(("m.room.member", "@m1:hs1"), current)

    def test_bad_copy_replaced_by_good_copy(self) -> None:
        res = self.resident()
        res.mode.add("bad_copy")
        result = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1"]))
        self.assertIsInstance(result, JoinResult, str(result))
        jr_id = res.state[("m.room.join_rules", "")]
        self.assertEqual(result.state_before[("m.room.join_rules", "")], jr_id)
        stored = _result(self.store.get_events([jr_id]))[jr_id]
        self.assertEqual(stored.event["signatures"], res.events[jr_id]["signatures"])

    def test_everything_forged(self) -> None:
        res = self.resident(members=3)
        self.keyring.keys["hs1"] = {}  # no key of hs1 is known: nothing verifies
        self.join_fails(res, "fail verification")

    def test_forged_auth_chain(self) -> None:
        res = self.resident()
        res.mode.add("forged_chain")
        self.join_fails(res, "inconsistent send_join answer", "auth rules")

    def test_state_inconsistent_with_join(self) -> None:
        res = self.resident()
        res.mode.add("inconsistent")
        self.join_fails(res, "against the state")

    def test_missing_auth_events(self) -> None:
        res = self.resident()
        res.mode.add("missing_auth")
        self.join_fails(res, "missing")

    def test_state_lacking_join_auth_event(self) -> None:
        res = self.resident()
        res.mode.add("state_lacks_pl")
        self.join_fails(res, "state lacks")

    def test_event_of_other_room_is_dropped(self) -> None:
        res = self.resident()
        res.mode.add("wrong_room")
        result = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1"]))
        self.assertIsInstance(result, JoinResult, str(result))
        events = _result(self.store.get_events(list(result.state_before.values())))
        self.assertTrue(
            all(e.event.get("room_id", res.room_id) == res.room_id for e in events.values())
        )
        self.assertEqual(len(events), len(result.state_before))

    def test_bad_template(self) -> None:
        res = self.resident()
        res.mode.add("wrong_template")
        self.join_fails(res, "sender")
        self.assertNotIn("send_join", res.calls)

    def test_unsupported_version(self) -> None:
        res = self.resident()
        res.mode.add("bad_version")
        err = self.join_fails(res, "999")
        self.assertEqual(err.errcode, "M_INCOMPATIBLE_ROOM_VERSION")

    def test_joins_of_one_room_are_serialised(self) -> None:
        res = self.resident()
        res.mode.add("held_send_join")
        first = self.handshakes.join_room(res.room_id, BOB, ["hs1"])
        second = self.handshakes.join_room(res.room_id, "@dave:us", ["hs1"])
        self.assertEqual(res.calls.count("make_join"), 1)
        res.held.pop(0)()
        self.assertIsInstance(_result(first), JoinResult)
        self.assertEqual(res.calls.count("make_join"), 2)
        res.held.pop(0)()
        self.assertIsInstance(_result(second), JoinResult)
        self.assertEqual(self.handshakes._join_locks, {})

    def test_remote_user_refused(self) -> None:
        res = self.resident()
        failure = _result(self.handshakes.join_room(res.room_id, "@x:elsewhere", ["hs1"]))
        self.assertIsInstance(failure.value, MatrixError)
        self.assertEqual(res.calls, [])


class RestrictedJoinTests(HandshakeTestBase):
    def test_restricted_join_keeps_authoriser_signature(self) -> None:
        res = self.resident()
        res.mode.add("restricted")
        result = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1"]))
        self.assertIsInstance(result, JoinResult, str(result))
        self.assertIn("hs1", result.event["signatures"])
        self.assertIn(US, result.event["signatures"])
        stored = _result(self.store.get_events([result.event_id]))[result.event_id]
        self.assertIn("hs1", stored.event["signatures"])

    def test_restricted_join_with_bad_authoriser_signature(self) -> None:
        res = self.resident()
        res.mode.add("restricted")
        orig = self.client.send_join

        def tamper(*a: Any, **kw: Any) -> Any:
            d = orig(*a, **kw)

            def bad(resp: SendJoinResponse) -> SendJoinResponse:
                ev = dict(resp.event or {})
                ev["signatures"] = {**ev["signatures"], "hs1": {"ed25519:k1": "A" * 86}}
                import attrs

                return attrs.evolve(resp, event=ev)

            return d.addCallback(bad)

        self.client.send_join = tamper  # type: ignore[method-assign]
        self.join_fails(res)


class V12JoinTests(JoinTests):
    version = "12"


class V1JoinTests(HandshakeTestBase):
    version = "1"

    def test_join_v1(self) -> None:
        res = self.resident(members=2)
        result = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1"]))
        self.assertIsInstance(result, JoinResult, str(result))
        self.assertTrue(result.event_id.endswith(":" + US))


class PartialStateTests(HandshakeTestBase):
    def test_partial_join_then_full_state(self) -> None:
        res = self.resident(members=5)
        self.client.residents["hs2"] = res
        result = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1"], omit_members=True))
        self.assertIsInstance(result, JoinResult, str(result))
        self.assertTrue(result.partial_state)
        self.assertNotIn(("m.room.member", "@m0:hs1"), result.state_before)
        # The fake answers at once, so the background fetch has already completed.
        _result(self.handshakes.wait_for_full_state(res.room_id))
        self.assertFalse(_result(self.store.is_partial_state(res.room_id)))
        current = _result(self.store.get_current_state(res.room_id))
        for i in range(5):
            self.assertIn(("m.room.member", f"@m{i}:hs1"), current)
        self.assertEqual(current[("m.room.member", BOB)], result.event_id)

    def test_partial_join_of_big_room_fetches_state_in_bulk(self) -> None:
        res = self.resident(members=120)
        calls: list[str] = []
        orig_get_state, orig_get_event = self.client.get_state, self.client.get_event

        def get_state(*a: Any, **kw: Any) -> Any:
            calls.append("state")
            return orig_get_state(*a, **kw)

        def get_event(*a: Any, **kw: Any) -> Any:
            calls.append("event")
            return orig_get_event(*a, **kw)

        self.client.get_state = get_state  # type: ignore[method-assign]
        self.client.get_event = get_event  # type: ignore[method-assign]
        result = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1"], omit_members=True))
        self.assertTrue(result.partial_state)
        self.assertEqual(calls, ["state"])
        self.assertFalse(_result(self.store.is_partial_state(res.room_id)))
        self.assertEqual(len(_result(self.store.get_joined_members(res.room_id))), 122)

    def test_partial_state_stays_when_resync_lies(self) -> None:
        res = self.resident(members=3)
        self.client.residents["hs2"] = res
        res.mode.add("resync_lies")
        result = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1"], omit_members=True))
        self.assertTrue(result.partial_state)
        waiter = self.handshakes.wait_for_full_state(res.room_id)
        self.assertFalse(waiter.called)
        self.assertTrue(_result(self.store.is_partial_state(res.room_id)))
        for _ in range(10):
            self.clock.advance(100)
        self.assertTrue(waiter.called)
        self.assertTrue(_result(self.store.is_partial_state(res.room_id)))
        current = _result(self.store.get_current_state(res.room_id))
        self.assertNotIn(("m.room.member", "@m0:hs1"), current)


class KnockLeaveInviteTests(HandshakeTestBase):
    def test_knock_stores_stripped_state(self) -> None:
        res = self.resident()
        result = _result(self.handshakes.knock_room(res.room_id, BOB, ["hs1"], reason="hi"))
        self.assertEqual(result.event["content"], {"membership": "knock", "reason": "hi"})
        stored = _result(self.store.get_stripped_room(StrippedKind.KNOCK, res.room_id, BOB))
        self.assertEqual(stored.stripped_state[0]["type"], "m.room.create")
        self.assertIsNone(_result(self.store.get_room(res.room_id)))

    def test_join_completes_knock(self) -> None:
        res = self.resident()
        _result(self.handshakes.knock_room(res.room_id, BOB, ["hs1"]))
        result = _result(self.handshakes.join_room(res.room_id, BOB, ["hs1"]))
        self.assertIsInstance(result, JoinResult, str(result))
        self.assertIsNone(
            _result(self.store.get_stripped_room(StrippedKind.KNOCK, res.room_id, BOB))
        )

    def test_knock_failure(self) -> None:
        res = self.resident()
        res.mode.add("500")
        failure = _result(self.handshakes.knock_room(res.room_id, BOB, ["hs1"]))
        self.assertIsInstance(failure.value, HandshakeError)
        self.assertIsNone(
            _result(self.store.get_stripped_room(StrippedKind.KNOCK, res.room_id, BOB))
        )

    def test_reject_invite_uses_inviter_server(self) -> None:
        res = self.resident()
        self._store_invite(res)
        event_id = _result(self.handshakes.reject_invite(res.room_id, BOB))
        self.assertIsInstance(event_id, str, str(event_id))
        self.assertIn("send_leave", res.calls)
        self.assertEqual(res.sent_joins[-1]["content"]["membership"], "leave")
        self.assertIsNone(
            _result(self.store.get_stripped_room(StrippedKind.INVITE, res.room_id, BOB))
        )

    def test_leave_failure_keeps_invite(self) -> None:
        res = self.resident()
        self._store_invite(res)
        res.mode.add("truncated")
        failure = _result(self.handshakes.leave_room(res.room_id, BOB, ["hs1"]))
        self.assertIsInstance(failure.value, HandshakeError)
        self.assertIsNotNone(
            _result(self.store.get_stripped_room(StrippedKind.INVITE, res.room_id, BOB))
        )

    def _store_invite(self, res: Resident) -> None:
        """Keep an invite of BOB from ALICE to ``res``'s room, as ``/invite`` would."""
        invite = {
            "type": "m.room.member",
            "sender": ALICE,
            "state_key": BOB,
            "content": {"membership": "invite"},
        }
        _result(
            self.store.store_stripped_room(
                StrippedRoom(StrippedKind.INVITE, res.room_id, BOB, self.version, invite, ())
            )
        )

    def _invite_event(self, res: Resident) -> dict[str, Any]:
        built = build_event(
            self.version,
            room_id=res.room_id,
            sender=BOB,
            event_type="m.room.member",
            content={"membership": "invite"},
            state_key="@carol:hs2",
            prev_event_ids=[],
            auth_event_ids=[],
            depth=5,
            origin_server_ts=1000,
            server_name=US,
            signing_key=self.us.key,
        )
        return dict(built.event)

    def test_remote_invite_checks_signature(self) -> None:
        res = self.resident()
        self.client.residents["hs2"] = res
        res.server = self.hs2
        event = self._invite_event(res)
        signed = _result(self.handshakes.remote_invite("hs2", self.version, event, []))
        self.assertIsInstance(signed, dict, str(signed))
        self.assertEqual(set(signed["signatures"]), {US, "hs2"})
        res.mode.add("bad_invite_sig")
        failure = _result(self.handshakes.remote_invite("hs2", self.version, event, []))
        self.assertIsInstance(failure.value, MatrixError)

    def test_remote_invite_refuses_altered_event(self) -> None:
        res = self.resident()
        self.client.residents["hs2"] = res
        res.server = self.hs2
        res.mode.add("tamper_invite")
        failure = _result(
            self.handshakes.remote_invite("hs2", self.version, self._invite_event(res), [])
        )
        self.assertIsInstance(failure.value, MatrixError)
        self.assertIn("not the one we sent", failure.value.msg)
