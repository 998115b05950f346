"""Content hashes, reference hashes, event IDs and (v12) room IDs."""

from __future__ import annotations

import hashlib
from typing import Any

from unpaddedbase64 import decode_base64, encode_base64

from fedlib.canonical import encode_canonical_json
from fedlib.errors import BadJsonError
from fedlib.events.redaction import redact_with
from fedlib.events.room_versions import EventFormat, RoomVersion, get_room_version

_NOT_HASHED = ("unsigned", "signatures", "hashes")


def _content_hash_bytes(event: dict[str, Any]) -> bytes:
    stripped = {k: v for k, v in event.items() if k not in _NOT_HASHED}
    return hashlib.sha256(encode_canonical_json(stripped)).digest()


def compute_content_hash(event: dict[str, Any]) -> str:
    """The unpadded base64 SHA-256 content hash (``hashes.sha256``) of a PDU."""
    return encode_base64(_content_hash_bytes(event))


def check_content_hash(event: dict[str, Any]) -> bool:
    """Whether ``hashes.sha256`` matches the event's content. Malformed hashes are a mismatch."""
    hashes = event.get("hashes")
    if not isinstance(hashes, dict):
        return False
    claimed = hashes.get("sha256")
    if not isinstance(claimed, str):
        return False
    try:
        claimed_bytes = decode_base64(claimed)
    except Exception:
        return False
    return claimed_bytes == _content_hash_bytes(event)


def reference_hash_with(room_version: RoomVersion, event: dict[str, Any]) -> bytes:
    redacted = redact_with(room_version, event)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return hashlib.sha256(encode_canonical_json(redacted)).digest()


def compute_reference_hash(room_version: str, event: dict[str, Any]) -> bytes:
    """SHA-256 over the redacted event without signatures (spec "Reference hashes")."""
    return reference_hash_with(get_room_version(room_version), event)


def event_id_with(room_version: RoomVersion, event: dict[str, Any]) -> str:
    fmt = room_version.event_format
    if fmt is EventFormat.V1:
        event_id = event.get("event_id")
        if not isinstance(event_id, str):
            raise BadJsonError("Event has no event_id")
        return event_id
    digest = reference_hash_with(room_version, event)
    return "$" + encode_base64(digest, urlsafe=fmt is EventFormat.V4)


def compute_event_id(room_version: str, event: dict[str, Any]) -> str:
    """The event ID: the ``event_id`` field in v1/v2, else derived from the reference hash."""
    return event_id_with(get_room_version(room_version), event)


def compute_room_id(create_event: dict[str, Any], room_version: str = "12") -> str:
    """The room ID of a room whose ID is its create event's hash (v12): ``!`` + hash."""
    version = get_room_version(room_version)
    return "!" + encode_base64(reference_hash_with(version, create_event), urlsafe=True)
