"""Server discovery: every branch of "Resolving server names", with fakes."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError
from twisted.trial import unittest
from zope.interface import implementer

from fedlib.client.discovery import (
    WELL_KNOWN_MAX_SIZE,
    DiscoveryError,
    HttpResponse,
    IWellKnownFetcher,
    Method,
    ServerResolver,
    Target,
    order_srv_records,
    parse_server_name,
)


class FakeDNS:
    """SRV answers by name; a name mapped to an exception raises it."""

    def __init__(self, records: dict[str, Any] | None = None) -> None:
        self.records = records or {}
        self.queries: list[str] = []

    def lookupService(self, name: str, timeout: Any = None) -> defer.Deferred[Any]:
        self.queries.append(name)
        value = self.records.get(name)
        if value is None:
            return defer.fail(DNSNameError(name))
        if isinstance(value, Exception):
            return defer.fail(value)
        answers = [
            dns.RRHeader(name=name, type=dns.SRV, payload=dns.Record_SRV(p, w, port, target))
            for (p, w, port, target) in value
        ]
        return defer.succeed((answers, [], []))


@implementer(IWellKnownFetcher)
class FakeFetcher:
    """Responses by URL: HttpResponse, Exception, or a Deferred (e.g. never firing)."""

    def __init__(self, responses: dict[str, Any] | None = None) -> None:
        self.responses = responses or {}
        self.urls: list[str] = []

    def fetch(self, url: str, max_size: int) -> defer.Deferred[HttpResponse]:
        self.urls.append(url)
        value = self.responses.get(url)
        if value is None:
            return defer.fail(ConnectionRefusedError(url))
        if isinstance(value, Exception):
            return defer.fail(value)
        if isinstance(value, defer.Deferred):
            return value
        if len(value.body) > max_size:
            return defer.fail(ValueError("too large"))
        return defer.succeed(value)


def wk(body: bytes | str, code: int = 200, **headers: str) -> HttpResponse:
    if isinstance(body, str):
        body = body.encode()
    return HttpResponse(code, {k.replace("_", "-"): v for k, v in headers.items()}, body)


URL = "https://example.org/.well-known/matrix/server"


class DiscoveryTests(unittest.TestCase):
    def make(
        self, srv: dict[str, Any] | None = None, wellknown: dict[str, Any] | None = None
    ) -> tuple[ServerResolver, FakeDNS, FakeFetcher, task.Clock]:
        clock = task.Clock()
        clock.advance(1_000_000)
        fake_dns = FakeDNS(srv)
        fetcher = FakeFetcher(wellknown)
        return ServerResolver(fake_dns, fetcher, clock, rng=lambda: 0.0), fake_dns, fetcher, clock

    def resolve(self, resolver: ServerResolver, name: str) -> Any:
        return self.successResultOf(resolver.resolve(name))

    # -- steps 1 and 2: no lookups at all ---------------------------------------------

    def test_ipv4_literal_default_port(self) -> None:
        r, d, f, _ = self.make()
        res = self.resolve(r, "127.0.0.1")
        self.assertEqual(res.targets, (Target("127.0.0.1", 8448),))
        self.assertEqual((res.host_header, res.tls_server_name), ("127.0.0.1", "127.0.0.1"))
        self.assertEqual(res.method, Method.IP_LITERAL)
        self.assertEqual((d.queries, f.urls), ([], []))

    def test_ipv4_literal_with_port(self) -> None:
        r, _, _, _ = self.make()
        res = self.resolve(r, "127.0.0.1:8008")
        self.assertEqual(res.targets, (Target("127.0.0.1", 8008),))
        self.assertEqual(res.host_header, "127.0.0.1:8008")

    def test_ipv6_literal(self) -> None:
        r, d, f, _ = self.make()
        res = self.resolve(r, "[::1]:8449")
        self.assertEqual(res.targets, (Target("::1", 8449),))
        self.assertEqual((res.host_header, res.tls_server_name), ("[::1]:8449", "::1"))
        res = self.resolve(r, "[2001:db8::1]")
        self.assertEqual(res.port, 8448)
        self.assertEqual(res.host_header, "[2001:db8::1]")
        self.assertEqual((d.queries, f.urls), ([], []))

    def test_explicit_port(self) -> None:
        r, d, f, _ = self.make(
            srv={"_matrix-fed._tcp.example.org": [(0, 0, 1, b"x.example.org")]},
            wellknown={URL: wk('{"m.server": "other.example:1"}')},
        )
        res = self.resolve(r, "example.org:1234")
        self.assertEqual(res.targets, (Target("example.org", 1234),))
        self.assertEqual(
            (res.host_header, res.tls_server_name), ("example.org:1234", "example.org")
        )
        self.assertEqual(res.method, Method.EXPLICIT_PORT)
        self.assertEqual((d.queries, f.urls), ([], []))

    def test_invalid_names(self) -> None:
        r, _, _, _ = self.make()
        for bad in [
            "",
            "a b",
            "example.org:0",
            "example.org:99999",
            "example.org:",
            "[::1",
            "[zz::1]:80",
            "[::1]x",
            "-bad.example",
            "ex ample.org",
            "a" * 300,
        ]:
            self.failureResultOf(r.resolve(bad), DiscoveryError)
        self.assertEqual(parse_server_name("Example.ORG:443"), ("Example.ORG", 443))

    # -- step 3: well-known delegation --------------------------------------------------

    def test_well_known_delegates_to_ip_literal(self) -> None:
        r, d, _, _ = self.make(wellknown={URL: wk('{"m.server": "10.0.0.1:99"}')})
        res = self.resolve(r, "example.org")
        self.assertEqual(res.targets, (Target("10.0.0.1", 99),))
        self.assertEqual((res.host_header, res.tls_server_name), ("10.0.0.1:99", "10.0.0.1"))
        self.assertEqual(res.method, Method.WELL_KNOWN_IP_LITERAL)
        self.assertEqual(res.delegated_name, "10.0.0.1:99")
        self.assertEqual(d.queries, [])

    def test_well_known_delegates_to_ipv6_literal_default_port(self) -> None:
        r, _, _, _ = self.make(wellknown={URL: wk('{"m.server": "[::1]"}')})
        res = self.resolve(r, "example.org")
        self.assertEqual(res.targets, (Target("::1", 8448),))
        self.assertEqual((res.host_header, res.tls_server_name), ("[::1]", "::1"))

    def test_well_known_delegates_with_port(self) -> None:
        r, d, _, _ = self.make(
            srv={"_matrix-fed._tcp.deleg.example": [(0, 0, 1, b"x.example")]},
            wellknown={URL: wk('{"m.server": "deleg.example:443"}')},
        )
        res = self.resolve(r, "example.org")
        self.assertEqual(res.targets, (Target("deleg.example", 443),))
        self.assertEqual(
            (res.host_header, res.tls_server_name), ("deleg.example:443", "deleg.example")
        )
        self.assertEqual(res.method, Method.WELL_KNOWN_EXPLICIT_PORT)
        self.assertEqual(d.queries, [])

    def test_well_known_delegated_srv(self) -> None:
        r, d, _, _ = self.make(
            srv={
                "_matrix-fed._tcp.deleg.example": [(10, 0, 8443, b"host1.example")],
                "_matrix-fed._tcp.example.org": [(0, 0, 1, b"wrong.example")],
            },
            wellknown={URL: wk('{"m.server": "deleg.example"}')},
        )
        res = self.resolve(r, "example.org")
        self.assertEqual(res.targets, (Target("host1.example", 8443),))
        # Host and certificate name are the delegated name, not the SRV target.
        self.assertEqual((res.host_header, res.tls_server_name), ("deleg.example", "deleg.example"))
        self.assertEqual(res.method, Method.WELL_KNOWN_SRV)
        self.assertEqual(d.queries, ["_matrix-fed._tcp.deleg.example"])

    def test_well_known_delegated_legacy_srv(self) -> None:
        r, d, _, _ = self.make(
            srv={"_matrix._tcp.deleg.example": [(0, 0, 8449, b"old.example")]},
            wellknown={URL: wk('{"m.server": "deleg.example"}')},
        )
        res = self.resolve(r, "example.org")
        self.assertEqual(res.targets, (Target("old.example", 8449),))
        self.assertEqual(res.host_header, "deleg.example")
        self.assertEqual(res.method, Method.WELL_KNOWN_SRV_LEGACY)
        self.assertEqual(
            d.queries, ["_matrix-fed._tcp.deleg.example", "_matrix._tcp.deleg.example"]
        )

    def test_well_known_delegated_no_srv(self) -> None:
        r, _, _, _ = self.make(wellknown={URL: wk('{"m.server": "deleg.example"}')})
        res = self.resolve(r, "example.org")
        self.assertEqual(res.targets, (Target("deleg.example", 8448),))
        self.assertEqual((res.host_header, res.tls_server_name), ("deleg.example", "deleg.example"))
        self.assertEqual(res.method, Method.WELL_KNOWN_DEFAULT_PORT)
        self.assertTrue(any("well-known" in s for s in res.steps))

    # -- steps 4-6: no usable well-known ---------------------------------------------------

    def test_srv_on_server_name(self) -> None:
        r, _, _, _ = self.make(
            srv={"_matrix-fed._tcp.example.org": [(0, 5, 8443, b"fed.example.org")]},
            wellknown={URL: wk("not found", code=404)},
        )
        res = self.resolve(r, "example.org")
        self.assertEqual(res.targets, (Target("fed.example.org", 8443),))
        self.assertEqual((res.host_header, res.tls_server_name), ("example.org", "example.org"))
        self.assertEqual(res.method, Method.SRV)

    def test_legacy_srv_on_server_name(self) -> None:
        r, _, _, _ = self.make(srv={"_matrix._tcp.example.org": [(0, 0, 8000, b"old.example")]})
        res = self.resolve(r, "example.org")
        self.assertEqual(res.targets, (Target("old.example", 8000),))
        self.assertEqual(res.method, Method.SRV_LEGACY)
        self.assertEqual(res.host_header, "example.org")

    def test_default_port(self) -> None:
        r, d, f, _ = self.make()
        res = self.resolve(r, "example.org")
        self.assertEqual(res.targets, (Target("example.org", 8448),))
        self.assertEqual((res.host_header, res.tls_server_name), ("example.org", "example.org"))
        self.assertEqual(res.method, Method.DEFAULT_PORT)
        self.assertEqual(f.urls, [URL])
        self.assertEqual(d.queries, ["_matrix-fed._tcp.example.org", "_matrix._tcp.example.org"])

    def test_dns_failure_falls_back(self) -> None:
        r, _, _, _ = self.make(srv={"_matrix-fed._tcp.example.org": DNSServerError("boom")})
        res = self.resolve(r, "example.org")
        self.assertEqual(res.method, Method.DEFAULT_PORT)
        self.assertTrue(any("lookup failed" in s for s in res.steps))

    def test_srv_dot_target_means_absent(self) -> None:
        r, _, _, _ = self.make(srv={"_matrix-fed._tcp.example.org": [(0, 0, 0, b".")]})
        self.assertEqual(self.resolve(r, "example.org").method, Method.DEFAULT_PORT)

    # -- invalid well-known answers all fall through to SRV/8448 ------------------------------

    def assert_invalid(self, response: Any, why: str) -> None:
        r, _, _, _ = self.make(wellknown={URL: response})
        res = self.resolve(r, "example.org")
        self.assertEqual(res.method, Method.DEFAULT_PORT, why)
        self.assertIsNone(res.delegated_name)
        self.assertIn("invalid", res.steps[0], why)

    def test_invalid_well_known(self) -> None:
        self.assert_invalid(wk("{not json"), "bad JSON")
        self.assert_invalid(wk("[1, 2]"), "not an object")
        self.assert_invalid(wk("{}"), "no m.server")
        self.assert_invalid(wk('{"m.server": 5}'), "m.server not a string")
        self.assert_invalid(wk('{"m.server": "bad name:x"}'), "m.server not a server name")
        self.assert_invalid(wk('{"m.server": "a.example"}', code=500), "HTTP 500")
        self.assert_invalid(wk(b"\xff\xfe"), "not UTF-8")
        self.assert_invalid(wk('{"m.server": "a.example", "x": NaN}'), "NaN")
        huge = '{"m.server": "a.example", "pad": "' + "x" * WELL_KNOWN_MAX_SIZE + '"}'
        self.assert_invalid(wk(huge), "huge body")
        self.assert_invalid(OSError("connection refused"), "unreachable")

    def test_timeout(self) -> None:
        never: defer.Deferred[HttpResponse] = defer.Deferred()
        r, _, _, clock = self.make(wellknown={URL: never})
        d = r.resolve("example.org")
        self.assertNoResult(d)
        clock.advance(9)
        self.assertNoResult(d)
        clock.advance(2)
        res = self.successResultOf(d)
        self.assertEqual(res.method, Method.DEFAULT_PORT)
        self.assertIn("timed out", res.steps[0])

    # -- redirects ---------------------------------------------------------------------------

    def test_redirects_followed(self) -> None:
        r, _, f, _ = self.make(
            wellknown={
                URL: wk("", code=301, location="https://www.example.org/wk"),
                "https://www.example.org/wk": wk("", code=302, location="/final"),
                "https://www.example.org/final": wk('{"m.server": "deleg.example:8000"}'),
            }
        )
        res = self.resolve(r, "example.org")
        self.assertEqual(res.delegated_name, "deleg.example:8000")
        self.assertEqual(len(f.urls), 3)

    def test_redirect_loop(self) -> None:
        r, _, f, _ = self.make(
            wellknown={
                URL: wk("", code=302, location="https://b.example/x"),
                "https://b.example/x": wk("", code=307, location=URL),
            }
        )
        res = self.resolve(r, "example.org")
        self.assertIn("redirect loop", res.steps[0])
        self.assertEqual(len(f.urls), 2)

    def test_too_many_redirects(self) -> None:
        chain = {URL: wk("", code=302, location="https://r.example/0")}
        for i in range(20):
            chain[f"https://r.example/{i}"] = wk(
                "", code=302, location=f"https://r.example/{i + 1}"
            )
        r, _, f, _ = self.make(wellknown=chain)
        res = self.resolve(r, "example.org")
        self.assertIn("too many redirects", res.steps[0])
        self.assertEqual(len(f.urls), 6)

    def test_redirect_to_plain_http_refused(self) -> None:
        r, _, _, _ = self.make(wellknown={URL: wk("", code=301, location="http://example.org/x")})
        self.assertIn("non-HTTPS", self.resolve(r, "example.org").steps[0])

    # -- caching -------------------------------------------------------------------------------

    def test_cache_default_24h(self) -> None:
        r, _, f, clock = self.make(wellknown={URL: wk('{"m.server": "deleg.example:1"}')})
        self.resolve(r, "example.org")
        clock.advance(24 * 3600 - 1)
        self.assertIn("(cached)", self.resolve(r, "example.org").steps[0])
        self.assertEqual(len(f.urls), 1)
        clock.advance(2)
        self.resolve(r, "example.org")
        self.assertEqual(len(f.urls), 2)

    def test_cache_control_max_age(self) -> None:
        r, _, f, clock = self.make(
            wellknown={URL: wk('{"m.server": "a.example:1"}', cache_control="public, max-age=600")}
        )
        self.resolve(r, "example.org")
        clock.advance(599)
        self.resolve(r, "example.org")
        self.assertEqual(len(f.urls), 1)
        clock.advance(2)
        self.resolve(r, "example.org")
        self.assertEqual(len(f.urls), 2)

    def test_cache_control_clamped(self) -> None:
        r, _, f, clock = self.make(
            wellknown={URL: wk('{"m.server": "a.example:1"}', cache_control="max-age=1")}
        )
        self.resolve(r, "example.org")
        clock.advance(299)
        self.resolve(r, "example.org")
        self.assertEqual(len(f.urls), 1)  # at least 5 minutes
        clock.advance(2)
        self.resolve(r, "example.org")
        self.assertEqual(len(f.urls), 2)

        f.responses[URL] = wk('{"m.server": "a.example:1"}', cache_control="max-age=99999999")
        r.forget("example.org")
        self.resolve(r, "example.org")
        clock.advance(48 * 3600 + 1)  # at most 48 hours
        self.resolve(r, "example.org")
        self.assertEqual(len(f.urls), 4)

    def test_no_store_uses_minimum(self) -> None:
        r, _, f, clock = self.make(
            wellknown={URL: wk('{"m.server": "a.example:1"}', cache_control="no-store")}
        )
        self.resolve(r, "example.org")
        clock.advance(301)
        self.resolve(r, "example.org")
        self.assertEqual(len(f.urls), 2)

    def test_failures_cached_with_backoff(self) -> None:
        r, _, f, clock = self.make()
        self.resolve(r, "example.org")
        clock.advance(119)
        self.resolve(r, "example.org")
        self.assertEqual(len(f.urls), 1)
        clock.advance(2)  # first failure: 2 minutes
        self.resolve(r, "example.org")
        self.assertEqual(len(f.urls), 2)
        clock.advance(121)  # second failure: 4 minutes
        self.resolve(r, "example.org")
        self.assertEqual(len(f.urls), 2)
        for _ in range(12):
            clock.advance(3601)  # never more than an hour
            self.resolve(r, "example.org")
        self.assertEqual(len(f.urls), 2 + 12)

    def test_failure_then_success_changes_answer(self) -> None:
        r, _, f, clock = self.make()
        self.assertEqual(self.resolve(r, "example.org").method, Method.DEFAULT_PORT)
        f.responses[URL] = wk('{"m.server": "deleg.example:1"}')
        clock.advance(121)
        self.assertEqual(self.resolve(r, "example.org").method, Method.WELL_KNOWN_EXPLICIT_PORT)

    def test_concurrent_lookups_share_one_fetch(self) -> None:
        pending: defer.Deferred[HttpResponse] = defer.Deferred()
        r, _, f, _ = self.make(wellknown={URL: pending})
        d1, d2 = r.resolve("example.org"), r.resolve("example.org")
        self.assertEqual(len(f.urls), 1)
        pending.callback(wk('{"m.server": "x.example:2"}'))
        self.assertEqual(self.successResultOf(d1).delegated_name, "x.example:2")
        self.assertEqual(self.successResultOf(d2).delegated_name, "x.example:2")


class SrvOrderTests(unittest.TestCase):
    def rec(self, priority: int, weight: int, target: str) -> dns.Record_SRV:
        return dns.Record_SRV(priority, weight, 8448, target.encode())

    def test_priority_first(self) -> None:
        records = [self.rec(20, 0, "c"), self.rec(10, 0, "a"), self.rec(15, 0, "b")]
        ordered = order_srv_records(records, lambda: 0.5)
        self.assertEqual([r.target.name for r in ordered], [b"a", b"b", b"c"])

    def test_weighted_within_priority(self) -> None:
        records = [self.rec(0, 10, "light"), self.rec(0, 90, "heavy")]
        self.assertEqual(order_srv_records(records, lambda: 0.0)[0].target.name, b"light")
        self.assertEqual(order_srv_records(records, lambda: 0.5)[0].target.name, b"heavy")
        counts = {b"light": 0, b"heavy": 0}
        import random

        rng = random.Random(1)
        for _ in range(2000):
            counts[order_srv_records(records, rng.random)[0].target.name] += 1
        self.assertTrue(1600 < counts[b"heavy"] < 1990, counts)

    def test_resolution_keeps_all_targets_in_order(self) -> None:
        clock = task.Clock()
        fake = FakeDNS(
            {
                "_matrix-fed._tcp.example.org": [
                    (20, 0, 3, b"backup.example"),
                    (10, 0, 1, b"primary.example"),
                ]
            }
        )
        r = ServerResolver(fake, FakeFetcher(), clock)
        res = self.successResultOf(r.resolve("example.org"))
        self.assertEqual(res.targets, (Target("primary.example", 1), Target("backup.example", 3)))


class CancellationTests(unittest.TestCase):
    def test_cancelled_waiter_does_not_break_others(self) -> None:
        pending: defer.Deferred[HttpResponse] = defer.Deferred()
        r = ServerResolver(FakeDNS(), FakeFetcher({URL: pending}), task.Clock())
        d1, d2 = r.resolve("example.org"), r.resolve("example.org")
        d1.cancel()
        self.failureResultOf(d1, defer.CancelledError)
        pending.callback(wk('{"m.server": "x.example:2"}'))
        self.assertEqual(self.successResultOf(d2).delegated_name, "x.example:2")
        # The answer was cached despite the cancelled caller.
        self.assertEqual(self.successResultOf(r.resolve("example.org")).port, 2)


class HostileDnsTests(unittest.TestCase):
    def test_garbage_srv_targets_are_skipped(self) -> None:
        fake = FakeDNS(
            {
                "_matrix-fed._tcp.example.org": [
                    (0, 0, 1, b"\xff\xfe.example"),
                    (0, 0, 0, b"zero-port.example"),
                    (1, 0, 2, b"good.example."),
                ]
            }
        )
        r = ServerResolver(fake, FakeFetcher(), task.Clock())
        res = self.successResultOf(r.resolve("example.org"))
        self.assertEqual(res.targets, (Target("good.example", 2),))

    def test_only_garbage_falls_back(self) -> None:
        fake = FakeDNS({"_matrix-fed._tcp.example.org": [(0, 0, 1, b"bad name")]})
        r = ServerResolver(fake, FakeFetcher(), task.Clock())
        self.assertEqual(self.successResultOf(r.resolve("example.org")).method, Method.DEFAULT_PORT)


class StaleGraceTests(unittest.TestCase):
    def test_recent_delegation_survives_a_short_outage(self) -> None:
        clock = task.Clock()
        fetcher = FakeFetcher(
            {URL: wk('{"m.server": "deleg.example:1"}', cache_control="max-age=600")}
        )
        r = ServerResolver(FakeDNS(), fetcher, clock)
        self.assertEqual(
            self.successResultOf(r.resolve("example.org")).delegated_name, "deleg.example:1"
        )
        del fetcher.responses[URL]  # the well-known server goes down
        clock.advance(601)
        res = self.successResultOf(r.resolve("example.org"))
        self.assertEqual(res.delegated_name, "deleg.example:1")
        self.assertIn("refresh failed", res.steps[0])
        # Retried after the failure interval, still stale-but-usable...
        clock.advance(121)
        self.assertEqual(
            self.successResultOf(r.resolve("example.org")).delegated_name, "deleg.example:1"
        )
        self.assertEqual(len(fetcher.urls), 3)
        # ...but not forever: an hour after expiry the delegation is dropped.
        for _ in range(6):
            clock.advance(900)
            last = self.successResultOf(r.resolve("example.org"))
        self.assertIsNone(last.delegated_name)
        self.assertEqual(last.method, Method.DEFAULT_PORT)
