"""The endpoint handlers, one module per API family."""

from __future__ import annotations

from fedlib.server.context import ServerContext
from fedlib.server.resource import Route

__all__ = ["all_routes"]


def all_routes(ctx: ServerContext) -> list[Route]:
    """Every route the federation Resource tree serves."""
    from fedlib.server.handlers import (
        events,
        hierarchy,
        keys,
        membership,
        query,
        transactions,
        version,
    )

    routes: list[Route] = []
    for module in (version, keys, query, hierarchy, transactions, events, membership):
        routes.extend(module.routes(ctx))
    return routes
