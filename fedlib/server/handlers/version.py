"""``GET /_matrix/federation/v1/version`` and ``/.well-known/matrix/server``."""

from __future__ import annotations

from typing import Any

from fedlib.server.context import ServerContext
from fedlib.server.errors import not_found
from fedlib.server.request import FederationRequest
from fedlib.server.resource import Route

__all__ = ["routes"]


def routes(ctx: ServerContext) -> list[Route]:
    async def version(request: FederationRequest) -> tuple[int, Any]:
        return 200, {
            "server": {"name": ctx.config.software_name, "version": ctx.config.software_version}
        }

    async def well_known(request: FederationRequest) -> tuple[int, Any]:
        if ctx.config.well_known_server is None:
            raise not_found("No well-known delegation")
        return 200, {"m.server": ctx.config.well_known_server}

    return [
        Route("GET", "/_matrix/federation/v1/version", version, authenticated=False),
        Route("GET", "/.well-known/matrix/server", well_known, authenticated=False),
    ]
