"""Test helpers for the client transport: a throwaway CA and a scriptable TLS server.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor
from twisted.internet.ssl import PrivateCertificate
from twisted.web import resource, server

from fedlib.canonical import encode_canonical_json

_ONE_DAY = datetime.timedelta(days=1)


class TestCA:
    """A CA and certificates it issues, as PEM."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlib test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _ONE_DAY)
            .not_valid_after(now + _ONE_DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)
        fd, self.path = tempfile.mkstemp(suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(self.pem)

    def cleanup(self) -> None:
        os.unlink(self.path)

    def issue(self, dns_names: list[str] = (), ips: list[str] = ()) -> bytes:  # type: ignore[assignment]
        """Key and certificate PEM for the given names."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cn = (list(dns_names) + list(ips) + ["leaf"])[0]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _ONE_DAY)
            .not_valid_after(now + _ONE_DAY)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem + cert.public_bytes(serialization.Encoding.PEM)


Handler = Callable[[Any], Any]


class _Root(resource.Resource):
    isLeaf = True

    def __init__(self, srv: ScriptedServer) -> None:
        super().__init__()
        self._srv = srv

    def render(self, request: Any) -> Any:
        body = request.content.read()
        path = request.uri.decode("ascii")
        self._srv.requests.append(
            {
                "method": request.method.decode("ascii"),
                "uri": path,
                "host": (request.getHeader("host") or ""),
                "authorization": request.getHeader("authorization"),
                "body": body,
            }
        )
        route = path.split("?", 1)[0]
        for prefix, handler in self._srv.routes:
            if route.startswith(prefix):
                result = handler(request)
                if isinstance(result, defer.Deferred):

                    def finish(value: Any) -> None:
                        self._write(request, value)
                        request.finish()

                    result.addCallback(finish)
                    return server.NOT_DONE_YET
                return self._write(request, result, finish=False)
        request.setResponseCode(404)
        return b'{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}'

    @staticmethod
    def _write(request: Any, value: Any, finish: bool = True) -> Any:
        code, payload = value if isinstance(value, tuple) else (200, value)
        request.setResponseCode(code)
        if not isinstance(payload, bytes):
            payload = encode_canonical_json(payload)
            request.setHeader("content-type", "application/json")
        if finish:
            request.write(payload)
            return None
        return payload


class _TrackingSite(server.Site):
    """A Site that can drop every connection it accepted."""

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.open: dict[Any, defer.Deferred[None]] = {}

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        closed: defer.Deferred[None] = defer.Deferred()
        self.open[proto] = closed
        lost = proto.connectionLost

        def connection_lost(reason: Any) -> None:
            self.open.pop(proto, None)
            try:
                lost(reason)
            finally:
                closed.callback(None)

        proto.connectionLost = connection_lost
        return proto

    def close_all(self) -> defer.Deferred[Any]:
        waits = []
        for proto, closed in list(self.open.items()):
            # HTTP channels sit behind a wrapper that does not expose the transport.
            channel = getattr(proto, "_channel", proto)
            transport = getattr(channel, "transport", None)
            if transport is not None:
                waits.append(closed)
                transport.abortConnection()
        return defer.gatherResults(waits)


class ScriptedServer:
    """A TLS HTTP server on 127.0.0.1 (or ``interface``, e.g. ``::1``); ``routes`` map path prefixes to handlers
    returning ``(code, body)`` or ``body`` (dict → JSON, bytes as is) or a Deferred."""

    def __init__(self, cert_pem: bytes, interface: str = "127.0.0.1") -> None:
        self.routes: list[tuple[str, Handler]] = []
        self.requests: list[dict[str, Any]] = []
        self.site = _TrackingSite(_Root(self))
        self.site.displayTracebacks = False
        options = PrivateCertificate.loadPEM(cert_pem).options()
        self.port = reactor.listenSSL(0, self.site, options, interface=interface)  # type: ignore[attr-defined]
        self.port_number: int = self.port.getHost().port

    def route(self, prefix: str, handler: Handler) -> None:
        self.routes.insert(0, (prefix, handler))

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop listening and drop connections still open (peers keep pooled ones)."""
        yield defer.maybeDeferred(self.port.stopListening)
        yield self.site.close_all()
