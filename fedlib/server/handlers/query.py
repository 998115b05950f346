"""Queries answered by the embedder: directory, profile, public rooms, devices, keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedlib.server.context import ServerContext
from fedlib.server.errors import bad_json, invalid_param, not_found
from fedlib.server.request import FederationRequest
from fedlib.server.resource import Route

__all__ = ["routes"]

_PUBLIC_ROOMS_MAX_LIMIT = 1000
_MAX_KEY_QUERY_USERS = 1000


def _local_part_ok(ctx: ServerContext, identifier: str, sigil: str) -> bool:
    if not identifier.startswith(sigil) or ":" not in identifier:
        return False
    return identifier.split(":", 1)[1] == ctx.server_name


def routes(ctx: ServerContext) -> list[Route]:
    async def directory(request: FederationRequest) -> tuple[int, Any]:
        alias = request.query_str("room_alias", required=True)
        assert alias is not None
        if not _local_part_ok(ctx, alias, "#"):
            raise not_found("Room alias not found")
        answer = await ctx.call_hook("query_directory", alias)
        if answer is None:
            raise not_found("Room alias not found")
        try:
            room_id, servers = answer
        except (TypeError, ValueError):
            raise not_found("Room alias not found") from None
        return 200, {"room_id": str(room_id), "servers": [str(s) for s in servers]}

    async def profile(request: FederationRequest) -> tuple[int, Any]:
        user_id = request.query_str("user_id", required=True)
        assert user_id is not None
        field = request.query_str("field")
        if not _local_part_ok(ctx, user_id, "@"):
            raise invalid_param("User is not local to this server")
        answer = await ctx.call_hook("query_profile", user_id, field)
        if not isinstance(answer, Mapping):
            raise not_found("Profile not found")
        return 200, dict(answer)

    async def generic_query(request: FederationRequest) -> tuple[int, Any]:
        query_type = request.param("queryType")
        args = {k: v[0] for k, v in request.query.items() if v}
        answer = await ctx.call_hook("query", query_type, args)
        if not isinstance(answer, Mapping):
            raise not_found("Unknown query")
        return 200, dict(answer)

    async def _public_rooms(limit: int | None, since: str | None, search: Any) -> tuple[int, Any]:
        answer = await ctx.call_hook("get_public_rooms", limit, since, search)
        if not isinstance(answer, Mapping):
            answer = {"chunk": [], "total_room_count_estimate": 0}
        return 200, dict(answer)

    async def public_rooms_get(request: FederationRequest) -> tuple[int, Any]:
        limit = request.query_int("limit", maximum=_PUBLIC_ROOMS_MAX_LIMIT)
        request.query_bool("include_all_networks")
        return await _public_rooms(limit, request.query_str("since"), None)

    async def public_rooms_post(request: FederationRequest) -> tuple[int, Any]:
        body = request.json_object()
        limit = body.get("limit")
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
        ):
            raise bad_json("limit must be a non-negative integer")
        since = body.get("since")
        if since is not None and not isinstance(since, str):
            raise bad_json("since must be a string")
        search = body.get("filter")
        if search is not None and not isinstance(search, dict):
            raise bad_json("filter must be an object")
        for name in ("include_all_networks",):
            if name in body and not isinstance(body[name], bool):
                raise bad_json(f"{name} must be a boolean")
        if "third_party_instance_id" in body and not isinstance(
            body["third_party_instance_id"], str
        ):
            raise bad_json("third_party_instance_id must be a string")
        return await _public_rooms(
            None if limit is None else min(limit, _PUBLIC_ROOMS_MAX_LIMIT), since, search
        )

    async def user_devices(request: FederationRequest) -> tuple[int, Any]:
        user_id = request.param("userId")
        if not _local_part_ok(ctx, user_id, "@"):
            raise invalid_param("User is not local to this server")
        answer = await ctx.call_hook("query_user_devices", user_id)
        if not isinstance(answer, Mapping):
            raise not_found("Unknown user")
        return 200, dict(answer)

    def _user_map(body: Mapping[str, Any], name: str) -> dict[str, Any]:
        value = body.get(name)
        if not isinstance(value, dict):
            raise bad_json(f"{name} must be an object")
        if len(value) > _MAX_KEY_QUERY_USERS:
            raise bad_json(f"Too many users in {name}")
        for user_id, entry in value.items():
            if not _local_part_ok(ctx, user_id, "@"):
                raise invalid_param("Keys can only be queried for local users")
            if name == "device_keys" and not (
                isinstance(entry, list) and all(isinstance(d, str) for d in entry)
            ):
                raise bad_json("device_keys values must be lists of device IDs")
            if name == "one_time_keys" and not (
                isinstance(entry, dict) and all(isinstance(a, str) for a in entry.values())
            ):
                raise bad_json("one_time_keys values must map device IDs to algorithms")
        return value

    async def user_keys_query(request: FederationRequest) -> tuple[int, Any]:
        wanted = _user_map(request.json_object(), "device_keys")
        answer = await ctx.call_hook("query_user_keys", wanted)
        if not isinstance(answer, Mapping):
            answer = {"device_keys": {}}
        return 200, dict(answer)

    async def user_keys_claim(request: FederationRequest) -> tuple[int, Any]:
        wanted = _user_map(request.json_object(), "one_time_keys")
        answer = await ctx.call_hook("claim_user_keys", wanted)
        if not isinstance(answer, Mapping):
            answer = {"one_time_keys": {}}
        return 200, dict(answer)

    return [
        Route("GET", "/_matrix/federation/v1/user/devices/{userId}", user_devices),
        Route("POST", "/_matrix/federation/v1/user/keys/query", user_keys_query),
        Route("POST", "/_matrix/federation/v1/user/keys/claim", user_keys_claim),
        Route("GET", "/_matrix/federation/v1/query/directory", directory),
        Route("GET", "/_matrix/federation/v1/query/profile", profile),
        Route("GET", "/_matrix/federation/v1/query/{queryType}", generic_query),
        Route("GET", "/_matrix/federation/v1/publicRooms", public_rooms_get),
        Route("POST", "/_matrix/federation/v1/publicRooms", public_rooms_post),
    ]
