"""Resolving server names (spec: "Server discovery" / "Resolving server names").

:class:`ServerResolver` turns a server name into a :class:`ServerResolution`: where
to connect (an ordered list of host/port targets), which ``Host`` header to send,
and which name the TLS certificate must be valid for (also sent as SNI unless it
is an IP address). DNS goes through a Twisted :class:`~twisted.internet.interfaces.IResolver`
and ``/.well-known/matrix/server`` through an :class:`IWellKnownFetcher`, both
injectable so every branch of the algorithm can be tested without a network.
"""

from __future__ import annotations

import enum
import ipaddress
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure
from zope.interface import Interface

from fedlib.canonical import decode_json
from fedlib.errors import MatrixError

log = Logger()

#: The default federation port (spec step 1, 3.1, 3.5, 6).
DEFAULT_PORT = 8448

#: Largest ``/.well-known/matrix/server`` body read.
WELL_KNOWN_MAX_SIZE = 50 * 1024
#: How long a whole well-known lookup (every redirect included) may take.
WELL_KNOWN_TIMEOUT = 10.0
#: Redirects followed for one well-known lookup.
WELL_KNOWN_MAX_REDIRECTS = 5
#: Cache lifetime of a well-known answer without usable Cache-Control (spec: 24 h).
WELL_KNOWN_DEFAULT_CACHE = 24 * 3600.0
#: Bounds applied to a Cache-Control max-age (spec recommends a 48 h maximum; the
#: minimum stops a remote from making us fetch on every request).
WELL_KNOWN_MIN_CACHE = 5 * 60.0
WELL_KNOWN_MAX_CACHE = 48 * 3600.0
#: Failures are cached for FIRST, doubling per consecutive failure up to MAX (spec:
#: "up to an hour ... exponentially back off for repeated failures").
WELL_KNOWN_FAILURE_CACHE_FIRST = 2 * 60.0
WELL_KNOWN_FAILURE_CACHE_MAX = 3600.0
#: How long after a successful answer expires it is still used while refreshes fail.
WELL_KNOWN_STALE_GRACE = 3600.0
#: Most SRV targets kept for one name.
MAX_SRV_TARGETS = 16
#: Most server names whose well-known answer is remembered.
WELL_KNOWN_CACHE_ENTRIES = 10_000

#: Retransmission timeouts for one SRV lookup (seconds; the sum bounds the wait).
_DNS_TIMEOUTS = (1, 3, 5)

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")


class DiscoveryError(MatrixError):
    """A server name cannot be resolved (malformed name or nothing to connect to)."""

    def __init__(self, msg: str, server_name: str = "") -> None:
        super().__init__(502, "M_UNKNOWN", msg)
        self.server_name = server_name


class Method(enum.Enum):
    """Which step of the spec's algorithm produced a resolution."""

    IP_LITERAL = "ip_literal"  # step 1
    EXPLICIT_PORT = "explicit_port"  # step 2
    WELL_KNOWN_IP_LITERAL = "well_known_ip_literal"  # step 3.1
    WELL_KNOWN_EXPLICIT_PORT = "well_known_explicit_port"  # step 3.2
    WELL_KNOWN_SRV = "well_known_srv"  # step 3.3
    WELL_KNOWN_SRV_LEGACY = "well_known_srv_legacy"  # step 3.4 (deprecated)
    WELL_KNOWN_DEFAULT_PORT = "well_known_default_port"  # step 3.5
    SRV = "srv"  # step 4
    SRV_LEGACY = "srv_legacy"  # step 5 (deprecated)
    DEFAULT_PORT = "default_port"  # step 6


@attrs.frozen(slots=True)
class Target:
    """One place to connect: a host name or IP address (no brackets) and a port."""

    host: str
    port: int


@attrs.frozen(slots=True)
class ServerResolution:
    """Where and how to talk to a server.

    ``targets`` are tried in order (SRV records give several). ``host_header`` is
    the ``Host`` header to send; ``tls_server_name`` is the name the certificate
    must be valid for (and the SNI, unless it is an IP address). ``steps`` is a
    human-readable account of how the answer was found.
    """

    server_name: str
    targets: tuple[Target, ...]
    host_header: str
    tls_server_name: str
    method: Method
    delegated_name: str | None = None
    steps: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return self.targets[0].host

    @property
    def port(self) -> int:
        return self.targets[0].port


@attrs.frozen(slots=True)
class HttpResponse:
    """A raw HTTP response as the well-known fetcher returns it.

    ``headers`` has lower-cased names (first value of each).
    """

    code: int
    headers: Mapping[str, str]
    body: bytes


class IWellKnownFetcher(Interface):
    """Performs one HTTPS GET without following redirects."""

    def fetch(url: str, max_size: int) -> Any:
        """Deferred :class:`HttpResponse`. Fails (with any exception) when the server
        cannot be reached, the body is larger than ``max_size``, or TLS fails."""


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_server_name(name: str) -> tuple[str, int | None]:
    """Split a server name into host (IPv6 without brackets) and optional port.

    Raises :class:`DiscoveryError` when the name does not follow the grammar.
    """
    if not isinstance(name, str) or not name or len(name) > 255:
        raise DiscoveryError(f"Invalid server name {name!r}", str(name))
    port_text: str | None = None
    if name.startswith("["):
        end = name.find("]")
        if end == -1:
            raise DiscoveryError(f"Invalid server name {name!r}", name)
        host, rest = name[1:end], name[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise DiscoveryError(f"Invalid IPv6 literal in {name!r}", name) from None
        if rest:
            if not rest.startswith(":"):
                raise DiscoveryError(f"Invalid server name {name!r}", name)
            port_text = rest[1:]
    else:
        host, sep, port_part = name.partition(":")
        if sep:
            port_text = port_part
        if not _HOSTNAME_RE.match(host):
            raise DiscoveryError(f"Invalid host name in server name {name!r}", name)
    port: int | None = None
    if port_text is not None:
        if not _PORT_RE.match(port_text) or not 0 < int(port_text) < 65536:
            raise DiscoveryError(f"Invalid port in server name {name!r}", name)
        port = int(port_text)
    return host, port


def _parse_cache_control(value: str | None) -> float | None:
    """The max-age of a Cache-Control header, 0 for no-store/no-cache, None if absent."""
    if not value:
        return None
    max_age: float | None = None
    for directive in value.split(","):
        name, _, arg = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age":
            arg = arg.strip().strip('"')
            if arg.isdigit():
                max_age = float(int(arg[:12]))
    return max_age


@attrs.frozen(slots=True)
class _WellKnownEntry:
    expires: float
    delegated: str | None  # None: the lookup failed
    detail: str
    failures: int = 0
    #: When the last successful answer stopped being fresh (None: never succeeded).
    valid_until: float | None = None


def order_srv_records(
    records: Sequence[dns.Record_SRV], rng: Callable[[], float] = random.random
) -> list[dns.Record_SRV]:
    """Order SRV records as RFC 2782 says: ascending priority, weighted random
    within a priority."""
    result: list[dns.Record_SRV] = []
    for priority in sorted({r.priority for r in records}):
        group = [r for r in records if r.priority == priority]
        while group:
            total = sum(r.weight for r in group)
            if total == 0:
                result.extend(group)
                break
            point = rng() * total
            running = 0
            chosen = group[-1]
            for r in group:
                running += r.weight
                if running > point:
                    chosen = r
                    break
            result.append(chosen)
            group.remove(chosen)
    return result


class ServerResolver:
    """Implements "Resolving server names", caching well-known answers.

    :param dns_resolver: the DNS resolver for SRV lookups; ``None`` means
        ``twisted.names.client.getResolver()``, created on first use.
    :param well_known_fetcher: performs the well-known HTTPS GETs.
    :param clock: for cache expiry and the well-known timeout.
    """

    def __init__(
        self,
        dns_resolver: IResolver | None,
        well_known_fetcher: IWellKnownFetcher,
        clock: IReactorTime,
        *,
        rng: Callable[[], float] = random.random,
        well_known_timeout: float = WELL_KNOWN_TIMEOUT,
    ) -> None:
        self._dns_resolver = dns_resolver
        self._fetcher = well_known_fetcher
        self._clock = clock
        self._rng = rng
        self._well_known_timeout = well_known_timeout
        self._cache: dict[str, _WellKnownEntry] = {}
        # One well-known lookup in flight per name; later callers wait on it.
        self._pending: dict[str, list[defer.Deferred[_WellKnownEntry]]] = {}

    async def _resolve(self, server_name: str) -> ServerResolution:
        host, port = parse_server_name(server_name)
        steps: list[str] = []
        if is_ip_literal(host):
            steps.append(f"{host} is an IP literal: connect directly")
            return ServerResolution(
                server_name=server_name,
                targets=(Target(host, port or DEFAULT_PORT),),
                host_header=server_name,
                tls_server_name=host,
                method=Method.IP_LITERAL,
                steps=tuple(steps),
            )
        if port is not None:
            steps.append(f"{server_name} has an explicit port: connect directly")
            return ServerResolution(
                server_name=server_name,
                targets=(Target(host, port),),
                host_header=server_name,
                tls_server_name=host,
                method=Method.EXPLICIT_PORT,
                steps=tuple(steps),
            )

        entry = await self._well_known(host)
        steps.append(entry.detail)
        if entry.delegated is not None:
            delegated = entry.delegated
            d_host, d_port = parse_server_name(delegated)
            if is_ip_literal(d_host):
                steps.append(f"delegated to IP literal {delegated}: connect directly")
                return ServerResolution(
                    server_name=server_name,
                    targets=(Target(d_host, d_port or DEFAULT_PORT),),
                    host_header=delegated,
                    tls_server_name=d_host,
                    method=Method.WELL_KNOWN_IP_LITERAL,
                    delegated_name=delegated,
                    steps=tuple(steps),
                )
            if d_port is not None:
                steps.append(f"delegated to {delegated} with explicit port: connect directly")
                return ServerResolution(
                    server_name=server_name,
                    targets=(Target(d_host, d_port),),
                    host_header=delegated,
                    tls_server_name=d_host,
                    method=Method.WELL_KNOWN_EXPLICIT_PORT,
                    delegated_name=delegated,
                    steps=tuple(steps),
                )
            targets, method = await self._srv_or_default(d_host, steps, delegated=True)
            return ServerResolution(
                server_name=server_name,
                targets=targets,
                host_header=d_host,
                tls_server_name=d_host,
                method=method,
                delegated_name=delegated,
                steps=tuple(steps),
            )
        targets, method = await self._srv_or_default(host, steps, delegated=False)
        return ServerResolution(
            server_name=server_name,
            targets=targets,
            host_header=host,
            tls_server_name=host,
            method=method,
            steps=tuple(steps),
        )

    def resolve(self, server_name: str) -> defer.Deferred[ServerResolution]:
        """Deferred :class:`ServerResolution`; fails only with :class:`DiscoveryError`."""
        return defer.ensureDeferred(self._resolve(server_name))

    async def _srv_or_default(
        self, host: str, steps: list[str], *, delegated: bool
    ) -> tuple[tuple[Target, ...], Method]:
        for service, method in (
            ("_matrix-fed._tcp", Method.WELL_KNOWN_SRV if delegated else Method.SRV),
            ("_matrix._tcp", Method.WELL_KNOWN_SRV_LEGACY if delegated else Method.SRV_LEGACY),
        ):
            name = f"{service}.{host}"
            records, detail = await self._lookup_srv(name)
            steps.append(detail)
            if records:
                ordered = order_srv_records(records, self._rng)
                return tuple(Target(_srv_target(r) or "", r.port) for r in ordered), method
        steps.append(f"no SRV record: connect to {host} port {DEFAULT_PORT}")
        return (
            (Target(host, DEFAULT_PORT),),
            Method.WELL_KNOWN_DEFAULT_PORT if delegated else Method.DEFAULT_PORT,
        )

    def _dns(self) -> IResolver:
        if self._dns_resolver is None:
            from twisted.names import client

            self._dns_resolver = client.getResolver()  # type: ignore[no-untyped-call]
        return self._dns_resolver

    async def _lookup_srv(self, name: str) -> tuple[list[dns.Record_SRV], str]:
        try:
            # Twisted annotates the result as three records; it is three lists of them.
            result: Any = await self._dns().lookupService(name, _DNS_TIMEOUTS)
            answers = list(result[0])
        except DNSNameError:
            return [], f"SRV {name}: no such record"
        except Exception as e:
            # A DNS failure is treated like an absent record: the spec's fallbacks
            # still give a usable answer and TLS still proves the target's identity.
            return [], f"SRV {name}: lookup failed ({type(e).__name__})"
        records = [
            a.payload
            for a in answers
            if a.type == dns.SRV and isinstance(a.payload, dns.Record_SRV)
        ]
        # A lone "." target means "service decidedly not available here" (RFC 2782);
        # a target that is not a host name is unusable (DNS answers are remote input).
        records = [r for r in records if _srv_target(r) is not None][:MAX_SRV_TARGETS]
        if not records:
            return [], f"SRV {name}: no usable record"
        shown = ", ".join(
            f"{_srv_target(r)}:{r.port} (priority {r.priority}, weight {r.weight})" for r in records
        )
        return records, f"SRV {name}: {shown}"

    # -- well-known ----------------------------------------------------------------

    def _well_known(self, host: str) -> defer.Deferred[_WellKnownEntry]:
        now = self._clock.seconds()
        cached = self._cache.get(host)
        if cached is not None and cached.expires > now:
            return defer.succeed(attrs.evolve(cached, detail=cached.detail + " (cached)"))
        waiter: defer.Deferred[_WellKnownEntry] = defer.Deferred()
        if host in self._pending:
            self._pending[host].append(waiter)
            return waiter
        self._pending[host] = [waiter]
        previous = cached

        def done(entry: _WellKnownEntry) -> None:
            self._store(host, entry)
            for w in self._pending.pop(host, []):
                if not w.called:  # a caller may have cancelled its wait
                    w.callback(entry)

        def crashed(f: Failure) -> None:
            # _fetch_well_known turns every error into an entry; this is a last guard
            # so that waiters never hang.
            for w in self._pending.pop(host, []):
                if not w.called:
                    w.errback(DiscoveryError(f"well-known lookup crashed: {f.value!r}"[:200], host))

        d = defer.ensureDeferred(self._fetch_well_known(host, previous))
        d.addCallbacks(done, crashed)
        return waiter

    def _store(self, host: str, entry: _WellKnownEntry) -> None:
        self._cache.pop(host, None)
        while len(self._cache) >= WELL_KNOWN_CACHE_ENTRIES:
            del self._cache[next(iter(self._cache))]
        self._cache[host] = entry

    async def _fetch_well_known(
        self, host: str, previous: _WellKnownEntry | None
    ) -> _WellKnownEntry:
        """Never fails: errors become a cached failure entry."""
        url = f"https://{host}/.well-known/matrix/server"
        try:
            d = defer.ensureDeferred(self._follow(url))
            d.addTimeout(self._well_known_timeout, self._clock)
            response, final_url = await d
            delegated = self._parse_well_known(response)
        except defer.TimeoutError:
            return self._failure(host, previous, "timed out")
        except _WellKnownInvalid as e:
            return self._failure(host, previous, str(e))
        except Exception as e:
            return self._failure(host, previous, f"{type(e).__name__}: {e}"[:200])
        max_age = _parse_cache_control(response.headers.get("cache-control"))
        lifetime = WELL_KNOWN_DEFAULT_CACHE if max_age is None else max_age
        lifetime = min(max(lifetime, WELL_KNOWN_MIN_CACHE), WELL_KNOWN_MAX_CACHE)
        via = "" if final_url == url else f" (via {final_url})"
        expires = self._clock.seconds() + lifetime
        return _WellKnownEntry(
            expires=expires,
            valid_until=expires,
            delegated=delegated,
            detail=f"well-known {url}{via}: m.server is {delegated!r}",
        )

    def _failure(self, host: str, previous: _WellKnownEntry | None, why: str) -> _WellKnownEntry:
        failures = (previous.failures if previous is not None else 0) + 1
        lifetime = min(
            WELL_KNOWN_FAILURE_CACHE_FIRST * 2 ** min(failures - 1, 16),
            WELL_KNOWN_FAILURE_CACHE_MAX,
        )
        now = self._clock.seconds()
        stale_since = previous.valid_until if previous is not None else None
        if (
            previous is not None
            and previous.delegated is not None
            and stale_since is not None
            and now - stale_since < WELL_KNOWN_STALE_GRACE
        ):
            # A delegation that worked a moment ago beats guessing: a short
            # well-known outage must not send traffic to the undelegated name.
            return _WellKnownEntry(
                expires=min(now + lifetime, stale_since + WELL_KNOWN_STALE_GRACE),
                delegated=previous.delegated,
                detail=f"well-known https://{host}/.well-known/matrix/server: refresh failed "
                f"({why}); still using m.server {previous.delegated!r} for now",
                failures=failures,
                valid_until=stale_since,
            )
        return _WellKnownEntry(
            expires=now + lifetime,
            delegated=None,
            detail=f"well-known https://{host}/.well-known/matrix/server: invalid ({why})",
            failures=failures,
        )

    async def _follow(self, url: str) -> tuple[HttpResponse, str]:
        seen = {url}
        for _ in range(WELL_KNOWN_MAX_REDIRECTS + 1):
            response: HttpResponse = await self._fetcher.fetch(url, WELL_KNOWN_MAX_SIZE)
            if response.code in (301, 302, 303, 307, 308):
                location = response.headers.get("location")
                if not location:
                    raise _WellKnownInvalid(f"redirect {response.code} without Location")
                url = urljoin(url, location)
                if urlsplit(url).scheme != "https":
                    raise _WellKnownInvalid(f"redirect to non-HTTPS {url[:100]}")
                if url in seen:
                    raise _WellKnownInvalid("redirect loop")
                seen.add(url)
                continue
            return response, url
        raise _WellKnownInvalid("too many redirects")

    @staticmethod
    def _parse_well_known(response: HttpResponse) -> str:
        if response.code != 200:
            raise _WellKnownInvalid(f"HTTP {response.code}")
        if len(response.body) > WELL_KNOWN_MAX_SIZE:
            raise _WellKnownInvalid("body too large")
        try:
            body = decode_json(response.body)
        except MatrixError as e:
            raise _WellKnownInvalid(f"bad JSON: {e.msg}") from None
        if not isinstance(body, dict):
            raise _WellKnownInvalid("body is not a JSON object")
        delegated = body.get("m.server")
        if not isinstance(delegated, str):
            raise _WellKnownInvalid("no m.server string")
        try:
            parse_server_name(delegated)
        except DiscoveryError:
            raise _WellKnownInvalid(f"m.server {delegated[:100]!r} is not a server name") from None
        return delegated

    def forget(self, server_name: str) -> None:
        """Drop the cached well-known answer for ``server_name`` (e.g. after an operator fix)."""
        self._cache.pop(server_name, None)


class _WellKnownInvalid(Exception):
    pass


def _srv_target(record: dns.Record_SRV) -> str | None:
    """The SRV record's target host, or ``None`` when it is "." or not a host name."""
    name = record.target.name.decode("ascii", errors="replace").rstrip(".")
    if not name or not _HOSTNAME_RE.match(name) or not 0 < record.port < 65536:
        return None
    return name
