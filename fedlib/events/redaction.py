"""The redaction algorithm of every room version (spec: room versions, "Redactions")."""

from __future__ import annotations

from typing import Any

from fedlib.events.room_versions import RedactionRules, RoomVersion, get_room_version

_TOP_LEVEL_KEYS_V1 = frozenset(
    (
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    )
)
# v11 stops preserving origin, membership and prev_state.
_TOP_LEVEL_KEYS_V11 = _TOP_LEVEL_KEYS_V1 - {"origin", "membership", "prev_state"}

_POWER_LEVEL_KEYS = (
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
)


def _content_keys(rules: RedactionRules, event_type: str) -> tuple[str, ...] | None:
    """Content keys kept for ``event_type``; ``None`` means keep all content."""
    v11 = rules is RedactionRules.V11
    if event_type == "m.room.member":
        keys: tuple[str, ...] = ("membership",)
        if rules.value >= RedactionRules.V9.value:
            keys += ("join_authorised_via_users_server",)
        return keys
    if event_type == "m.room.create":
        return None if v11 else ("creator",)
    if event_type == "m.room.join_rules":
        return ("join_rule", "allow") if rules.value >= RedactionRules.V8.value else ("join_rule",)
    if event_type == "m.room.power_levels":
        return _POWER_LEVEL_KEYS + ("invite",) if v11 else _POWER_LEVEL_KEYS
    if event_type == "m.room.aliases":
        return ("aliases",) if rules is RedactionRules.V1 else ()
    if event_type == "m.room.history_visibility":
        return ("history_visibility",)
    if event_type == "m.room.redaction" and v11:
        return ("redacts",)
    return ()


def redact_with(room_version: RoomVersion, event: dict[str, Any]) -> dict[str, Any]:
    """:func:`redact` for a resolved :class:`RoomVersion` (the hot path)."""
    rules = room_version.redaction_rules
    top = _TOP_LEVEL_KEYS_V11 if rules is RedactionRules.V11 else _TOP_LEVEL_KEYS_V1
    redacted = {k: v for k, v in event.items() if k in top}
    content = event.get("content")
    if not isinstance(content, dict):
        redacted["content"] = {}
        return redacted
    event_type = event.get("type")
    keep = _content_keys(rules, event_type) if isinstance(event_type, str) else ()
    if keep is None:
        new_content = dict(content)
    else:
        new_content = {k: content[k] for k in keep if k in content}
        # v11: a member event keeps third_party_invite.signed, and only that.
        if rules is RedactionRules.V11 and event_type == "m.room.member":
            tpi = content.get("third_party_invite")
            if isinstance(tpi, dict) and "signed" in tpi:
                new_content["third_party_invite"] = {"signed": tpi["signed"]}
    redacted["content"] = new_content
    return redacted


def redact(room_version: str, event: dict[str, Any]) -> dict[str, Any]:
    """Return a new dict: ``event`` stripped as the room version's redaction algorithm says.

    ``event`` is not modified. ``unsigned`` is always dropped.
    """
    return redact_with(get_room_version(room_version), event)
