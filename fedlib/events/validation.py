"""PDU format checks (the room versions' PDU schemas and the spec's size limits).

:func:`validate_pdu` is the first thing done to a PDU from the network, before
hashes, signatures or auth rules: it guarantees the shape the rest of the library
(and :class:`fedlib.events.event.Event`) relies on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedlib.canonical import encode_canonical_json
from fedlib.errors import BadJsonError, InvalidIdError
from fedlib.events.room_versions import EventFormat, RoomVersion, get_room_version
from fedlib.ids import (
    all_valid_event_ids,
    is_valid_event_id,
    is_valid_room_id,
    validate_event_id,
    validate_room_id,
    validate_user_id,
)

__all__ = [
    "MAX_AUTH_EVENTS",
    "MAX_FIELD_BYTES",
    "MAX_PDU_SIZE",
    "MAX_PREV_EVENTS",
    "validate_pdu",
    "validate_pdu_content_json",
]

#: Largest PDU, in bytes of canonical JSON as received (signatures included).
MAX_PDU_SIZE = 65536
#: Largest ``type``, ``state_key``, ``sender``, ``room_id`` and ``event_id``, in UTF-8 bytes.
MAX_FIELD_BYTES = 255
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10

# Depth must stay below the largest integer: 2**63 - 1 before v6, the canonical JSON
# limit 2**53 - 1 from v6 on.
_MAX_DEPTH_V1 = 2**63 - 1
_MAX_DEPTH_V6 = 2**53 - 1

# The members the content hash does not cover (fedlib.events.hashing), as a set and
# in a fixed order.
_NOT_HASHED = frozenset(("unsigned", "signatures", "hashes"))
_NOT_HASHED_ORDER = ("hashes", "signatures", "unsigned")
_STR_ONLY = frozenset((str,))


#: A string of at most this many code points is at most MAX_FIELD_BYTES UTF-8 bytes.
_SHORT = MAX_FIELD_BYTES // 4
_BAD_SIGNATURES = "'signatures' must map server names to objects of strings"


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
    if len(value) > _SHORT:  # short strings cannot exceed the byte limit
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise _fail(f"'{name}' is not valid Unicode") from None
        if size > MAX_FIELD_BYTES:
            raise _fail(f"'{name}' is longer than {MAX_FIELD_BYTES} bytes")


def _check_refs(version: RoomVersion, pdu: Mapping[str, Any], name: str, limit: int) -> None:
    refs = pdu.get(name)
    if (
        type(refs) is list
        and len(refs) <= limit
        and version.event_format is not EventFormat.V1
        and all_valid_event_ids(version, refs)
    ):
        return
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


def _measure(pdu: dict[Any, Any]) -> bytes | None:
    """Enforce the size limit on ``pdu``'s canonical JSON; return the canonical JSON of
    ``pdu`` without ``unsigned``, ``signatures`` and ``hashes`` (what the content hash
    covers) when it was encoded on the way, else ``None``.

    The canonical JSON of an object is ``{`` + its members, sorted and joined by
    ``,`` + ``}``, each member encoded independently of the others, so splitting
    the members in two objects A and B (both non-empty) gives ``len(A) + len(B) - 1``
    bytes for the whole: the exact size of the PDU as a whole, from the content-hash
    encoding the caller needs anyway plus a small encoding of the three other
    members. That holds when the sort order is defined, i.e. with ``str`` keys;
    other keys (which no JSON from the network has) take the single encoding,
    which fails or succeeds exactly as before.
    """
    try:
        if set(map(type, pdu)) == _STR_ONLY:
            hashed_members = dict(pdu)
            rest = {}
            for k in _NOT_HASHED_ORDER:
                if k in hashed_members:
                    rest[k] = hashed_members.pop(k)
            hashed = encode_canonical_json(hashed_members)
            size = len(hashed)
            if rest:
                extra = len(encode_canonical_json(rest))
                size = extra if size == 2 else size + extra - 1  # 2: b"{}"
        else:
            hashed = None
            size = len(encode_canonical_json(pdu))
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        raise _fail("not encodable as canonical JSON") from None
    if size > MAX_PDU_SIZE:
        raise _fail(f"larger than {MAX_PDU_SIZE} bytes")
    return hashed


def validate_pdu(room_version: str | RoomVersion, pdu: object) -> None:
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
    validate_pdu_content_json(version, pdu)


def validate_pdu_content_json(version: RoomVersion, pdu: object) -> bytes | None:
    """:func:`validate_pdu` for a resolved room version, returning what it encoded on
    the way: the canonical JSON of ``pdu`` without ``unsigned``, ``signatures`` and
    ``hashes``, over which the content hash is computed
    (:func:`fedlib.events.hashing.check_content_hash` takes it), or ``None`` in the
    rare case it was not computed (keys other than ``str``).
    """
    if not isinstance(pdu, dict):
        raise _fail("not a JSON object")
    hashed = _measure(pdu)

    # Each check below has a fast test that implies the full one passes, and runs
    # the full one (with its error) otherwise, in the same order as ever: a PDU
    # gets the same error as it would without the fast tests.
    etype = pdu.get("type")
    if not (type(etype) is str and len(etype) <= _SHORT):
        _check_str_field(pdu, "type")
    sender = pdu.get("sender")
    if not (type(sender) is str and len(sender) <= _SHORT):
        _check_str_field(pdu, "sender")
    if "state_key" in pdu:
        state_key = pdu["state_key"]
        if not (type(state_key) is str and len(state_key) <= _SHORT):
            _check_str_field(pdu, "state_key", required=False)
    try:
        validate_user_id(sender)
    except InvalidIdError as e:
        raise _fail(f"invalid sender: {e.msg}") from None

    if not isinstance(pdu.get("content"), dict):
        raise _fail("'content' must be an object")

    ts = pdu.get("origin_server_ts")
    if type(ts) is not int and not _is_int(ts):
        raise _fail("'origin_server_ts' must be an integer")
    depth = pdu.get("depth")
    if type(depth) is not int and not _is_int(depth):
        raise _fail("'depth' must be an integer")
    max_depth = _MAX_DEPTH_V6 if version.strict_canonical_json else _MAX_DEPTH_V1
    if not 0 <= depth <= max_depth:  # type: ignore[operator]
        raise _fail("'depth' out of range")

    hashes = pdu.get("hashes")
    if not isinstance(hashes, dict) or not isinstance(hashes.get("sha256"), str):
        raise _fail("'hashes' must be an object with a 'sha256' string")
    signatures = pdu.get("signatures")
    if not isinstance(signatures, dict):
        raise _fail(_BAD_SIGNATURES)
    for sigs in signatures.values():
        if not isinstance(sigs, dict):
            raise _fail(_BAD_SIGNATURES)
        for sig in sigs.values():
            if not isinstance(sig, str):
                raise _fail(_BAD_SIGNATURES)
    if "unsigned" in pdu and not isinstance(pdu["unsigned"], dict):
        raise _fail("'unsigned' must be an object")

    if version.room_id_is_create_hash and etype == "m.room.create":
        # v12: the room ID *is* this event's hash, so the event cannot contain it.
        if "room_id" in pdu:
            raise _fail("a create event in this room version has no 'room_id'")
    else:
        room_id = pdu.get("room_id")
        if not (
            type(room_id) is str and len(room_id) <= _SHORT and is_valid_room_id(version, room_id)
        ):
            _check_str_field(pdu, "room_id")
            try:
                validate_room_id(version, room_id)
            except InvalidIdError as e:
                raise _fail(f"invalid room_id: {e.msg}") from None

    if version.event_id_in_event:
        event_id = pdu.get("event_id")
        if not (
            type(event_id) is str
            and len(event_id) <= _SHORT
            and is_valid_event_id(version, event_id)
        ):
            _check_str_field(pdu, "event_id")
            try:
                validate_event_id(version, event_id)
            except InvalidIdError as e:
                raise _fail(f"invalid event_id: {e.msg}") from None

    prev_events = pdu.get("prev_events")
    auth_events = pdu.get("auth_events")
    if not (
        type(prev_events) is list
        and type(auth_events) is list
        and len(prev_events) <= MAX_PREV_EVENTS
        and len(auth_events) <= MAX_AUTH_EVENTS
        and version.event_format is not EventFormat.V1
        and all_valid_event_ids(version, prev_events + auth_events)
    ):
        _check_refs(version, pdu, "prev_events", MAX_PREV_EVENTS)
        _check_refs(version, pdu, "auth_events", MAX_AUTH_EVENTS)

    redacts = pdu.get("redacts")
    if redacts is not None and not isinstance(redacts, str):
        raise _fail("'redacts' must be a string")
    return hashed
