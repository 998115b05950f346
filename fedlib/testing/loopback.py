"""Run a real :class:`~fedlib.service.FederationService` on 127.0.0.1 in a test.

Federation is TLS only and a server's name includes its port, so a test server
needs a certificate and must know its port before it has a name. :func:`start_loopback`
opens the TLS port first (port 0: the kernel picks), names the server
``127.0.0.1:<port>`` and then builds the service behind it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from fedlib.config import FederationConfig, Limits, TlsOptions
from fedlib.crypto.keys import load_or_create_signing_key
from fedlib.tls import ensure_self_signed

__all__ = ["LoopbackServer", "quiet_dns", "start_loopback", "tls_endpoint"]


def quiet_dns(testcase: Any) -> None:
    """Replace Twisted's global DNS resolver for the test's duration.

    The default resolver re-reads ``resolv.conf`` on a timer, which trial reports
    as a dirty reactor. Loopback tests use IP-literal server names and never
    resolve anything."""
    from twisted.names import client as dns_client

    resolver = dns_client.Resolver(servers=[("127.0.0.1", 53)])  # type: ignore[no-untyped-call]
    testcase.patch(dns_client, "theResolver", resolver)


def tls_endpoint(port: int, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> str:
    """A server endpoint description for TLS on 127.0.0.1:``port``."""

    def esc(p: str | os.PathLike[str]) -> str:
        return os.fspath(p).replace("\\", "\\\\").replace(":", "\\:")

    return f"ssl:{port}:interface=127.0.0.1:privateKey={esc(key)}:certKey={esc(cert)}"


class _Late(Resource):
    """Answers 503 until the real resource is plugged in."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.target: Any = None
        #: Requests being answered (so that stopping can wait for them).
        self.inflight = 0

    def render(self, request: Request) -> Any:  # type: ignore[override]
        self.inflight += 1

        def done(_: object) -> None:
            self.inflight -= 1

        request.notifyFinish().addBoth(done)  # type: ignore[no-untyped-call]
        if self.target is None:
            request.setResponseCode(503)
            return b'{"errcode":"M_UNKNOWN","error":"starting"}'
        result = self.target.render(request)
        return NOT_DONE_YET if result is NOT_DONE_YET else result


class _Tracker(WrappingFactory):
    """A factory remembering its open connections so that a test can close them:
    peers keep connections alive, and trial fails a test that leaves one open."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]

    @defer.inlineCallbacks
    def close_all(self, timeout: float = 5.0) -> Any:
        from twisted.internet import reactor

        for proto in list(self.protocols):
            if proto.transport is not None:
                proto.transport.abortConnection()
        deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
        while self.protocols and reactor.seconds() < deadline:  # type: ignore[attr-defined]
            yield task.deferLater(reactor, 0.01, lambda: None)


@attrs.define(eq=False)
class LoopbackServer:
    """A started :class:`FederationService` and its TLS port."""

    service: Any
    port: Any
    directory: Path
    tracker: Any = None
    front: Any = None

    @property
    def server_name(self) -> str:
        return str(self.service.config.server_name)

    def user(self, localpart: str) -> str:
        """The user ID ``@localpart:<server name>``."""
        return f"@{localpart}:{self.server_name}"

    @defer.inlineCallbacks
    def stop(self, grace: float = 10.0) -> Any:
        """Stop accepting connections, let requests being answered finish (up to
        ``grace`` seconds), close the remaining connections, then stop the
        service (which closes its store)."""
        from twisted.internet import reactor

        yield defer.maybeDeferred(self.port.stopListening)
        deadline = reactor.seconds() + grace  # type: ignore[attr-defined]
        while (
            self.front is not None and self.front.inflight and reactor.seconds() < deadline  # type: ignore[attr-defined]
        ):
            yield task.deferLater(reactor, 0.02, lambda: None)
        if self.tracker is not None:
            yield self.tracker.close_all()
        if self.service.running:
            yield self.service.stopService()


@defer.inlineCallbacks
def start_loopback(
    *,
    store: Any = None,
    database: str | None = None,
    directory: str | os.PathLike[str] | None = None,
    port: int = 0,
    reactor: Any = None,
    configure: Callable[[FederationConfig], FederationConfig] | None = None,
    **config_kwargs: Any,
) -> Any:
    """Deferred[:class:`LoopbackServer`]: a federation server on 127.0.0.1 with a
    self-signed certificate and certificate checks off (peers are on loopback).

    ``store`` is used as is, else ``database`` (a URL for
    :func:`fedlib.storage.open_store`), else a fresh memory store. ``directory``
    keeps the signing key and certificate (a temporary one by default); pass the
    same directory, database and ``port`` to restart "the same" server.
    ``config_kwargs`` go to :class:`FederationConfig` (``hooks=...``), and
    ``configure`` may adjust the finished config.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    from fedlib.server.resource import build_site
    from fedlib.service import FederationService
    from fedlib.storage import MemoryStore, open_store

    path = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="fedlib-"))
    path.mkdir(parents=True, exist_ok=True)
    cert, key = path / "tls.crt", path / "tls.key"
    ensure_self_signed(cert, key, "127.0.0.1")
    signing_key = load_or_create_signing_key(path / "signing.key")

    late = _Late()
    limits = config_kwargs.pop("limits", Limits())
    site = build_site(late, limits.max_request_body)
    tracker = _Tracker(site)
    listening = yield serverFromString(reactor, tls_endpoint(port, cert, key)).listen(tracker)  # type: ignore[no-untyped-call]
    try:
        if store is None:
            store = yield open_store(database, reactor) if database else MemoryStore()
        config = FederationConfig(
            f"127.0.0.1:{listening.getHost().port}",
            signing_key,
            store,
            tls=TlsOptions(verify=False),
            limits=limits,
            **config_kwargs,
        )
        if configure is not None:
            config = configure(config)
        service = FederationService(config, reactor=reactor)
        late.target = service.resource
        yield service.startService()
    except BaseException:
        yield listening.stopListening()
        raise
    return LoopbackServer(service, listening, path, tracker, late)
