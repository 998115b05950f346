"""``GET /hierarchy/{roomId}`` answered from room state when the embedder's hook
has no answer of its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedlib.server.context import ServerContext
from fedlib.server.errors import not_found
from fedlib.server.request import FederationRequest
from fedlib.server.resource import Route

__all__ = ["room_summary", "routes"]

#: Children of one space summarised in one answer.
MAX_CHILDREN = 50

_SUMMARY_TYPES = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.space.child",
]
_PEEKABLE_RULES = ("public", "knock", "knock_restricted", "restricted")


def _content(stored: Any) -> Mapping[str, Any]:
    if stored is None:
        return {}
    c = stored.event.get("content")
    return c if isinstance(c, Mapping) else {}


async def room_summary(
    ctx: ServerContext, room_id: str, origin: str, suggested_only: bool
) -> dict[str, Any] | None:
    """The room's summary with its ``children_state``, or ``None`` when we do not
    know the room or ``origin`` has no way to peek or join it."""
    version = await ctx.store.get_room_version(room_id)
    if version is None:
        return None
    state = await ctx.store.get_current_state_events(room_id, _SUMMARY_TYPES)
    if not state:
        return None

    def get(etype: str, key: str = "") -> Mapping[str, Any]:
        return _content(state.get((etype, key)))

    join_rule = get("m.room.join_rules").get("join_rule", "invite")
    world_readable = get("m.room.history_visibility").get("history_visibility") == "world_readable"
    peekable = world_readable or join_rule in _PEEKABLE_RULES
    if not peekable and origin not in await ctx.store.get_joined_servers(room_id):
        return None
    summary: dict[str, Any] = {
        "room_id": room_id,
        "num_joined_members": len(await ctx.store.get_joined_members(room_id)),
        "world_readable": world_readable,
        "guest_can_join": get("m.room.guest_access").get("guest_access") == "can_join",
        "join_rule": join_rule if isinstance(join_rule, str) else "invite",
        "room_version": version,
    }
    for etype, field, out in (
        ("m.room.name", "name", "name"),
        ("m.room.topic", "topic", "topic"),
        ("m.room.avatar", "url", "avatar_url"),
        ("m.room.canonical_alias", "alias", "canonical_alias"),
        ("m.room.encryption", "algorithm", "encryption"),
    ):
        value = get(etype).get(field)
        if isinstance(value, str):
            summary[out] = value
    room_type = get("m.room.create").get("type")
    if isinstance(room_type, str):
        summary["room_type"] = room_type
    children = []
    for (etype, key), stored in sorted(state.items()):
        if etype != "m.space.child":
            continue
        content = _content(stored)
        via = content.get("via")
        if not isinstance(via, list) or not via:
            continue  # a child without "via" has been removed
        if suggested_only and content.get("suggested") is not True:
            continue
        children.append(
            {
                "type": etype,
                "state_key": key,
                "content": dict(content),
                "sender": stored.event.get("sender"),
                "origin_server_ts": stored.origin_server_ts,
            }
        )
    summary["children_state"] = children
    return summary


def routes(ctx: ServerContext) -> list[Route]:
    async def hierarchy(request: FederationRequest) -> tuple[int, Any]:
        room_id = request.param("roomId")
        suggested_only = request.query_bool("suggested_only")
        answer = await ctx.call_hook("get_hierarchy", room_id, suggested_only)
        if isinstance(answer, Mapping):
            return 200, dict(answer)
        origin = request.authed_origin
        room = await room_summary(ctx, room_id, origin, suggested_only)
        if room is None:
            raise not_found("Unknown room or not accessible")
        children: list[dict[str, Any]] = []
        inaccessible: list[str] = []
        for child in room["children_state"][:MAX_CHILDREN]:
            child_id = child["state_key"]
            summary = await room_summary(ctx, child_id, origin, suggested_only)
            if summary is not None:
                children.append(summary)
            elif await ctx.store.get_room_version(child_id) is not None:
                inaccessible.append(child_id)
        return 200, {"room": room, "children": children, "inaccessible_children": inaccessible}

    return [
        Route("GET", "/_matrix/federation/v1/hierarchy/{roomId}", hierarchy, room_param="roomId"),
    ]
