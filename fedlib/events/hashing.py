"""Content hashes, reference hashes, event IDs and (v12) room IDs.

Spec: server-server API "Calculating the content hash for an event" and
"Calculating the reference hash for an event"; room versions "Event IDs".
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

from unpaddedbase64 import decode_base64, encode_base64

from fedlib.canonical import encode_canonical_json
from fedlib.errors import BadJsonError
from fedlib.events.redaction import signable_redacted
from fedlib.events.room_versions import EventFormat, RoomVersion, get_room_version

__all__ = [
    "check_content_hash",
    "compute_content_hash",
    "compute_event_id",
    "compute_reference_hash",
    "compute_room_id",
    "event_id_with",
    "reference_hash_with",
]

_NOT_HASHED = frozenset(("unsigned", "signatures", "hashes"))


def content_hash_bytes(event: Mapping[str, Any]) -> bytes:
    """The raw SHA-256 content hash of ``event``."""
    stripped = {k: v for k, v in event.items() if k not in _NOT_HASHED}
    return hashlib.sha256(encode_canonical_json(stripped)).digest()


# The name signing.py has always imported.
_content_hash_bytes = content_hash_bytes


def compute_content_hash(event: Mapping[str, Any]) -> str:
    """The unpadded base64 SHA-256 content hash (``hashes.sha256``) of a PDU."""
    return encode_base64(content_hash_bytes(event))


def check_content_hash(event: Mapping[str, Any], content_json: bytes | None = None) -> bool:
    """Whether ``hashes.sha256`` matches the event's content. A missing or malformed
    hash is a mismatch (never an exception).

    ``content_json``, when given, must be the canonical JSON of ``event`` without
    ``unsigned``, ``signatures`` and ``hashes`` (as
    :func:`fedlib.events.validation.validate_pdu_content_json` returns it): a caller
    that encoded it already saves encoding it again.
    """
    hashes = event.get("hashes")
    if not isinstance(hashes, dict):
        return False
    claimed = hashes.get("sha256")
    if not isinstance(claimed, str):
        return False
    if content_json is None:
        actual = content_hash_bytes(event)
    else:
        actual = hashlib.sha256(content_json).digest()
    # Nearly every hash arrives in its canonical unpadded form: compare strings.
    if claimed == encode_base64(actual):
        return True
    # Accept other spellings that decode to the same digest (padding, URL-safe),
    # as other servers do.
    try:
        return decode_base64(claimed.replace("-", "+").replace("_", "/")) == actual
    except (binascii.Error, ValueError):
        return False


def reference_hash_with(room_version: RoomVersion, event: Mapping[str, Any]) -> bytes:
    """:func:`compute_reference_hash` for a resolved :class:`RoomVersion`."""
    return hashlib.sha256(encode_canonical_json(signable_redacted(room_version, event))).digest()


def compute_reference_hash(room_version: str, event: Mapping[str, Any]) -> bytes:
    """SHA-256 over the redacted event without ``signatures`` and ``unsigned``
    (spec "Calculating the reference hash for an event")."""
    return reference_hash_with(get_room_version(room_version), event)


def event_id_with(room_version: RoomVersion, event: Mapping[str, Any]) -> str:
    """:func:`compute_event_id` for a resolved :class:`RoomVersion`."""
    fmt = room_version.event_format
    if fmt is EventFormat.V1:
        event_id = event.get("event_id")
        if not isinstance(event_id, str):
            raise BadJsonError("Event has no event_id")
        return event_id
    digest = reference_hash_with(room_version, event)
    return "$" + encode_base64(digest, urlsafe=fmt is EventFormat.V4)


def compute_event_id(room_version: str, event: Mapping[str, Any]) -> str:
    """The event ID: the ``event_id`` field in v1/v2 (:class:`BadJsonError` when it is
    missing), else ``$`` + the unpadded base64 reference hash (URL-safe from v4)."""
    return event_id_with(get_room_version(room_version), event)


def compute_room_id(create_event: Mapping[str, Any], room_version: str = "12") -> str:
    """The room ID of a room whose ID is its create event's hash (v12): ``!`` + the
    URL-safe unpadded base64 reference hash of the create event."""
    version = get_room_version(room_version)
    if not version.room_id_is_create_hash:
        raise ValueError(f"Room version {room_version} room IDs are not create-event hashes")
    return "!" + encode_base64(reference_hash_with(version, create_event), urlsafe=True)
