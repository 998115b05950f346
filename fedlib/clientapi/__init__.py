"""A subset of the Matrix Client-Server API over fedlib's embedding API.

Enough for a real client (matrix-nio, Element) to register, log in, create and
join rooms (locally and over federation), send and read messages and ``/sync``.
It is built only on the public embedding API (:class:`fedlib.service.FederationService`,
:class:`fedlib.hooks.IFederationHooks`, the store interface), as the worked example
of embedding fedlib. See ``docs/clientapi.rst``.
"""

from fedlib.clientapi.api import ClientAPI
from fedlib.clientapi.hooks import ClientHooks, Notifier
from fedlib.clientapi.passwords import PasswordHasher
from fedlib.clientapi.resource import ClientResource
from fedlib.clientapi.service import ClientService
from fedlib.clientapi.store import IClientStore, SQLiteClientStore

__all__ = [
    "ClientAPI",
    "ClientHooks",
    "ClientResource",
    "ClientService",
    "IClientStore",
    "Notifier",
    "PasswordHasher",
    "SQLiteClientStore",
]
