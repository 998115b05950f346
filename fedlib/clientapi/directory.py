"""The published room directory: what ``/publicRooms`` answers, to clients and to
other servers (through :meth:`fedlib.clientapi.hooks.ClientHooks.get_public_rooms`).

Which rooms are published is the client API's own record
(:meth:`fedlib.clientapi.store.IClientStore.get_public_room_ids`); what each entry
says (name, topic, members...) is read from the room's current state in the
federation store, so it follows the room.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedlib.errors import MatrixError

__all__ = ["public_rooms", "room_summary"]

#: The most entries one page holds, whatever ``limit`` asks.
MAX_PAGE = 500

_SUMMARY_TYPES = (
    "m.room.name",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.create",
)


def _content(state: Mapping[Any, Any], etype: str) -> Mapping[str, Any]:
    found = state.get((etype, ""))
    content = found.event.get("content") if found is not None else None
    return content if isinstance(content, Mapping) else {}


async def room_summary(fed_store: Any, room_id: str) -> dict[str, Any] | None:
    """A ``/publicRooms`` chunk entry from the room's current state, or ``None``
    when this server has no state for the room (it left, or never joined)."""
    state = await fed_store.get_current_state_events(room_id, list(_SUMMARY_TYPES))
    if not state:
        return None
    joined = await fed_store.get_joined_members(room_id)
    entry: dict[str, Any] = {
        "room_id": room_id,
        "num_joined_members": len(joined),
        "world_readable": _content(state, "m.room.history_visibility").get("history_visibility")
        == "world_readable",
        "guest_can_join": _content(state, "m.room.guest_access").get("guest_access") == "can_join",
    }
    for key, etype, field in (
        ("name", "m.room.name", "name"),
        ("topic", "m.room.topic", "topic"),
        ("canonical_alias", "m.room.canonical_alias", "alias"),
        ("avatar_url", "m.room.avatar", "url"),
        ("join_rule", "m.room.join_rules", "join_rule"),
        ("room_type", "m.room.create", "type"),
    ):
        value = _content(state, etype).get(field)
        if isinstance(value, str) and value:
            entry[key] = value
    return entry


def _matches(entry: Mapping[str, Any], search_filter: Any) -> bool:
    if not isinstance(search_filter, Mapping):
        return True
    term = search_filter.get("generic_search_term")
    if isinstance(term, str) and term.strip():
        needle = term.strip().casefold()
        texts = (entry.get(k) for k in ("name", "topic", "canonical_alias", "room_id"))
        if not any(isinstance(t, str) and needle in t.casefold() for t in texts):
            return False
    room_types = search_filter.get("room_types")
    return not (isinstance(room_types, list) and entry.get("room_type") not in room_types)


def _offset(since: str | None) -> int:
    if since is None or since == "":
        return 0
    if not since.startswith("o") or not since[1:].isdigit():
        raise MatrixError(400, "M_INVALID_PARAM", f"Unknown pagination token {since!r}")
    return int(since[1:])


async def public_rooms(
    client_store: Any,
    fed_store: Any,
    limit: int | None,
    since: str | None,
    search_filter: Any = None,
) -> dict[str, Any]:
    """The ``/publicRooms`` answer: published rooms this server is in, most joined
    members first, ``limit`` at a time (tokens ``o<offset>``), filtered by the
    filter's ``generic_search_term`` (name, topic, alias) and ``room_types``."""
    start = _offset(since)
    entries = []
    for room_id in await client_store.get_public_room_ids():
        entry = await room_summary(fed_store, room_id)
        if entry is not None and _matches(entry, search_filter):
            entries.append(entry)
    entries.sort(key=lambda e: (-int(e["num_joined_members"]), str(e["room_id"])))
    size = MAX_PAGE if limit is None or limit <= 0 else min(limit, MAX_PAGE)
    answer: dict[str, Any] = {
        "chunk": entries[start : start + size],
        "total_room_count_estimate": len(entries),
    }
    if start + size < len(entries):
        answer["next_batch"] = f"o{start + size}"
    if start > 0:
        answer["prev_batch"] = f"o{max(0, start - size)}"
    return answer
