"""fedlib.events.validation.validate_pdu as it was before its fast paths: the
reference the tests hold the fast version to (same PDUs accepted, same errors)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedlib.canonical import encode_canonical_json
from fedlib.errors import BadJsonError, InvalidIdError
from fedlib.events.room_versions import EventFormat, RoomVersion, get_room_version
from fedlib.events.validation import MAX_AUTH_EVENTS, MAX_FIELD_BYTES, MAX_PDU_SIZE, MAX_PREV_EVENTS
from fedlib.ids import parse_user_id, validate_event_id, validate_room_id

_MAX_DEPTH_V1 = 2**63 - 1
_MAX_DEPTH_V6 = 2**53 - 1


def _fail(msg: str) -> BadJsonError:
    return BadJsonError(f"Invalid PDU: {msg}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_str_field(pdu: Mapping[str, Any], name: str, *, required: bool = True) -> None:
    value = pdu.get(name)
    if value is None and name not in pdu and not required:
        return
    if not isinstance(value, str):
        raise _fail(f"'{name}' must be a string")
    if len(value) > MAX_FIELD_BYTES // 4:  # short strings cannot exceed the byte limit
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise _fail(f"'{name}' is not valid Unicode") from None
        if size > MAX_FIELD_BYTES:
            raise _fail(f"'{name}' is longer than {MAX_FIELD_BYTES} bytes")


def _check_refs(version: RoomVersion, pdu: Mapping[str, Any], name: str, limit: int) -> None:
    refs = pdu.get(name)
    if not isinstance(refs, list):
        raise _fail(f"'{name}' must be a list")
    if len(refs) > limit:
        raise _fail(f"'{name}' has more than {limit} entries")
    pairs = version.event_format is EventFormat.V1
    for ref in refs:
        if pairs:
            # v1/v2: [event_id, {"sha256": ...}]
            if not (isinstance(ref, list) and len(ref) == 2 and isinstance(ref[1], dict)):
                raise _fail(f"'{name}' entries must be [event_id, hashes] pairs")
            ref = ref[0]
        try:
            validate_event_id(version, ref)
        except InvalidIdError as e:
            raise _fail(f"'{name}' contains an invalid event ID: {e.msg}") from None


def reference_validate_pdu(room_version: str | RoomVersion, pdu: object) -> None:
    """Raise :class:`~fedlib.errors.BadJsonError` unless ``pdu`` is a well-formed PDU of
    the room version.

    Checks required fields and their types per event format, the 65536-byte
    canonical size limit, the 255-byte limits on ``type``, ``state_key``,
    ``sender``, ``room_id`` and ``event_id``, at most 20 ``prev_events`` and 10
    ``auth_events``, identifier formats for the version (v12: the create event has
    no ``room_id``, every other event's is a create-event hash), ``depth`` and
    ``origin_server_ts`` integers, and the shapes of ``hashes``, ``signatures`` and
    ``unsigned``. An unknown room version raises
    :class:`~fedlib.errors.UnsupportedRoomVersionError`.
    """
    version = (
        room_version if isinstance(room_version, RoomVersion) else get_room_version(room_version)
    )
    if not isinstance(pdu, dict):
        raise _fail("not a JSON object")

    try:
        size = len(encode_canonical_json(pdu))
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        raise _fail("not encodable as canonical JSON") from None
    if size > MAX_PDU_SIZE:
        raise _fail(f"larger than {MAX_PDU_SIZE} bytes")

    _check_str_field(pdu, "type")
    _check_str_field(pdu, "sender")
    _check_str_field(pdu, "state_key", required=False)
    try:
        parse_user_id(pdu["sender"])
    except InvalidIdError as e:
        raise _fail(f"invalid sender: {e.msg}") from None

    if not isinstance(pdu.get("content"), dict):
        raise _fail("'content' must be an object")

    ts = pdu.get("origin_server_ts")
    if not _is_int(ts):
        raise _fail("'origin_server_ts' must be an integer")
    depth = pdu.get("depth")
    if not _is_int(depth):
        raise _fail("'depth' must be an integer")
    max_depth = _MAX_DEPTH_V6 if version.strict_canonical_json else _MAX_DEPTH_V1
    if not 0 <= depth <= max_depth:  # type: ignore[operator]
        raise _fail("'depth' out of range")

    hashes = pdu.get("hashes")
    if not isinstance(hashes, dict) or not isinstance(hashes.get("sha256"), str):
        raise _fail("'hashes' must be an object with a 'sha256' string")
    signatures = pdu.get("signatures")
    if not isinstance(signatures, dict) or not all(
        isinstance(sigs, dict) and all(isinstance(s, str) for s in sigs.values())
        for sigs in signatures.values()
    ):
        raise _fail("'signatures' must map server names to objects of strings")
    if "unsigned" in pdu and not isinstance(pdu["unsigned"], dict):
        raise _fail("'unsigned' must be an object")

    if version.room_id_is_create_hash and pdu["type"] == "m.room.create":
        # v12: the room ID *is* this event's hash, so the event cannot contain it.
        if "room_id" in pdu:
            raise _fail("a create event in this room version has no 'room_id'")
    else:
        _check_str_field(pdu, "room_id")
        try:
            validate_room_id(version, pdu["room_id"])
        except InvalidIdError as e:
            raise _fail(f"invalid room_id: {e.msg}") from None

    if version.event_id_in_event:
        _check_str_field(pdu, "event_id")
        try:
            validate_event_id(version, pdu["event_id"])
        except InvalidIdError as e:
            raise _fail(f"invalid event_id: {e.msg}") from None

    _check_refs(version, pdu, "prev_events", MAX_PREV_EVENTS)
    _check_refs(version, pdu, "auth_events", MAX_AUTH_EVENTS)

    redacts = pdu.get("redacts")
    if redacts is not None and not isinstance(redacts, str):
        raise _fail("'redacts' must be a string")
