"""JSON rules that depend on the room version, checked on PDUs in request bodies.

Request bodies are parsed before the room (and so its version) is known, so the
v6+ ban on floats is enforced here, per PDU, once the version is.
"""

from __future__ import annotations

from typing import Any

from fedlib.errors import BadJsonError
from fedlib.events.room_versions import get_room_version

__all__ = ["check_pdu_json"]


def _has_float(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_pdu_json(room_version: str, pdu: Any) -> None:
    """:class:`BadJsonError` when ``pdu`` holds a float in a room version that requires
    strict canonical JSON (integers are range-checked by the parser already)."""
    if get_room_version(room_version).strict_canonical_json and _has_float(pdu):
        raise BadJsonError("Floats are not allowed in events of this room version")
