"""The redaction algorithm of every room version (spec: room versions, "Redactions")."""

from __future__ import annotations

from collections.abc import Mapping
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
_SIGNABLE_KEYS_V1 = _TOP_LEVEL_KEYS_V1 - {"signatures"}
_SIGNABLE_KEYS_V11 = _TOP_LEVEL_KEYS_V11 - {"signatures"}

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


def _content_keys_for(rules: RedactionRules) -> dict[str, tuple[str, ...] | None]:
    """Per event type, the content keys kept; ``None`` keeps all content. Types not
    listed keep nothing."""
    v11 = rules is RedactionRules.V11
    member: tuple[str, ...] = ("membership",)
    if rules.value >= RedactionRules.V9.value:
        member += ("join_authorised_via_users_server",)
    table: dict[str, tuple[str, ...] | None] = {
        "m.room.member": member,
        "m.room.create": None if v11 else ("creator",),
        "m.room.join_rules": (
            ("join_rule", "allow") if rules.value >= RedactionRules.V8.value else ("join_rule",)
        ),
        "m.room.power_levels": _POWER_LEVEL_KEYS + ("invite",) if v11 else _POWER_LEVEL_KEYS,
        "m.room.history_visibility": ("history_visibility",),
    }
    if rules is RedactionRules.V1:
        table["m.room.aliases"] = ("aliases",)
    if v11:
        table["m.room.redaction"] = ("redacts",)
    return table


_CONTENT_KEYS = {rules: _content_keys_for(rules) for rules in RedactionRules}


def redact_with(room_version: RoomVersion, event: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`redact` for a resolved :class:`RoomVersion` (the hot path).

    The result is a new top-level dict and a new ``content`` dict; other values
    (``hashes``, ``signatures``, nested content) are shared with ``event``.
    """
    return _redact(room_version, event, _top_level_keys(room_version.redaction_rules))


def signable_redacted(room_version: RoomVersion, event: Mapping[str, Any]) -> dict[str, Any]:
    """The redacted event without ``signatures`` (and ``unsigned``): what event
    signatures and reference hashes cover. Avoids a second copy on the hot path."""
    rules = room_version.redaction_rules
    top = _SIGNABLE_KEYS_V11 if rules is RedactionRules.V11 else _SIGNABLE_KEYS_V1
    return _redact(room_version, event, top)


def _top_level_keys(rules: RedactionRules) -> frozenset[str]:
    return _TOP_LEVEL_KEYS_V11 if rules is RedactionRules.V11 else _TOP_LEVEL_KEYS_V1


def _redact(
    room_version: RoomVersion, event: Mapping[str, Any], top: frozenset[str]
) -> dict[str, Any]:
    rules = room_version.redaction_rules
    redacted = {k: v for k, v in event.items() if k in top}
    content = event.get("content")
    if not isinstance(content, dict) or not content:
        redacted["content"] = {}
        return redacted
    event_type = event.get("type")
    keep = _CONTENT_KEYS[rules].get(event_type, ()) if isinstance(event_type, str) else ()
    if keep is None:
        new_content = dict(content)
    else:
        new_content = {k: content[k] for k in keep if k in content}
        # v11: a member event keeps third_party_invite.signed, and only that. An
        # object without "signed" is kept empty rather than dropped: the spec does
        # not say, and Synapse does so, and event IDs must agree with it.
        if rules is RedactionRules.V11 and event_type == "m.room.member":
            tpi = content.get("third_party_invite")
            if isinstance(tpi, dict):
                new_content["third_party_invite"] = (
                    {"signed": tpi["signed"]} if "signed" in tpi else {}
                )
    redacted["content"] = new_content
    return redacted


def redact(room_version: str, event: Mapping[str, Any]) -> dict[str, Any]:
    """Return a new dict: ``event`` stripped as the room version's redaction algorithm says.

    ``event`` is not modified (nested values it shares with the result should be
    treated as read-only). ``unsigned`` is always dropped. Redaction is idempotent.
    """
    return redact_with(get_room_version(room_version), event)
