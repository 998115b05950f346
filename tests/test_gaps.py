"""Tests for fedlib.client.gaps: fetching missing events, state and history."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from fedlib.client.gaps import GapConfig, GapFiller, StateAtEvent
from fedlib.client.transport import RemoteError, StateIdsResponse, StateResponse
from fedlib.errors import MatrixError
from fedlib.storage.interface import EventStatus, PersistItem
from fedlib.storage.memory import MemoryStore
from tests.handshake_fakes import FakeKeyring, Server, make_event

ROOM = "!room:hs1"
V = "10"


class FakeClient:
    """The FederationClient methods gap filling uses, over a dict of events."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.fail_with: MatrixError | None = None
        self.hang = False
        self.missing_answer: list[dict[str, Any]] = []
        self.backfill_answer: list[dict[str, Any]] = []
        self.state_ids: StateIdsResponse | None = None
        self.auth_chain: list[dict[str, Any]] = []
        self.substitutions: dict[str, str] = {}

    def _answer(self, value: Any) -> defer.Deferred[Any]:
        if self.fail_with is not None:
            return defer.fail(self.fail_with)
        if self.hang:
            return defer.Deferred()
        return defer.succeed(value)

    def get_missing_events(self, dest: str, room_id: str, *a: Any, **kw: Any) -> Any:
        self.calls.append(("get_missing_events", kw))
        return self._answer(tuple(self.missing_answer))

    def get_event(self, dest: str, event_id: str, **kw: Any) -> Any:
        self.calls.append(("get_event", event_id))
        event_id = self.substitutions.get(event_id, event_id)
        if event_id not in self.events:
            return defer.fail(RemoteError(404, "M_NOT_FOUND", "no such event", dest))
        return self._answer(self.events[event_id])

    def get_state_ids(self, dest: str, room_id: str, event_id: str) -> Any:
        self.calls.append(("get_state_ids", event_id))
        return self._answer(self.state_ids)

    def get_state(self, dest: str, room_id: str, event_id: str, **kw: Any) -> Any:
        self.calls.append(("get_state", event_id))
        assert self.state_ids is not None
        ids = list(self.state_ids.pdu_ids)
        chain = [e for e in self.state_ids.auth_chain_ids if e not in ids]
        return self._answer(
            StateResponse(
                tuple(self.events[e] for e in ids if e in self.events),
                tuple(self.events[e] for e in chain if e in self.events),
            )
        )

    def get_event_auth(self, dest: str, room_id: str, event_id: str, **kw: Any) -> Any:
        self.calls.append(("get_event_auth", event_id))
        return self._answer(tuple(self.auth_chain))

    def backfill(self, dest: str, room_id: str, event_ids: Any, limit: int, **kw: Any) -> Any:
        self.calls.append(("backfill", (list(event_ids), limit)))
        return self._answer(tuple(self.backfill_answer))


def _result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    return out[0]


class GapTestBase(unittest.TestCase):
    def setUp(self) -> None:
        self.hs1 = Server("hs1")
        self.hs2 = Server("hs2")
        self.evil = Server("evil")
        self.keyring = FakeKeyring(self.hs1, self.hs2, self.evil)
        self.store = MemoryStore()
        _result(self.store.store_room(ROOM, V))
        self.client = FakeClient()
        self.clock = task.Clock()
        self.filler = GapFiller(
            self.client,
            self.store,
            self.keyring,
            clock=self.clock,
            config=GapConfig(timeout=5.0, fetch_concurrency=2),
        )

    def ev(
        self, depth: int = 1, server: Server | None = None, **kw: Any
    ) -> tuple[str, dict[str, Any]]:
        server = server or self.hs1
        kw.setdefault("type", "m.room.message")
        kw.setdefault("sender", f"@u:{server.name}")
        return make_event(V, server, room_id=ROOM, depth=depth, **kw)

    def store_outlier(self, event_id: str, event: dict[str, Any]) -> None:
        item = PersistItem(event=event, event_id=event_id, status=EventStatus.OUTLIER)
        _result(self.store.persist_events(ROOM, [item]))

    def assertMatrixError(self, d: defer.Deferred[Any], text: str = "") -> MatrixError:
        result = _result(d)
        self.assertTrue(hasattr(result, "value"), f"expected a failure, got {result!r}")
        self.assertIsInstance(result.value, MatrixError)
        self.assertIn(text, result.value.msg)
        return result.value  # type: ignore[no-any-return]


class MissingEventsTests(GapTestBase):
    def test_returns_verified_oldest_first(self) -> None:
        chain = [self.ev(depth=d) for d in (3, 1, 2)]
        known_id, known = self.ev(depth=0)
        self.store_outlier(known_id, known)
        self.client.missing_answer = [e for _, e in chain] + [known]
        got = _result(
            self.filler.fetch_missing_prev_events("hs1", ROOM, {}, "$latest", min_depth=0, limit=10)
        )
        self.assertEqual([r.event["depth"] for r in got], [1, 2, 3])
        self.assertNotIn(known_id, [r.event_id for r in got])
        _, kw = self.client.calls[0]
        self.assertEqual(kw["latest_events"], ["$latest"])
        self.assertEqual(kw["limit"], 10)

    def test_forged_and_foreign_events_dropped(self) -> None:
        good_id, good = self.ev()
        _, forged = self.ev(server=self.evil, sender="@u:hs1")  # signed by the wrong server
        _, foreign = make_event(
            V, self.hs1, type="m.room.message", sender="@u:hs1", room_id="!x:hs1"
        )
        self.client.missing_answer = [good, forged, foreign, {"not": "an event"}]
        got = _result(self.filler.fetch_missing_prev_events("hs1", ROOM, {}, "$l"))
        self.assertEqual([r.event_id for r in got], [good_id])

    def test_limit_caps_remote_answer(self) -> None:
        self.client.missing_answer = [self.ev(depth=d)[1] for d in range(30)]
        got = _result(self.filler.fetch_missing_prev_events("hs1", ROOM, {}, "$l", limit=5))
        self.assertEqual(len(got), 5)

    def test_remote_error_names_server(self) -> None:
        self.client.fail_with = RemoteError(500, "M_UNKNOWN", "Internal error", "hs1")
        e = self.assertMatrixError(
            self.filler.fetch_missing_prev_events("hs1", ROOM, {}, "$l"), "hs1"
        )
        self.assertIn("get_missing_events", e.msg)

    def test_slow_remote_times_out(self) -> None:
        self.client.hang = True
        d = self.filler.fetch_missing_prev_events("hs1", ROOM, {}, "$l")
        self.assertFalse(d.called)
        self.clock.advance(5)
        self.assertMatrixError(d, "timed out")

    def test_unknown_room(self) -> None:
        self.assertMatrixError(self.filler.fetch_missing_prev_events("hs1", "!nope:x", {}, "$l"))


class FetchEventsTests(GapTestBase):
    def test_fetch_verifies_and_checks_ids(self) -> None:
        a_id, a = self.ev(depth=1)
        b_id, b = self.ev(depth=2)
        _, bad = self.ev(depth=3)
        bad_id = "$bad"
        self.client.events = {a_id: a, b_id: b, bad_id: dict(bad, signatures={})}
        # Asked for "$swap", the server answers with event a.
        self.client.substitutions = {"$swap": a_id}
        got = _result(self.filler.fetch_events("hs1", ROOM, [a_id, b_id, bad_id, "$swap", "$gone"]))
        self.assertEqual(sorted(got), sorted([a_id, b_id]))

    def test_too_many_refused(self) -> None:
        filler = GapFiller(
            self.client,
            self.store,
            self.keyring,
            clock=self.clock,
            config=GapConfig(max_event_fetches=3),
        )
        self.assertMatrixError(filler.fetch_events("hs1", ROOM, ["$1", "$2", "$3", "$4"]))
        self.assertEqual(self.client.calls, [])

    def test_bounded_concurrency_and_overall_timeout(self) -> None:
        self.client.hang = True
        self.client.events = {f"$e{i}": {} for i in range(10)}
        d = self.filler.fetch_events("hs1", ROOM, [f"$e{i}" for i in range(10)])
        self.assertEqual(len(self.client.calls), 2)  # fetch_concurrency
        self.clock.advance(20)
        self.assertMatrixError(d, "timed out")

    def test_auth_chain(self) -> None:
        a_id, a = self.ev(depth=1, type="m.room.create", state_key="")
        _, forged = self.ev(server=self.evil, sender="@u:hs1")
        self.client.auth_chain = [a, forged]
        got = _result(self.filler.fetch_auth_chain("hs1", ROOM, "$x"))
        self.assertEqual(list(got), [a_id])


class StateAtTests(GapTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.create_id, self.create = self.ev(depth=1, type="m.room.create", state_key="")
        self.member_id, self.member = self.ev(
            depth=2, type="m.room.member", state_key="@u:hs1", content={"membership": "join"}
        )
        self.name_id, self.name = self.ev(
            depth=3, type="m.room.name", state_key="", content={"name": "n"}
        )
        self.client.events = {
            self.create_id: self.create,
            self.member_id: self.member,
            self.name_id: self.name,
        }

    def test_fetches_only_missing(self) -> None:
        self.store_outlier(self.create_id, self.create)
        self.client.state_ids = StateIdsResponse(
            pdu_ids=(self.create_id, self.member_id, self.name_id),
            auth_chain_ids=(self.create_id, self.member_id),
        )
        got = _result(self.filler.fetch_state_at("hs1", ROOM, "$at"))
        self.assertIsInstance(got, StateAtEvent)
        self.assertEqual(
            dict(got.state),
            {
                ("m.room.create", ""): self.create_id,
                ("m.room.member", "@u:hs1"): self.member_id,
                ("m.room.name", ""): self.name_id,
            },
        )
        fetched = sorted(arg for kind, arg in self.client.calls if kind == "get_event")
        self.assertEqual(fetched, sorted([self.member_id, self.name_id]))
        self.assertEqual(set(got.events), {self.member_id, self.name_id})

    def test_many_missing_use_one_state_request(self) -> None:
        filler = GapFiller(
            self.client,
            self.store,
            self.keyring,
            clock=self.clock,
            config=GapConfig(bulk_state_threshold=1),
        )
        self.client.state_ids = StateIdsResponse(
            pdu_ids=(self.create_id, self.member_id, self.name_id), auth_chain_ids=(self.create_id,)
        )
        got = _result(filler.fetch_state_at("hs1", ROOM, "$at"))
        self.assertEqual(len(got.state), 3)
        self.assertEqual([k for k, _ in self.client.calls], ["get_state_ids", "get_state"])
        # A forged event in the /state answer is not taken.
        self.client.events[self.name_id] = dict(self.name, signatures={})
        self.client.calls.clear()
        self.assertMatrixError(filler.fetch_state_at("hs1", ROOM, "$at"), "could not obtain")

    def test_unobtainable_state_event_fails(self) -> None:
        self.client.state_ids = StateIdsResponse(
            pdu_ids=(self.create_id, "$gone"), auth_chain_ids=()
        )
        self.assertMatrixError(self.filler.fetch_state_at("hs1", ROOM, "$at"), "could not obtain")

    def test_forged_state_event_fails(self) -> None:
        self.client.events[self.name_id] = dict(
            self.name, signatures={"hs1": {"ed25519:k1": "AAAA"}}
        )
        self.client.state_ids = StateIdsResponse(pdu_ids=(self.name_id,), auth_chain_ids=())
        self.assertMatrixError(self.filler.fetch_state_at("hs1", ROOM, "$at"))

    def test_non_state_event_in_state_fails(self) -> None:
        msg_id, msg = self.ev(depth=4)
        self.client.events[msg_id] = msg
        self.client.state_ids = StateIdsResponse(pdu_ids=(msg_id,), auth_chain_ids=())
        self.assertMatrixError(self.filler.fetch_state_at("hs1", ROOM, "$at"), "not a state event")

    def test_duplicate_keys_fail(self) -> None:
        other_id, other = self.ev(depth=5, type="m.room.name", state_key="", content={"name": "m"})
        self.client.events[other_id] = other
        self.client.state_ids = StateIdsResponse(
            pdu_ids=(self.name_id, other_id), auth_chain_ids=()
        )
        self.assertMatrixError(self.filler.fetch_state_at("hs1", ROOM, "$at"), "two state events")

    def test_too_many_ids(self) -> None:
        filler = GapFiller(
            self.client,
            self.store,
            self.keyring,
            clock=self.clock,
            config=GapConfig(max_state_ids=2),
        )
        self.client.state_ids = StateIdsResponse(pdu_ids=("$1", "$2", "$3"), auth_chain_ids=())
        self.assertMatrixError(filler.fetch_state_at("hs1", ROOM, "$at"))
        self.assertEqual([k for k, _ in self.client.calls], ["get_state_ids"])

    def test_truncated_answer(self) -> None:
        self.client.state_ids = None  # e.g. a body the client could not parse into a record
        self.assertMatrixError(self.filler.fetch_state_at("hs1", ROOM, "$at"))


class BackfillTests(GapTestBase):
    def test_backfill_limit_and_verification(self) -> None:
        events = [self.ev(depth=d) for d in range(10)]
        _, forged = self.ev(server=self.evil, sender="@u:hs1", depth=99)
        self.client.backfill_answer = [forged] + [e for _, e in events]
        got = _result(self.filler.backfill("hs1", ROOM, ["$from"], limit=6))
        # The forged one used a slot of the limit and was dropped.
        self.assertEqual([r.event["depth"] for r in got], [4, 3, 2, 1, 0])
        self.assertEqual(self.client.calls, [("backfill", (["$from"], 6))])

    def test_backfill_nothing_to_do(self) -> None:
        self.assertEqual(_result(self.filler.backfill("hs1", ROOM, [], 10)), [])
        self.assertEqual(self.client.calls, [])
