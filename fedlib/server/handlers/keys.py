"""The key server: ``/_matrix/key/v2/server`` and the notary ``/_matrix/key/v2/query``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import defer

from fedlib.errors import MatrixError
from fedlib.keyring import build_server_keys_response
from fedlib.server.auth import is_valid_server_name
from fedlib.server.context import ServerContext
from fedlib.server.errors import bad_json
from fedlib.server.request import FederationRequest
from fedlib.server.resource import Route

__all__ = ["own_key_response", "routes"]

#: Servers one notary request may ask about; beyond this it is abuse.
MAX_NOTARY_SERVERS = 100


def own_key_response(ctx: ServerContext) -> dict[str, Any]:
    """Our signed ``/_matrix/key/v2/server`` response."""
    return build_server_keys_response(
        ctx.server_name,
        ctx.config.signing_key,
        ctx.now_ms() + ctx.config.key_validity_period_ms,
        {kid: (old.verify_key, old.expired_ts) for kid, old in ctx.config.old_verify_keys.items()},
    )


async def _notary(ctx: ServerContext, server_keys: dict[str, Any]) -> list[dict[str, Any]]:
    """Answer a (validated) notary query: through the keyring's notary when it has
    one (it fetches what it lacks), else from the store's cache."""
    notary_query = getattr(ctx.keyring, "notary_query", None)
    if notary_query is not None:
        own = own_key_response(ctx)

        async def one(server: str, criteria: Any) -> list[dict[str, Any]]:
            if server != ctx.server_name and not is_valid_server_name(server):
                return []
            try:
                body = await notary_query(
                    {server: criteria}, ctx.server_name, ctx.config.signing_key, own
                )
            except MatrixError:
                # A server whose keys cannot be had is left out (spec).
                return []
            found = body.get("server_keys") if isinstance(body, Mapping) else None
            return [dict(r) for r in found or [] if isinstance(r, Mapping)]

        answers = await defer.gatherResults(
            [defer.ensureDeferred(one(s, c)) for s, c in server_keys.items()],
            consumeErrors=True,
        )
        return [r for answer in answers for r in answer]
    out: list[dict[str, Any]] = []
    for server, criteria in server_keys.items():
        key_ids, min_ts = _wanted(criteria)
        for response in await _responses_for(ctx, server, key_ids, min_ts):
            out.append(ctx.sign(response) if server != ctx.server_name else response)
    return out


def _wanted(criteria: Any) -> tuple[list[str] | None, int]:
    """Key IDs asked for (``None``: all) and the minimum ``valid_until_ts``."""
    if not isinstance(criteria, dict):
        raise bad_json("Key criteria must be an object")
    min_ts = 0
    for crit in criteria.values():
        if not isinstance(crit, dict):
            raise bad_json("Key criteria must be objects")
        value = crit.get("minimum_valid_until_ts", 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad_json("minimum_valid_until_ts must be an integer")
        min_ts = max(min_ts, value)
    return (list(criteria) or None), min_ts


async def _responses_for(
    ctx: ServerContext, server: str, key_ids: list[str] | None, min_ts: int
) -> list[dict[str, Any]]:
    if server == ctx.server_name:
        return [own_key_response(ctx)]
    if not is_valid_server_name(server):
        return []
    cached = await ctx.store.get_server_keys_json(server, key_ids)
    fresh = [
        dict(r)
        for r in cached
        if isinstance(r, Mapping) and _valid_until(r) >= min_ts and _valid_until(r) > ctx.now_ms()
    ]
    if not fresh and ctx.notary is not None:
        try:
            fetched = await ctx.notary(server, key_ids, min_ts)
        except Exception:
            # A server we cannot reach has no keys to report; the spec answers
            # with what we have rather than an error.
            fetched = []
        fresh = [dict(r) for r in fetched or [] if isinstance(r, Mapping)]
    if not fresh:
        fresh = [dict(r) for r in cached if isinstance(r, Mapping)]
    return fresh


def _valid_until(response: Mapping[str, Any]) -> int:
    value = response.get("valid_until_ts")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def routes(ctx: ServerContext) -> list[Route]:
    async def server_keys(request: FederationRequest) -> tuple[int, Any]:
        return 200, own_key_response(ctx)

    async def query_post(request: FederationRequest) -> tuple[int, Any]:
        body = request.json_object()
        wanted = body.get("server_keys")
        if not isinstance(wanted, dict):
            raise bad_json("server_keys must be an object")
        if len(wanted) > MAX_NOTARY_SERVERS:
            raise bad_json(f"At most {MAX_NOTARY_SERVERS} servers per query")
        for criteria in wanted.values():
            _wanted(criteria)
        return 200, {"server_keys": await _notary(ctx, wanted)}

    async def query_get(request: FederationRequest) -> tuple[int, Any]:
        server = request.param("serverName")
        min_ts = request.query_int("minimum_valid_until_ts", default=0) or 0
        # A GET names no key IDs: any key of the server will do.
        wanted: dict[str, Any] = {server: {}}
        if min_ts:
            wanted[server] = {"*": {"minimum_valid_until_ts": min_ts}}
        if not is_valid_server_name(server):
            return 200, {"server_keys": []}
        return 200, {"server_keys": await _notary(ctx, wanted)}

    return [
        Route("GET", "/_matrix/key/v2/server", server_keys, authenticated=False),
        Route("GET", "/_matrix/key/v2/server/{keyId}", server_keys, authenticated=False),
        Route("POST", "/_matrix/key/v2/query", query_post, authenticated=False),
        Route("GET", "/_matrix/key/v2/query/{serverName}", query_get, authenticated=False),
    ]
