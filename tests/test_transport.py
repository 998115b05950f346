"""FederationClient and MatrixFederationAgent: real TLS on 127.0.0.1 with a test CA,
plus a fake agent and a fake clock for timing, retries and backoff."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.ssl import PrivateCertificate
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from fedlib.canonical import decode_json
from fedlib.client.transport import (
    FederationClient,
    FederationRequestError,
    InvalidResponseError,
    NotRetryingDestinationError,
    RemoteError,
    RequestTimeoutError,
)
from fedlib.crypto.keys import generate_signing_key, get_verify_key
from fedlib.crypto.request_auth import parse_authorization, verify_request
from fedlib.errors import MatrixError
from tests.transport_helpers import ScriptedServer, TestCA

ORIGIN = "origin.test"
KEY = generate_signing_key("t1")


class TLSTestBase(unittest.TestCase):
    """A scripted TLS server whose certificate names fed.test and 127.0.0.1."""

    dns_names = ["fed.test"]
    ips = ["127.0.0.1"]

    def setUp(self) -> None:
        self.ca = TestCA()
        self.addCleanup(self.ca.cleanup)
        self.server = ScriptedServer(self.ca.issue(self.dns_names, self.ips))
        self.addCleanup(self.server.stop)
        self.port = self.server.port_number
        self.client = self.make_client()

    def make_client(self, **kwargs: Any) -> FederationClient:
        options: dict[str, Any] = dict(
            ca_bundle=self.ca.path, host_overrides={"fed.test": "127.0.0.1"}, get_retries=0
        )
        options.update(kwargs)
        the_reactor = options.pop("reactor", reactor)
        client = FederationClient(ORIGIN, KEY, the_reactor, **options)
        self.addCleanup(client.close_connections)
        return client

    @property
    def ip_dest(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dns_dest(self) -> str:
        return f"fed.test:{self.port}"


VERSION = {"server": {"name": "scripted", "version": "0.1"}}


class TLSTests(TLSTestBase):
    async def test_ip_literal(self) -> None:
        self.server.route("/_matrix/federation/v1/version", lambda r: VERSION)
        self.assertEqual(await self.client.version(self.ip_dest), VERSION["server"])
        self.assertEqual(self.server.requests[0]["host"], self.ip_dest)

    async def test_dns_name_sni_and_host(self) -> None:
        seen: list[Any] = []

        def handler(request: Any) -> Any:
            seen.append(request.channel.transport.getHandle().get_servername())
            return VERSION

        self.server.route("/_matrix/federation/v1/version", handler)
        await self.client.version(self.dns_dest)
        self.assertEqual(seen, [b"fed.test"])
        self.assertEqual(self.server.requests[0]["host"], self.dns_dest)

    async def test_connection_reused(self) -> None:
        peers: list[int] = []

        def handler(request: Any) -> Any:
            peers.append(request.getClientAddress().port)
            return VERSION

        self.server.route("/_matrix/federation/v1/version", handler)
        for _ in range(3):
            await self.client.version(self.ip_dest)
        self.assertEqual(len(peers), 3)
        self.assertEqual(len(set(peers)), 1, "the pool should reuse one connection")

    async def test_wrong_name_fails(self) -> None:
        self.server.route("/_matrix/federation/v1/version", lambda r: VERSION)
        client = self.make_client(host_overrides={"other.test": "127.0.0.1"})
        with self.assertRaises(FederationRequestError) as cm:
            await client.version(f"other.test:{self.port}")
        self.assertEqual(cm.exception.code, 502)
        self.assertEqual(self.server.requests, [])

    async def test_untrusted_ca_fails_unless_verification_off(self) -> None:
        self.server.route("/_matrix/federation/v1/version", lambda r: VERSION)
        other = TestCA()
        self.addCleanup(other.cleanup)
        client = self.make_client(ca_bundle=other.path)
        with self.assertRaises(FederationRequestError):
            await client.version(self.ip_dest)
        insecure = self.make_client(verify_tls=False, ca_bundle=None)
        self.assertEqual(await insecure.version(self.dns_dest), VERSION["server"])

    async def test_signed_requests_verify(self) -> None:
        def make_join(request: Any) -> Any:
            return {"event": {"type": "m.room.member"}, "room_version": "10"}

        def send_join(request: Any) -> Any:
            return {
                "origin": "x",
                "state": [],
                "auth_chain": [],
                "members_omitted": True,
                "servers_in_room": ["x"],
            }

        self.server.route("/_matrix/federation/v1/make_join/", make_join)
        self.server.route("/_matrix/federation/v2/send_join/", send_join)
        made = await self.client.make_join(self.ip_dest, "!room:x", "@u:origin.test", ["10", "11"])
        self.assertEqual(made.room_version, "10")
        event = {"type": "m.room.member", "content": {"membership": "join"}}
        joined = await self.client.send_join(
            self.ip_dest, "!room:x", "$ev/id", event, omit_members=True
        )
        self.assertTrue(joined.members_omitted)
        self.assertEqual(joined.servers_in_room, ("x",))
        get, put = self.server.requests
        self.assertEqual(
            get["uri"],
            "/_matrix/federation/v1/make_join/%21room%3Ax/%40u%3Aorigin.test?ver=10&ver=11",
        )
        self.assertEqual(
            put["uri"], "/_matrix/federation/v2/send_join/%21room%3Ax/%24ev%2Fid?omit_members=true"
        )
        for req, content in ((get, None), (put, event)):
            auth = parse_authorization(req["authorization"])
            self.assertEqual((auth.origin, auth.destination), (ORIGIN, self.ip_dest))
            verify_request(
                auth, req["method"], req["uri"], self.ip_dest, get_verify_key(KEY), content
            )
        self.assertEqual(decode_json(put["body"]), event)

    async def test_remote_errors(self) -> None:
        self.server.route(
            "/_matrix/federation/v1/query/profile",
            lambda r: (403, {"errcode": "M_FORBIDDEN", "error": "no"}),
        )
        self.server.route("/_matrix/federation/v1/event/", lambda r: (500, b"<html>oops</html>"))
        with self.assertRaises(RemoteError) as cm:
            await self.client.query_profile(self.ip_dest, "@u:x")
        self.assertEqual((cm.exception.code, cm.exception.errcode), (403, "M_FORBIDDEN"))
        self.assertEqual(cm.exception.destination, self.ip_dest)
        with self.assertRaises(RemoteError) as cm:
            await self.client.get_event(self.ip_dest, "$e")
        self.assertEqual((cm.exception.code, cm.exception.errcode), (500, "M_UNKNOWN"))

    async def test_non_json_and_bad_shapes(self) -> None:
        self.server.route("/_matrix/federation/v1/version", lambda r: b"<html>hi</html>")
        self.server.route("/_matrix/federation/v1/event/", lambda r: {"pdus": [{}, {}]})
        self.server.route("/_matrix/federation/v1/state_ids/", lambda r: {"pdu_ids": "nope"})
        self.server.route("/_matrix/federation/v1/make_join/", lambda r: {"room_version": "10"})
        self.server.route("/_matrix/federation/v1/query/directory", lambda r: [1, 2])
        self.server.route(
            "/_matrix/federation/v1/hierarchy/", lambda r: b'{"room": {}, "x": 1e999}'
        )
        calls = [
            self.client.version(self.ip_dest),
            self.client.get_event(self.ip_dest, "$e"),
            self.client.get_state_ids(self.ip_dest, "!r:x", "$e"),
            self.client.make_join(self.ip_dest, "!r:x", "@u:x"),
            self.client.query_directory(self.ip_dest, "#a:x"),
            self.client.get_hierarchy(self.ip_dest, "!r:x"),
        ]
        for call in calls:
            with self.assertRaises(InvalidResponseError):
                await call

    async def test_oversized_body(self) -> None:
        big = {"pdus": [{"content": {"body": "x" * 200_000}}]}
        self.server.route("/_matrix/federation/v1/event/", lambda r: big)
        client = self.make_client(max_response_size=100_000)
        with self.assertRaises(InvalidResponseError) as cm:
            await client.get_event(self.ip_dest, "$e")
        self.assertIn("over 100000", cm.exception.msg)

    async def test_oversized_chunked_body(self) -> None:
        def stream(request: Any) -> Any:
            # No Content-Length: the limit must hold while streaming.
            for _ in range(50):
                request.write(b"x" * 10_000)
            request.finish()
            return None

        def handler(request: Any) -> Any:
            reactor.callLater(0, stream, request)
            return defer.Deferred()  # finished by stream()

        self.server.route("/_matrix/federation/v1/event/", handler)
        client = self.make_client(max_response_size=100_000)
        with self.assertRaises(InvalidResponseError):
            await client.get_event(self.ip_dest, "$e")

    async def test_slow_response_times_out(self) -> None:
        never: defer.Deferred[Any] = defer.Deferred()
        self.server.route("/_matrix/federation/v1/version", lambda r: never)
        client = self.make_client(default_timeout=0.3)
        with self.assertRaises(RequestTimeoutError) as cm:
            await client.version(self.ip_dest)
        self.assertEqual(cm.exception.code, 504)

    async def test_send_join_v1_fallback(self) -> None:
        self.server.route("/_matrix/federation/v2/send_join/", lambda r: (404, b""))
        self.server.route(
            "/_matrix/federation/v1/send_join/",
            lambda r: [200, {"origin": "o", "state": [{"a": 1}], "auth_chain": []}],
        )
        resp = await self.client.send_join(self.ip_dest, "!r:x", "$e", {"type": "m.room.member"})
        self.assertEqual(resp.state, ({"a": 1},))
        self.assertFalse(resp.members_omitted)

    async def test_no_fallback_on_real_errors(self) -> None:
        self.server.route(
            "/_matrix/federation/v2/send_leave/",
            lambda r: (403, {"errcode": "M_FORBIDDEN", "error": "nope"}),
        )
        with self.assertRaises(RemoteError) as cm:
            await self.client.send_leave(self.ip_dest, "!r:x", "$e", {})
        self.assertEqual(cm.exception.errcode, "M_FORBIDDEN")
        self.assertEqual(len(self.server.requests), 1)

    async def test_invite_and_leave_v1_fallback(self) -> None:
        unrecognized = (400, {"errcode": "M_UNRECOGNIZED", "error": "?"})
        self.server.route("/_matrix/federation/v2/invite/", lambda r: unrecognized)
        self.server.route(
            "/_matrix/federation/v1/invite/", lambda r: [200, {"event": {"signed": True}}]
        )
        self.server.route("/_matrix/federation/v2/send_leave/", lambda r: unrecognized)
        self.server.route("/_matrix/federation/v1/send_leave/", lambda r: [200, {}])
        event = {"type": "m.room.member", "unsigned": {"age": 1}}
        signed = await self.client.invite(
            self.ip_dest, "!r:x", "$e", event, "10", [{"type": "m.room.name"}]
        )
        self.assertEqual(signed, {"signed": True})
        v1_body = decode_json(self.server.requests[1]["body"])
        self.assertEqual(v1_body["unsigned"]["invite_room_state"], [{"type": "m.room.name"}])
        self.assertEqual(v1_body["unsigned"]["age"], 1)
        await self.client.send_leave(self.ip_dest, "!r:x", "$e", event)
        self.assertEqual(len(self.server.requests), 4)

    async def test_typed_methods(self) -> None:
        s = self.server
        s.route("/_matrix/key/v2/server", lambda r: {"server_name": "x"})
        s.route("/_matrix/key/v2/query", lambda r: {"server_keys": [{"server_name": "y"}]})
        s.route(
            "/_matrix/federation/v1/make_knock/", lambda r: {"event": {"k": 1}, "room_version": "7"}
        )
        s.route("/_matrix/federation/v1/send_knock/", lambda r: {"knock_room_state": [{"s": 1}]})
        s.route("/_matrix/federation/v1/make_leave/", lambda r: {"event": {"l": 1}})
        s.route("/_matrix/federation/v1/state/", lambda r: {"pdus": [{"p": 1}], "auth_chain": []})
        s.route("/_matrix/federation/v1/event_auth/", lambda r: {"auth_chain": [{"a": 1}]})
        s.route(
            "/_matrix/federation/v1/backfill/",
            lambda r: {"origin": "x", "origin_server_ts": 1, "pdus": [{"b": 1}, {"b": 2}]},
        )
        s.route("/_matrix/federation/v1/get_missing_events/", lambda r: {"events": [{"m": 1}]})
        s.route(
            "/_matrix/federation/v1/timestamp_to_event/",
            lambda r: {"event_id": "$t", "origin_server_ts": 5},
        )
        s.route(
            "/_matrix/federation/v1/query/directory",
            lambda r: {"room_id": "!r:x", "servers": ["x"]},
        )
        s.route("/_matrix/federation/v1/send/", lambda r: {"pdus": {"$a": {}}})
        s.route(
            "/_matrix/federation/v1/publicRooms",
            lambda r: {"chunk": [], "total_room_count_estimate": 0},
        )
        s.route(
            "/_matrix/federation/v1/hierarchy/",
            lambda r: {"room": {"room_id": "!r:x"}, "children": [], "inaccessible_children": []},
        )
        s.route(
            "/_matrix/federation/v1/state_ids/", lambda r: {"pdu_ids": ["$1"], "auth_chain_ids": []}
        )
        d = self.ip_dest
        c = self.client
        self.assertEqual((await c.get_server_keys(d))["server_name"], "x")
        self.assertEqual(await c.query_keys_via_notary(d, {"y": {}}), [{"server_name": "y"}])
        self.assertEqual((await c.make_knock(d, "!r:x", "@u:x")).room_version, "7")
        self.assertEqual(await c.send_knock(d, "!r:x", "$k", {}), ({"s": 1},))
        self.assertEqual((await c.make_leave(d, "!r:x", "@u:x")).room_version, "1")
        self.assertEqual((await c.get_state(d, "!r:x", "$e")).pdus, ({"p": 1},))
        self.assertEqual((await c.get_state_ids(d, "!r:x", "$e")).pdu_ids, ("$1",))
        self.assertEqual(await c.get_event_auth(d, "!r:x", "$e"), ({"a": 1},))
        self.assertEqual(await c.backfill(d, "!r:x", ["$a", "$b"], 1), ({"b": 1},))
        self.assertEqual(await c.get_missing_events(d, "!r:x", ["$a"], ["$b"]), ({"m": 1},))
        self.assertEqual((await c.timestamp_to_event(d, "!r:x", 5, "b")).event_id, "$t")
        self.assertEqual((await c.query_directory(d, "#a:x")).servers, ("x",))
        self.assertEqual(await c.send_transaction(d, "t1", [{"p": 1}], [{"e": 1}]), {"$a": {}})
        self.assertEqual((await c.get_public_rooms(d, limit=5))["chunk"], [])
        self.assertEqual(
            (await c.get_public_rooms(d, search_filter={"generic_search_term": "x"}))["chunk"], []
        )
        self.assertEqual((await c.get_hierarchy(d, "!r:x"))["room"]["room_id"], "!r:x")
        uris = [r["uri"] for r in self.server.requests]
        self.assertIn("/_matrix/federation/v1/backfill/%21r%3Ax?v=%24a&v=%24b&limit=1", uris)
        self.assertIn("/_matrix/federation/v1/timestamp_to_event/%21r%3Ax?ts=5&dir=b", uris)
        txn = next(
            r for r in self.server.requests if r["uri"].startswith("/_matrix/federation/v1/send/")
        )
        body = json.loads(txn["body"])
        self.assertEqual(
            (body["origin"], body["pdus"], body["edus"]), (ORIGIN, [{"p": 1}], [{"e": 1}])
        )


class _RawReply(protocol.Protocol):
    reply = b""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(self.reply)
            self.transport.loseConnection()


class TruncatedBodyTests(unittest.TestCase):
    async def test_truncated_body(self) -> None:
        ca = TestCA()
        self.addCleanup(ca.cleanup)
        factory = protocol.Factory.forProtocol(_RawReply)
        _RawReply.reply = b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"server": {'
        options = PrivateCertificate.loadPEM(ca.issue([], ["127.0.0.1"])).options()
        port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = FederationClient(ORIGIN, KEY, reactor, ca_bundle=ca.path, get_retries=0)
        self.addCleanup(client.close_connections)
        with self.assertRaises(InvalidResponseError) as cm:
            await client.version(f"127.0.0.1:{port.getHost().port}")
        self.assertIn("incomplete", cm.exception.msg)

    async def test_connection_refused(self) -> None:
        # Grab a free port, then close it so nothing listens there.
        port = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
        number = port.getHost().port
        await port.stopListening()
        client = FederationClient(ORIGIN, KEY, reactor, verify_tls=False, get_retries=0)
        with self.assertRaises(FederationRequestError):
            await client.version(f"127.0.0.1:{number}")


# -- a fake agent and a fake clock ---------------------------------------------------------


class FakeResponse:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.headers = Headers()
        self.length = len(body)
        self._body = body

    def deliverBody(self, proto: Any) -> None:
        proto.makeConnection(_FakeTransport())
        proto.dataReceived(self._body)
        proto.connectionLost(Failure(ResponseDone()))


class _FakeTransport:
    def stopProducing(self) -> None:
        pass


@implementer(IAgent)
class FakeAgent:
    """Each request gets the next scripted answer: (code, body), an exception, or
    a Deferred the test controls."""

    def __init__(self) -> None:
        self.answers: list[Any] = []
        self.requests: list[tuple[bytes, bytes]] = []
        self.cancelled = 0

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Any:
        self.requests.append((method, uri))
        answer = self.answers.pop(0) if self.answers else (200, b"{}")
        if isinstance(answer, defer.Deferred):
            return answer
        if isinstance(answer, Exception):
            return defer.fail(answer)
        code, body = answer
        return defer.succeed(FakeResponse(code, body))


class FakeAgentTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.agent = FakeAgent()
        self.client = FederationClient(
            ORIGIN, KEY, reactor, agent=self.agent, clock=self.clock, rng=lambda: 0.5
        )

    def test_timeout_with_clock_cancels_request(self) -> None:
        cancelled = []
        pending: defer.Deferred[Any] = defer.Deferred(lambda d: cancelled.append(True))
        self.agent.answers = [pending]
        d = self.client.send_transaction("dest", "t1", [], [])
        self.clock.advance(59)
        self.assertNoResult(d)
        self.clock.advance(2)
        f = self.failureResultOf(d, RequestTimeoutError)
        self.assertIsInstance(f.value, MatrixError)
        self.assertEqual(cancelled, [True])

    def test_get_retried_with_backoff_then_destination_backed_off(self) -> None:
        self.agent.answers = [(500, b"{}"), ConnectionRefusedError(), (502, b"")]
        d = self.client.get_event("dest", "$e")
        self.assertEqual(len(self.agent.requests), 1)
        self.clock.advance(0.49)
        self.assertEqual(len(self.agent.requests), 1)
        self.clock.advance(0.02)  # first retry after 0.5 s
        self.assertEqual(len(self.agent.requests), 2)
        self.clock.advance(1.0)  # second after 1 s more
        self.assertEqual(len(self.agent.requests), 3)
        f = self.failureResultOf(d, RemoteError)
        self.assertEqual(f.value.code, 502)
        # Now the destination is backed off: no request at all.
        f2 = self.failureResultOf(self.client.version("dest"), NotRetryingDestinationError)
        self.assertEqual(len(self.agent.requests), 3)
        self.assertEqual(f2.value.code, 503)
        # Other destinations are unaffected.
        self.successResultOf(self.client.query_profile("other", "@u:other"))
        # After the interval, one try is allowed; success clears the state.
        self.clock.advance(31)
        self.agent.answers = [(200, b'{"server": {"name": "n"}}')]
        self.successResultOf(self.client.version("dest"))
        self.agent.answers = [(200, b'{"server": {"name": "n"}}')]
        self.successResultOf(self.client.version("dest"))

    def test_backoff_grows_and_is_capped(self) -> None:
        intervals = []
        for _ in range(12):
            self.agent.answers = [ConnectionRefusedError()] * 3
            d = self.client.get_server_keys("dest")
            self.clock.pump([1.0] * 4)  # past the in-call retries
            self.failureResultOf(d, FederationRequestError)
            state = self.successResultOf(self.client.backoff.get_destination_retry("dest"))
            intervals.append(state.retry_interval_ms)
            self.clock.advance(state.retry_interval_ms / 1000 + 1)
        self.assertEqual(intervals[:3], [30_000, 60_000, 120_000])
        self.assertEqual(max(intervals), 3_600_000)
        self.successResultOf(self.client.reset_backoff("dest"))
        self.assertIsNone(self.successResultOf(self.client.backoff.get_destination_retry("dest")))

    def test_client_errors_do_not_back_off_or_retry(self) -> None:
        self.agent.answers = [(404, b'{"errcode": "M_NOT_FOUND", "error": "no"}')]
        self.failureResultOf(self.client.get_event("dest", "$e"), RemoteError)
        self.assertEqual(len(self.agent.requests), 1)
        self.assertIsNone(self.successResultOf(self.client.backoff.get_destination_retry("dest")))

    def test_put_not_retried(self) -> None:
        self.agent.answers = [(500, b"{}")]
        self.failureResultOf(self.client.send_leave("dest", "!r:x", "$e", {}), RemoteError)
        self.assertEqual(len(self.agent.requests), 1)

    def test_transactions_leave_backoff_to_the_sender(self) -> None:
        self.agent.answers = [ConnectionRefusedError()]
        self.failureResultOf(
            self.client.send_transaction("dest", "t", [], []), FederationRequestError
        )
        self.assertIsNone(self.successResultOf(self.client.backoff.get_destination_retry("dest")))
        self.successResultOf(self.client.backoff.set_destination_retry("dest", 10**12, 10**9))
        self.successResultOf(self.client.send_transaction("dest", "t2", [], []))

    def test_store_provides_backoff(self) -> None:
        from fedlib.storage.memory import MemoryStore

        store = MemoryStore()
        client = FederationClient(
            ORIGIN, KEY, reactor, agent=self.agent, clock=self.clock, store=store, get_retries=0
        )
        self.agent.answers = [ConnectionRefusedError()]
        self.failureResultOf(client.version("dest"), FederationRequestError)
        state = self.successResultOf(store.get_destination_retry("dest"))
        self.assertEqual(state.failure_ts, int(self.clock.seconds() * 1000))
        self.failureResultOf(client.version("dest"), NotRetryingDestinationError)

    def test_floats_rejected_for_strict_room_versions(self) -> None:
        body = b'{"pdus": [{"content": {"x": 1.5}}]}'
        self.agent.answers = [(200, body)]
        self.failureResultOf(
            self.client.get_event("dest", "$e", room_version="10"), InvalidResponseError
        )
        self.agent.answers = [(200, body)]
        self.successResultOf(self.client.get_event("dest", "$e", room_version="5"))

    def test_uri_carries_destination(self) -> None:
        self.successResultOf(self.client.get_server_keys("[::1]:8448"))
        self.assertEqual(
            self.agent.requests[0],
            (b"GET", b"matrix-federation://[::1]:8448/_matrix/key/v2/server"),
        )


class DiscoveryThroughClientTests(unittest.TestCase):
    def test_slow_well_known_bounded_by_request_timeout(self) -> None:
        from tests.test_discovery import FakeDNS, FakeFetcher

        clock = task.Clock()
        never: defer.Deferred[Any] = defer.Deferred()
        fetcher = FakeFetcher({"https://slow.example/.well-known/matrix/server": never})
        from fedlib.client.discovery import ServerResolver

        resolver = ServerResolver(FakeDNS(), fetcher, clock, well_known_timeout=1000)
        client = FederationClient(
            ORIGIN, KEY, reactor, resolver=resolver, clock=clock, default_timeout=5, get_retries=0
        )
        d = client.query_profile("slow.example", "@u:slow.example")
        clock.advance(6)
        self.failureResultOf(d, RequestTimeoutError)


class ConstructionTests(unittest.TestCase):
    def test_building_a_client_creates_no_dns_resolver(self) -> None:
        # The system resolver re-reads resolv.conf on a timer; building a client
        # (or a service around one) must not start it: it is made on first SRV lookup.
        from twisted.names import client as dns_client

        def refuse() -> None:
            self.fail("the system DNS resolver was created while building the client")

        self.patch(dns_client, "getResolver", refuse)
        self.patch(dns_client, "createResolver", refuse)
        FederationClient(ORIGIN, KEY, reactor)


class BlocklistTests(TLSTestBase):
    def test_ranges(self) -> None:
        from fedlib.client.agent import IPBlocklist

        bl = IPBlocklist()
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "169.254.169.254",
            "not-an-ip",
        ]:
            self.assertTrue(bl.is_blocked(ip), ip)
        for ip in ["93.184.216.34", "2606:4700::1"]:
            self.assertFalse(bl.is_blocked(ip), ip)
        self.assertFalse(IPBlocklist(allowed=["127.0.0.0/8"]).is_blocked("127.0.0.1"))

    async def test_blocked_destinations_are_not_contacted(self) -> None:
        from fedlib.client.agent import IPBlocklist

        self.server.route("/_matrix/federation/v1/version", lambda r: VERSION)
        client = self.make_client(ip_blocklist=IPBlocklist())
        for dest in (self.ip_dest, self.dns_dest):  # literal, and a name overridden to loopback
            with self.assertRaises(FederationRequestError) as cm:
                await client.version(dest)
            self.assertEqual((cm.exception.code, cm.exception.errcode), (403, "M_FORBIDDEN"))
        self.assertEqual(self.server.requests, [])
        allowed = self.make_client(ip_blocklist=IPBlocklist(allowed=["127.0.0.1/32"]))
        self.assertEqual(await allowed.version(self.ip_dest), VERSION["server"])

    def test_dns_answers_are_filtered(self) -> None:
        from twisted.internet.address import IPv4Address, IPv6Address

        from fedlib.client.agent import IPBlocklist, _FilteringResolver

        class FakeResolver:
            def resolveHostName(self, receiver: Any, host: str, *args: Any) -> Any:
                receiver.resolutionBegan(None)
                receiver.addressResolved(IPv4Address("TCP", "10.0.0.7", 443))
                receiver.addressResolved(IPv6Address("TCP", "::1", 443))
                receiver.addressResolved(IPv4Address("TCP", "93.184.216.34", 443))
                receiver.resolutionComplete()
                return None

        got: list[str] = []

        class Receiver:
            def resolutionBegan(self, r: Any) -> None:
                pass

            def addressResolved(self, a: Any) -> None:
                got.append(a.host)

            def resolutionComplete(self) -> None:
                got.append("done")

        _FilteringResolver(FakeResolver(), IPBlocklist()).resolveHostName(
            Receiver(), "x.example", 443
        )
        self.assertEqual(got, ["93.184.216.34", "done"])


class _HostsResolver:
    """An IHostnameResolver answering from a dict (no DNS traffic)."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts
        self.asked: list[str] = []

    def resolveHostName(
        self,
        receiver: Any,
        host: str,
        port: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        from twisted.internet.address import IPv4Address

        self.asked.append(host)
        receiver.resolutionBegan(None)
        if host in self.hosts:
            receiver.addressResolved(IPv4Address("TCP", self.hosts[host], port))
        receiver.resolutionComplete()
        return None


class ResolvedNameBlocklistTests(TLSTestBase):
    async def test_blocklist_applies_to_resolved_names(self) -> None:
        from fedlib.client.agent import IPBlocklist, _ReactorWithResolver

        self.server.route("/_matrix/federation/v1/version", lambda r: VERSION)
        hosts = _HostsResolver({"fed.test": "127.0.0.1"})
        fake_dns_reactor = _ReactorWithResolver(reactor, hosts)
        blocked = self.make_client(
            host_overrides={}, ip_blocklist=IPBlocklist(), reactor=fake_dns_reactor
        )
        with self.assertRaises(FederationRequestError):
            await blocked.version(self.dns_dest)
        self.assertEqual(self.server.requests, [])
        allowed = self.make_client(
            host_overrides={},
            ip_blocklist=IPBlocklist(allowed=["127.0.0.0/8"]),
            reactor=fake_dns_reactor,
        )
        self.assertEqual(await allowed.version(self.dns_dest), VERSION["server"])
        self.assertEqual(hosts.asked, ["fed.test", "fed.test"])


class IPv6Tests(unittest.TestCase):
    async def test_ipv6_literal(self) -> None:
        ca = TestCA()
        self.addCleanup(ca.cleanup)
        server = ScriptedServer(ca.issue([], ["::1"]), interface="::1")
        self.addCleanup(server.stop)
        server.route("/_matrix/federation/v1/version", lambda r: VERSION)
        client = FederationClient(ORIGIN, KEY, reactor, ca_bundle=ca.path, get_retries=0)
        self.addCleanup(client.close_connections)
        dest = f"[::1]:{server.port_number}"
        self.assertEqual(await client.version(dest), VERSION["server"])
        self.assertEqual(server.requests[0]["host"], dest)


class WellKnownFetcherTests(unittest.TestCase):
    """The production well-known fetcher against a real TLS server (web PKI by name)."""

    def setUp(self) -> None:
        self.ca = TestCA()
        self.addCleanup(self.ca.cleanup)
        self.server = ScriptedServer(self.ca.issue(["wk.test"], []))
        self.addCleanup(self.server.stop)

    def fetcher(self, ca_path: str | None = None) -> Any:
        from fedlib.client.agent import HttpsWellKnownFetcher, TLSOptions

        return HttpsWellKnownFetcher(
            reactor,
            tls=TLSOptions(ca_bundle=ca_path or self.ca.path),
            host_overrides={"wk.test": "127.0.0.1", "other.test": "127.0.0.1"},
        )

    def url(self, host: str = "wk.test") -> str:
        return f"https://{host}:{self.server.port_number}/.well-known/matrix/server"

    async def test_fetch(self) -> None:
        def handler(request: Any) -> Any:
            request.setHeader("cache-control", "max-age=60")
            return {"m.server": "x.test:1"}

        self.server.route("/.well-known/matrix/server", handler)
        response = await self.fetcher().fetch(self.url(), 1000)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers["cache-control"], "max-age=60")
        self.assertEqual(json.loads(response.body), {"m.server": "x.test:1"})

    async def test_redirect_returned_not_followed(self) -> None:
        def handler(request: Any) -> Any:
            request.setHeader("location", "https://elsewhere.test/x")
            return (302, b"")

        self.server.route("/.well-known/matrix/server", handler)
        response = await self.fetcher().fetch(self.url(), 1000)
        self.assertEqual(
            (response.code, response.headers["location"]), (302, "https://elsewhere.test/x")
        )

    async def test_size_limit(self) -> None:
        from fedlib.client.agent import ResponseTooLargeError

        self.server.route("/.well-known/matrix/server", lambda r: b"x" * 5000)
        with self.assertRaises(ResponseTooLargeError):
            await self.fetcher().fetch(self.url(), 1000)

    async def test_certificate_name_checked(self) -> None:
        self.server.route("/.well-known/matrix/server", lambda r: {"m.server": "x.test:1"})
        with self.assertRaises(Exception):  # noqa: B017 - any TLS failure will do
            await self.fetcher().fetch(self.url("other.test"), 1000)
        self.assertEqual(self.server.requests, [])


class RateLimitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.agent = FakeAgent()
        self.client = FederationClient(
            ORIGIN, KEY, reactor, agent=self.agent, clock=self.clock, rng=lambda: 0.5
        )

    def test_short_retry_after_is_honoured(self) -> None:
        limited = (429, b'{"errcode": "M_LIMIT_EXCEEDED", "error": "slow", "retry_after_ms": 2000}')
        self.agent.answers = [limited, (200, b'{"server": {"name": "n"}}')]
        d = self.client.version("dest")
        self.clock.advance(1.9)
        self.assertEqual(len(self.agent.requests), 1)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(d), {"name": "n"})
        self.assertIsNone(self.successResultOf(self.client.backoff.get_destination_retry("dest")))

    def test_long_retry_after_is_an_error(self) -> None:
        limited = (429, b'{"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 600000}')
        self.agent.answers = [limited]
        f = self.failureResultOf(self.client.version("dest"), RemoteError)
        self.assertEqual((f.value.code, f.value.errcode), (429, "M_LIMIT_EXCEEDED"))
        self.assertEqual(len(self.agent.requests), 1)
