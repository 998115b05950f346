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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
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
        self._trust_root: Any | None = None
        if not verify_tls:
            _warn_insecure()
        elif ca_bundle is not None:
            self._trust_root = load_trust_root(ca_bundle)

    def creator_for(self, tls_server_name: str) -> Any:
        """An ``IOpenSSLClientConnectionCreator`` checking the certificate against
        ``tls_server_name`` (a DNS name or an IP address) and sending it as SNI when
        it is a DNS name."""
        if not self.verify_tls:
            return _InsecureConnectionCreator(tls_server_name)
        trust = self._trust_root if self._trust_root is not None else platformTrust()  # type: ignore[no-untyped-call]
        return optionsForClientTLS(tls_server_name, trustRoot=trust)

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
    ) -> None:
        self._reactor = reactor
        self._resolution = resolution
        self._tls = tls
        self._timeout = connect_timeout
        self._overrides = host_overrides

    async def _connect(self, factory: IProtocolFactory) -> Any:
        last: Failure | None = None
        creator = self._tls.creator_for(self._resolution.tls_server_name)
        for target in self._resolution.targets:
            host = self._overrides.get(target.host, target.host)
            endpoint = wrapClientTLS(
                creator,
                HostnameEndpoint(self._reactor, host, target.port, timeout=self._timeout),
            )
            try:
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
    ) -> None:
        self._reactor = reactor
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
        headers.setRawHeaders(b"Host", [resolution.host_header.encode("idna")])
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
        self, reactor: Any, policy: IPolicyForHTTPS, timeout: float, overrides: Mapping[str, str]
    ) -> None:
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
            HostnameEndpoint(
                self._reactor, self._overrides.get(host, host), uri.port, timeout=self._timeout
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
    ) -> None:
        tls = tls if tls is not None else TLSOptions()
        pool = HTTPConnectionPool(reactor, persistent=False)  # type: ignore[no-untyped-call]
        self._agent = Agent.usingEndpointFactory(  # type: ignore[no-untyped-call]
            reactor,
            _WebEndpointFactory(reactor, tls.web_policy(), connect_timeout, host_overrides or {}),
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
