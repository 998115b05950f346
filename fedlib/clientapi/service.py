"""The client listener as a unit: its store, hooks, endpoints and ports.

Wiring order matters because a :class:`~fedlib.service.FederationService` takes
its hooks at construction::

    client = ClientService(store, server_name, listen=["tcp:8008:interface=127.0.0.1"])
    fed = FederationService(attrs.evolve(config, hooks=client.hooks))
    await fed.startService()
    await client.start(fed)        # opens the client listener

``twistd fedlib --client-listen ENDPOINT`` does exactly this.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.web.server import Site

from fedlib.clientapi.api import ClientAPI
from fedlib.clientapi.hooks import ClientHooks, Notifier
from fedlib.clientapi.passwords import PasswordHasher
from fedlib.clientapi.resource import ClientResource

__all__ = ["ClientService"]

log = logging.getLogger(__name__)


class ClientService:
    """Owns the client API of one federation service; ``store`` provides
    :class:`~fedlib.clientapi.store.IClientStore` and is closed by :meth:`stop`."""

    def __init__(
        self,
        store: Any,
        server_name: str,
        *,
        listen: Sequence[str] = (),
        enable_registration: bool = False,
        hasher: PasswordHasher | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.store = store
        self.server_name = server_name
        self.listen = tuple(listen)
        self.enable_registration = enable_registration
        self.hasher = hasher
        self.reactor = reactor
        self.notifier = Notifier()
        #: Pass these as ``FederationConfig.hooks``.
        self.hooks = ClientHooks(server_name, store, self.notifier)
        self.api: ClientAPI | None = None
        self.resource: ClientResource | None = None
        self.ports: list[Any] = []

    def site(self) -> Site:
        """A Site serving :attr:`resource` (after :meth:`start`)."""
        from fedlib.server.resource import build_site

        assert self.resource is not None and self.api is not None
        return build_site(self.resource, self.api.max_body)

    @defer.inlineCallbacks
    def start(self, federation: Any) -> Any:
        """Build the endpoints over the running ``federation`` service and open
        the listeners."""
        self.hooks.federation_store = federation.store
        self.api = ClientAPI(
            federation,
            self.store,
            self.notifier,
            enable_registration=self.enable_registration,
            hasher=self.hasher,
            clock=self.reactor,
        )
        self.resource = ClientResource(self.api)
        set_meta = getattr(self.store, "set_meta", None)
        if set_meta is not None:
            yield set_meta("server_name", self.server_name)
        self.notifier.advance((yield self.store.get_head()))
        site = self.site()
        for description in self.listen:
            endpoint = serverFromString(self.reactor, description)  # type: ignore[no-untyped-call]
            port = yield endpoint.listen(site)
            self.ports.append(port)
            log.info("Client API listener on %s", description)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        ports, self.ports = self.ports, []
        for port in ports:
            yield defer.maybeDeferred(port.stopListening)
        yield defer.maybeDeferred(self.store.close)
