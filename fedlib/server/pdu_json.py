"""JSON rules checked on PDUs in request bodies, once their room version is known.

Request bodies are parsed before the room (and so its version) is known, so the
v6+ ban on floats is enforced here, per PDU. So is the canonical integer range
for bodies parsed without it (a transaction: one PDU's bad integer must fail that
PDU alone, and EDUs have no such rule).
"""

from __future__ import annotations

from typing import Any

from fedlib.canonical import MAX_INT, MIN_INT
from fedlib.errors import BadJsonError
from fedlib.events.room_versions import get_room_version

__all__ = ["check_pdu_json"]


def check_pdu_json(room_version: str, pdu: Any) -> None:
    """:class:`BadJsonError` when ``pdu`` holds an integer outside the canonical JSON
    range (any room version) or a float in a room version that requires strict
    canonical JSON (v6+)."""
    no_floats = get_room_version(room_version).strict_canonical_json
    stack = [pdu]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float):
            if no_floats:
                raise BadJsonError("Floats are not allowed in events of this room version")
        elif (
            isinstance(item, int) and not isinstance(item, bool) and not MIN_INT <= item <= MAX_INT
        ):
            raise BadJsonError("Integer out of the canonical JSON range")
