"""Read endpoints: /event, /state, /state_ids, /event_auth, /backfill,
/get_missing_events, /timestamp_to_event.

Only servers that were in the room at the point asked about get answers
(403 ``M_FORBIDDEN`` otherwise); events a server may not see under the room's
history visibility are served redacted in bulk answers and refused singly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fedlib.events.redaction import redact_with
from fedlib.events.room_versions import get_room_version
from fedlib.server.context import ServerContext
from fedlib.server.errors import bad_json, forbidden, invalid_param, not_found
from fedlib.server.request import FederationRequest
from fedlib.server.resource import Route
from fedlib.storage.interface import EventStatus

__all__ = ["routes", "server_can_see", "server_in_room_at"]

#: Most events one /backfill or /get_missing_events answer carries.
MAX_BATCH = 100
#: Most event IDs accepted in one /backfill or /get_missing_events request.
MAX_REQUEST_IDS = 100


def _server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


async def _memberships_of_server(
    ctx: ServerContext, state: Mapping[tuple[str, str], str], server: str
) -> set[str]:
    ids = [
        eid
        for (etype, skey), eid in state.items()
        if etype == "m.room.member" and _server_of(skey) == server
    ]
    if not ids:
        return set()
    events = await ctx.store.get_events(ids)
    out = set()
    for stored in events.values():
        content = stored.event.get("content")
        if isinstance(content, Mapping) and isinstance(content.get("membership"), str):
            out.add(content["membership"])
    return out


async def server_in_room_at(ctx: ServerContext, origin: str, event_id: str) -> bool:
    """Whether a user of ``origin`` was joined at ``event_id`` (state before or after)."""
    for getter in (ctx.store.get_state_after, ctx.store.get_state_before):
        state = await getter(event_id)
        if state is not None and "join" in await _memberships_of_server(ctx, state, origin):
            return True
    return False


async def _history_visibility(ctx: ServerContext, state: Mapping[tuple[str, str], str]) -> str:
    eid = state.get(("m.room.history_visibility", ""))
    if eid is None:
        return "shared"
    events = await ctx.store.get_events([eid])
    stored = events.get(eid)
    if stored is None:
        return "shared"
    value = stored.event.get("content", {}).get("history_visibility")
    return value if isinstance(value, str) else "shared"


async def server_can_see(ctx: ServerContext, origin: str, room_id: str, event_id: str) -> bool:
    """History visibility for a server (as Synapse's server-side filter): world
    readable and shared history is visible to a server that has (or had, at that
    event) a joined user; joined history only to a server joined at the event;
    invited history also to a server with an invited user."""
    state = await ctx.store.get_state_after(event_id)
    if state is None:
        return False
    visibility = await _history_visibility(ctx, state)
    if visibility == "world_readable":
        return True
    memberships = await _memberships_of_server(ctx, state, origin)
    if "join" in memberships:
        return True
    if visibility == "invited" and "invite" in memberships:
        return True
    if visibility == "shared":
        return origin in await ctx.store.get_joined_servers(room_id)
    return False


async def _event_in_room(ctx: ServerContext, room_id: str, event_id: str) -> Any:
    events = await ctx.store.get_events([event_id])
    stored = events.get(event_id)
    if stored is None or stored.room_id != room_id or stored.status is EventStatus.REJECTED:
        raise not_found("Unknown event")
    return stored


async def _pdus(ctx: ServerContext, ids: Iterable[str]) -> list[Mapping[str, Any]]:
    events = await ctx.store.get_events(list(ids))
    return [s.event for s in sorted(events.values(), key=lambda s: (s.depth, s.event_id))]


async def _visible_or_redacted(
    ctx: ServerContext, origin: str, room_id: str, stored_events: Iterable[Any]
) -> list[dict[str, Any]]:
    out = []
    for stored in stored_events:
        if stored.status is EventStatus.REJECTED:
            continue
        event = dict(stored.event)
        if not await server_can_see(ctx, origin, room_id, stored.event_id):
            event = redact_with(get_room_version(stored.room_version), event)
        out.append(event)
    return out


def _str_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_json(f"{name} must be a list of strings")
    if len(value) > MAX_REQUEST_IDS:
        raise bad_json(f"{name} has more than {MAX_REQUEST_IDS} entries")
    return list(value)


def routes(ctx: ServerContext) -> list[Route]:
    def envelope(pdus: list[dict[str, Any]]) -> dict[str, Any]:
        return {"origin": ctx.server_name, "origin_server_ts": ctx.now_ms(), "pdus": pdus}

    async def get_event(request: FederationRequest) -> tuple[int, Any]:
        origin = request.authed_origin
        event_id = request.param("eventId")
        events = await ctx.store.get_events([event_id])
        stored = events.get(event_id)
        if stored is None or stored.status is EventStatus.REJECTED:
            raise not_found("Unknown event")
        await ctx.check_acl(stored.room_id, origin)
        if not await server_can_see(ctx, origin, stored.room_id, event_id):
            raise forbidden("Server may not see this event")
        return 200, envelope([dict(stored.event)])

    async def _state_at(request: FederationRequest) -> tuple[list[str], list[str]]:
        room_id = request.param("roomId")
        event_id = request.query_str("event_id", required=True)
        assert event_id is not None
        await ctx.room_version(room_id)
        await _event_in_room(ctx, room_id, event_id)
        # A server joined now may ask about earlier points (Synapse does so to
        # complete a partial-state join), as Synapse allows.
        if not await server_in_room_at(
            ctx, request.authed_origin, event_id
        ) and request.authed_origin not in await ctx.store.get_joined_servers(room_id):
            raise forbidden("Server is not in the room at this event")
        state = await ctx.store.get_state_before(event_id)
        if state is None:
            raise not_found("No state known at this event")
        state_ids = sorted(set(state.values()))
        chain = await ctx.store.get_auth_chain(state_ids)
        return state_ids, sorted(chain)

    async def get_state(request: FederationRequest) -> tuple[int, Any]:
        state_ids, chain = await _state_at(request)
        return 200, {"pdus": await _pdus(ctx, state_ids), "auth_chain": await _pdus(ctx, chain)}

    async def get_state_ids(request: FederationRequest) -> tuple[int, Any]:
        state_ids, chain = await _state_at(request)
        return 200, {"pdu_ids": state_ids, "auth_chain_ids": chain}

    async def event_auth(request: FederationRequest) -> tuple[int, Any]:
        room_id = request.param("roomId")
        event_id = request.param("eventId")
        await ctx.room_version(room_id)
        await _event_in_room(ctx, room_id, event_id)
        if not await server_can_see(ctx, request.authed_origin, room_id, event_id):
            raise forbidden("Server may not see this event")
        chain = await ctx.store.get_auth_chain([event_id])
        return 200, {"auth_chain": await _pdus(ctx, chain)}

    async def _require_in_room(room_id: str, origin: str) -> None:
        await ctx.room_version(room_id)
        if origin not in await ctx.store.get_joined_servers(room_id):
            raise forbidden("Server is not in the room")

    async def backfill(request: FederationRequest) -> tuple[int, Any]:
        room_id = request.param("roomId")
        origin = request.authed_origin
        from_ids = request.query_strs("v")
        if not from_ids:
            raise invalid_param("At least one v is required")
        if len(from_ids) > MAX_REQUEST_IDS:
            raise invalid_param("Too many v parameters")
        limit = request.query_int("limit", required=True, minimum=0)
        assert limit is not None
        await _require_in_room(room_id, origin)
        events = await ctx.store.backfill(room_id, from_ids, min(limit, MAX_BATCH))
        return 200, envelope(await _visible_or_redacted(ctx, origin, room_id, events))

    async def get_missing_events(request: FederationRequest) -> tuple[int, Any]:
        room_id = request.param("roomId")
        origin = request.authed_origin
        body = request.json_object()
        earliest = _str_list(body.get("earliest_events"), "earliest_events")
        latest = _str_list(body.get("latest_events"), "latest_events")
        limit = body.get("limit", 10)
        min_depth = body.get("min_depth", 0)
        for name, value in (("limit", limit), ("min_depth", min_depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad_json(f"{name} must be a non-negative integer")
        await _require_in_room(room_id, origin)
        events = await ctx.store.get_missing_events(
            room_id, earliest, latest, min(limit, MAX_BATCH), min_depth
        )
        return 200, {"events": await _visible_or_redacted(ctx, origin, room_id, events)}

    async def timestamp_to_event(request: FederationRequest) -> tuple[int, Any]:
        room_id = request.param("roomId")
        ts = request.query_int("ts", required=True)
        direction = request.query_str("dir", required=True)
        if direction not in ("f", "b"):
            raise invalid_param("dir must be f or b")
        await _require_in_room(room_id, request.authed_origin)
        found = await ctx.store.get_event_at_timestamp(room_id, ts, direction)
        if found is None:
            raise not_found("No event found")
        event_id, origin_server_ts = found
        return 200, {"event_id": event_id, "origin_server_ts": origin_server_ts}

    v1 = "/_matrix/federation/v1"
    return [
        Route("GET", f"{v1}/event/{{eventId}}", get_event),
        Route("GET", f"{v1}/state/{{roomId}}", get_state, room_param="roomId"),
        Route("GET", f"{v1}/state_ids/{{roomId}}", get_state_ids, room_param="roomId"),
        Route("GET", f"{v1}/event_auth/{{roomId}}/{{eventId}}", event_auth, room_param="roomId"),
        Route("GET", f"{v1}/backfill/{{roomId}}", backfill, room_param="roomId"),
        Route(
            "POST", f"{v1}/get_missing_events/{{roomId}}", get_missing_events, room_param="roomId"
        ),
        Route(
            "GET", f"{v1}/timestamp_to_event/{{roomId}}", timestamp_to_event, room_param="roomId"
        ),
    ]
