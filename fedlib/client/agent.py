"""Connections to other servers: TLS per the spec's discovery rules, pooled.

:class:`MatrixFederationAgent` is a Twisted :class:`~twisted.web.iweb.IAgent` for
``matrix-federation://<server_name>/<path>`` URIs. It resolves the server name with
a :class:`~fedlib.client.discovery.ServerResolver`, sends the ``Host`` header the
resolution names, connects over TLS with SNI and a service-identity check against
the resolution's ``tls_server_name``, and keeps connections in an
:class:`~twisted.web.client.HTTPConnectionPool`.

:class:`HttpsWellKnownFetcher` is the production
:class:`~fedlib.client.discovery.IWellKnownFetcher` (ordinary web PKI, by host name).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IHostnameResolver,
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    IAgent,
    IAgentEndpointFactory,
    IBodyProducer,
    IPolicyForHTTPS,
    IResponse,
)
from zope.interface import implementer

from fedlib.client.discovery import (
    HttpResponse,
    IWellKnownFetcher,
    ServerResolution,
    ServerResolver,
)

log = Logger()

#: URI scheme understood by :class:`MatrixFederationAgent`.
SCHEME = b"matrix-federation"
#: Default TCP connect timeout per target, in seconds.
CONNECT_TIMEOUT = 10.0

_warned_insecure = False
#: TLS connection creators kept per certificate name.
_MAX_CREATORS = 1024


#: Address ranges a federation server should not be made to connect to by remote
#: input (server names in events, notary queries...): private, loopback,
#: link-local, multicast and reserved networks. Opt in with ``IPBlocklist()``.
DEFAULT_BLOCKED_RANGES: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "::/128",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)


class BlockedAddressError(Exception):
    """Every address of a destination is in a blocked range."""


class IPBlocklist:
    """Which IP addresses outbound connections may not reach.

    :param blocked: CIDR ranges refused (default: :data:`DEFAULT_BLOCKED_RANGES`).
    :param allowed: CIDR ranges allowed even inside a blocked range.
    """

    def __init__(
        self, blocked: Sequence[str] = DEFAULT_BLOCKED_RANGES, allowed: Sequence[str] = ()
    ) -> None:
        self._blocked = [ipaddress.ip_network(n) for n in blocked]
        self._allowed = [ipaddress.ip_network(n) for n in allowed]

    def is_blocked(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return True  # not an address at all: refuse rather than guess
        if any(ip in n for n in self._allowed):
            return False
        return any(ip in n for n in self._blocked)


@implementer(IResolutionReceiver)
class _FilteringReceiver:
    def __init__(self, outer: Any, blocklist: IPBlocklist, host: str) -> None:
        self._outer = outer
        self._blocklist = blocklist
        self._host = host
        self._dropped = 0

    def resolutionBegan(self, resolutionInProgress: Any) -> None:
        self._outer.resolutionBegan(resolutionInProgress)

    def addressResolved(self, address: Any) -> None:
        if self._blocklist.is_blocked(getattr(address, "host", "")):
            self._dropped += 1
            return
        self._outer.addressResolved(address)

    def resolutionComplete(self) -> None:
        if self._dropped:
            log.info("Dropped {n} blocked address(es) of {host}", n=self._dropped, host=self._host)
        self._outer.resolutionComplete()


@implementer(IHostnameResolver)
class _FilteringResolver:
    """Resolves like the reactor but drops blocked addresses."""

    def __init__(self, real: Any, blocklist: IPBlocklist) -> None:
        self._real = real
        self._blocklist = blocklist

    def resolveHostName(
        self,
        resolutionReceiver: Any,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> Any:
        return self._real.resolveHostName(
            _FilteringReceiver(resolutionReceiver, self._blocklist, hostName),
            hostName,
            portNumber,
            addressTypes,
            transportSemantics,
        )


@implementer(IReactorPluggableNameResolver)
class _ReactorWithResolver:
    """The reactor, seen through a different name resolver (for HostnameEndpoint)."""

    def __init__(self, reactor: Any, resolver: Any) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver: Any) -> Any:
        raise NotImplementedError("read-only view of the reactor")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def _endpoint(
    reactor: Any,
    host: str,
    port: int,
    timeout: float,
    blocklist: IPBlocklist | None,
) -> Any:
    """A HostnameEndpoint that honours ``blocklist`` for literals and DNS answers."""
    if blocklist is None:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    if _is_ip(host):
        if blocklist.is_blocked(host):
            raise BlockedAddressError(f"{host} is in a blocked address range")
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    view = _ReactorWithResolver(reactor, _FilteringResolver(reactor.nameResolver, blocklist))
    return HostnameEndpoint(view, host, port, timeout=timeout)


class ResponseTooLargeError(Exception):
    """The response body was larger than allowed; the connection was dropped."""


class TruncatedResponseError(Exception):
    """The connection closed before the whole response body arrived."""


def _warn_insecure() -> None:
    global _warned_insecure
    if not _warned_insecure:
        _warned_insecure = True
        log.warn(
            "TLS CERTIFICATE VERIFICATION IS DISABLED for federation traffic. "
            "Anyone on the network path can impersonate remote servers. "
            "Use this only for tests on loopback."
        )


def load_trust_root(ca_bundle: str | Path) -> Any:
    """A trust root holding every PEM certificate in ``ca_bundle``."""
    data = Path(ca_bundle).read_bytes()
    marker = b"-----END CERTIFICATE-----"
    certs = [
        Certificate.loadPEM(chunk + marker)
        for chunk in data.split(marker)
        if b"-----BEGIN CERTIFICATE-----" in chunk
    ]
    if not certs:
        raise ValueError(f"No PEM certificate in {ca_bundle}")
    return trustRootFromCertificates(certs)  # type: ignore[no-untyped-call]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class _InsecureConnectionCreator:
    """TLS with SNI but without any certificate check (tests on loopback only)."""

    def __init__(self, server_name: str) -> None:
        self._sni = None if _is_ip(server_name) else server_name.encode("idna")
        self._context = CertificateOptions(verify=False).getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


@implementer(IPolicyForHTTPS)
class _InsecurePolicy:
    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return _InsecureConnectionCreator(hostname.decode("ascii"))


class TLSOptions:
    """Builds TLS connection creators: verified against a name by default.

    :param verify_tls: ``False`` turns certificate checks off (loud warning, once).
    :param ca_bundle: PEM file of trusted CAs instead of the platform's.
    """

    def __init__(self, *, verify_tls: bool = True, ca_bundle: str | Path | None = None) -> None:
        self.verify_tls = verify_tls
        self._creators: dict[str, Any] = {}
        self._trust_root: Any | None = None
        if not verify_tls:
            _warn_insecure()
        elif ca_bundle is not None:
            self._trust_root = load_trust_root(ca_bundle)

    def creator_for(self, tls_server_name: str) -> Any:
        """An ``IOpenSSLClientConnectionCreator`` checking the certificate against
        ``tls_server_name`` (a DNS name or an IP address) and sending it as SNI when
        it is a DNS name."""
        creator = self._creators.get(tls_server_name)
        if creator is None:
            # Building one loads the trust store: do it once per name, not per connection.
            if not self.verify_tls:
                creator = _InsecureConnectionCreator(tls_server_name)
            else:
                trust = (
                    self._trust_root if self._trust_root is not None else platformTrust()  # type: ignore[no-untyped-call]
                )
                creator = optionsForClientTLS(tls_server_name, trustRoot=trust)
            if len(self._creators) >= _MAX_CREATORS:
                del self._creators[next(iter(self._creators))]
            self._creators[tls_server_name] = creator
        return creator

    def web_policy(self) -> IPolicyForHTTPS:
        """A policy for ordinary HTTPS (well-known), with the same trust settings."""
        if not self.verify_tls:
            return _InsecurePolicy()
        if self._trust_root is not None:
            return BrowserLikePolicyForHTTPS(trustRoot=self._trust_root)  # type: ignore[no-untyped-call]
        return BrowserLikePolicyForHTTPS()  # type: ignore[no-untyped-call]


@implementer(IStreamClientEndpoint)
class _FailoverEndpoint:
    """Connects to the resolution's targets in order, with TLS for its name."""

    def __init__(
        self,
        reactor: Any,
        resolution: ServerResolution,
        tls: TLSOptions,
        connect_timeout: float,
        host_overrides: Mapping[str, str],
        blocklist: IPBlocklist | None = None,
    ) -> None:
        self._reactor = reactor
        self._blocklist = blocklist
        self._resolution = resolution
        self._tls = tls
        self._timeout = connect_timeout
        self._overrides = host_overrides

    async def _connect(self, factory: IProtocolFactory) -> Any:
        last: Failure | None = None
        creator = self._tls.creator_for(self._resolution.tls_server_name)
        for target in self._resolution.targets:
            host = self._overrides.get(target.host, target.host)
            try:
                endpoint = wrapClientTLS(
                    creator,
                    _endpoint(self._reactor, host, target.port, self._timeout, self._blocklist),
                )
                return await endpoint.connect(factory)
            except defer.CancelledError:
                raise
            except Exception:
                last = Failure()  # type: ignore[no-untyped-call]
        assert last is not None
        last.raiseException()

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[Any]:
        return defer.ensureDeferred(self._connect(protocolFactory))


@implementer(IAgentEndpointFactory)
class _ResolvedEndpointFactory:
    def __init__(self, agent: MatrixFederationAgent) -> None:
        self._agent = agent

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        server_name = bytes.fromhex(uri.host.decode("ascii")).decode("utf-8")
        return self._agent._endpoint_for(server_name)


@implementer(IAgent)
class MatrixFederationAgent:
    """An IAgent for ``matrix-federation://<server_name>/<path-and-query>`` URIs.

    :param reactor: provides TCP, time and the DNS used for A/AAAA lookups.
    :param resolver: resolves server names (well-known, SRV).
    :param tls: TLS settings (verification on by default).
    :param pool: a connection pool (a persistent one is made when omitted).
    :param connect_timeout: per-target TCP connect timeout, seconds.
    :param host_overrides: maps host names to IP addresses to connect to instead
        of resolving them (like ``/etc/hosts``; the Host header and the TLS name
        are unchanged).
    :param ip_blocklist: refuse to connect to these addresses (IP literals and DNS
        answers alike); ``None`` allows everything.
    """

    def __init__(
        self,
        reactor: Any,
        resolver: ServerResolver,
        *,
        tls: TLSOptions | None = None,
        pool: HTTPConnectionPool | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        host_overrides: Mapping[str, str] | None = None,
        ip_blocklist: IPBlocklist | None = None,
    ) -> None:
        self._reactor = reactor
        self._blocklist = ip_blocklist
        self.resolver = resolver
        self.tls = tls if tls is not None else TLSOptions()
        if pool is None:
            pool = HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
            pool.maxPersistentPerHost = 5
            pool.cachedConnectionTimeout = 120
        self.pool = pool
        self._connect_timeout = connect_timeout
        self._overrides = dict(host_overrides or {})
        # The latest resolution per server name, read by the endpoint factory. Its
        # size is bounded by the number of destinations we talk to.
        self._resolutions: dict[str, ServerResolution] = {}
        self._agent = Agent.usingEndpointFactory(reactor, _ResolvedEndpointFactory(self), pool)  # type: ignore[no-untyped-call]

    def _endpoint_for(self, server_name: str) -> IStreamClientEndpoint:
        return _FailoverEndpoint(
            self._reactor,
            self._resolutions[server_name],
            self.tls,
            self._connect_timeout,
            self._overrides,
            self._blocklist,
        )

    async def _request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None,
        body_producer: IBodyProducer | None,
    ) -> IResponse:
        if not uri.startswith(SCHEME + b"://"):
            raise ValueError(f"Not a {SCHEME.decode()} URI: {uri[:100]!r}")
        rest = uri[len(SCHEME) + 3 :]
        slash = rest.find(b"/")
        if slash <= 0:
            raise ValueError(f"No path in {uri[:100]!r}")
        server_name = rest[:slash].decode("utf-8")
        path = rest[slash:]
        resolution: ServerResolution = await self.resolver.resolve(server_name)
        self._resolutions[server_name] = resolution
        headers = headers.copy() if headers is not None else Headers()
        headers.setRawHeaders(b"Host", [resolution.host_header.encode("ascii")])
        # The pool keys connections by the URI's host; a hex encoding of the server
        # name is a valid host for any server name (IPv6 literals included).
        inner = b"https://" + server_name.encode("utf-8").hex().encode("ascii") + b":443" + path
        response: IResponse = await self._agent.request(method, inner, headers, body_producer)
        return response

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> defer.Deferred[IResponse]:
        return defer.ensureDeferred(self._request(method, uri, headers, bodyProducer))


class _BoundedCollector(Protocol):
    def __init__(self, finished: defer.Deferred[bytes], max_size: int) -> None:
        self._finished: defer.Deferred[bytes] | None = finished
        self._max = max_size
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished is None:
            return
        self._size += len(data)
        if self._size > self._max:
            finished, self._finished = self._finished, None
            self._chunks = []
            # Dropping the connection stops the remote from streaming the rest.
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            finished.errback(ResponseTooLargeError(f"Response body over {self._max} bytes"))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        if self._finished is None:
            return
        finished, self._finished = self._finished, None
        if reason.check(ResponseDone, PotentialDataLoss):  # type: ignore[no-untyped-call]
            finished.callback(b"".join(self._chunks))
        else:
            finished.errback(TruncatedResponseError(f"Response body incomplete: {reason.value!r}"))


def read_body_bounded(response: IResponse, max_size: int) -> defer.Deferred[bytes]:
    """The whole body of ``response``, or :class:`ResponseTooLargeError` as soon as it
    exceeds ``max_size`` bytes (checked against Content-Length first), or
    :class:`TruncatedResponseError` when the connection drops early."""
    length = response.length
    if isinstance(length, int) and length > max_size:
        response.deliverBody(_Discard())  # type: ignore[no-untyped-call]
        return defer.fail(ResponseTooLargeError(f"Content-Length {length} over {max_size}"))
    finished: defer.Deferred[bytes] = defer.Deferred()
    response.deliverBody(_BoundedCollector(finished, max_size))  # type: ignore[no-untyped-call]
    return finished


class _Discard(Protocol):
    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def headers_dict(headers: Headers) -> dict[str, str]:
    """Lower-cased header names to their first value (latin-1 decoded)."""
    out: dict[str, str] = {}
    for name, values in headers.getAllRawHeaders():
        if values:
            out.setdefault(name.decode("latin-1").lower(), values[0].decode("latin-1"))
    return out


@implementer(IAgentEndpointFactory)
class _WebEndpointFactory:
    def __init__(
        self,
        reactor: Any,
        policy: IPolicyForHTTPS,
        timeout: float,
        overrides: Mapping[str, str],
        blocklist: IPBlocklist | None,
    ) -> None:
        self._blocklist = blocklist
        self._reactor = reactor
        self._policy = policy
        self._timeout = timeout
        self._overrides = overrides

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        creator = self._policy.creatorForNetloc(uri.host, uri.port)
        return wrapClientTLS(
            creator,
            _endpoint(
                self._reactor,
                self._overrides.get(host, host),
                uri.port,
                self._timeout,
                self._blocklist,
            ),
        )


@implementer(IWellKnownFetcher)
class HttpsWellKnownFetcher:
    """Fetches well-known documents over HTTPS (web PKI by host name; no redirects
    followed here: :class:`~fedlib.client.discovery.ServerResolver` does that)."""

    def __init__(
        self,
        reactor: Any,
        *,
        tls: TLSOptions | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        host_overrides: Mapping[str, str] | None = None,
        ip_blocklist: IPBlocklist | None = None,
    ) -> None:
        tls = tls if tls is not None else TLSOptions()
        pool = HTTPConnectionPool(reactor, persistent=False)  # type: ignore[no-untyped-call]
        self._agent = Agent.usingEndpointFactory(  # type: ignore[no-untyped-call]
            reactor,
            _WebEndpointFactory(
                reactor, tls.web_policy(), connect_timeout, host_overrides or {}, ip_blocklist
            ),
            pool,
        )

    async def _fetch(self, url: str, max_size: int) -> HttpResponse:
        if not url.startswith("https://"):
            raise ValueError("well-known must be fetched over HTTPS")
        response = await self._agent.request(
            b"GET", url.encode("ascii"), Headers({b"User-Agent": [b"fedlib"]})
        )
        body = await read_body_bounded(response, max_size)
        return HttpResponse(code=response.code, headers=headers_dict(response.headers), body=body)

    def fetch(self, url: str, max_size: int) -> defer.Deferred[HttpResponse]:
        return defer.ensureDeferred(self._fetch(url, max_size))
