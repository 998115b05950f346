"""``open_store(url)``: pick and open a store from a URL."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twisted.internet import defer

from fedlib.storage.memory import MemoryStore


def open_store(url: str, reactor: Any = None) -> defer.Deferred[Any]:
    """Deferred[IFederationStore] for:

    - ``memory:`` — a fresh :class:`MemoryStore`;
    - ``sqlite:///absolute/path.db`` or ``sqlite:relative/path.db`` — :class:`SqliteStore`;
    - ``postgresql://user@host/db`` (or ``postgres://``), optionally with
      ``?schema=NAME`` (taken out before connecting) — :class:`PostgresStore`.

    Schemas are migrated before the Deferred fires.
    """
    if url == "memory:":
        return defer.succeed(MemoryStore())
    if url.startswith("sqlite:"):
        from fedlib.storage.sqlite import SqliteStore

        rest = url[len("sqlite:") :]
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            return defer.fail(ValueError(f"no database path in {url!r}"))
        return SqliteStore.open(path, reactor)
    if url.startswith(("postgresql://", "postgres://")):
        from fedlib.storage.postgres import PostgresStore

        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        schema = next((v for k, v in query if k == "schema"), None)
        rest = urlencode([(k, v) for k, v in query if k != "schema"])
        return PostgresStore.open(urlunsplit(parts._replace(query=rest)), schema, reactor)
    return defer.fail(ValueError(f"unsupported store URL {url!r}"))
