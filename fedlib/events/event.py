"""An immutable, typed view of a PDU.

:class:`Event` wraps the PDU dict as received (it does not copy or re-encode it)
and computes the event ID once. Hot paths in other modules work on the plain
dicts; this wrapper is for code that wants names and types. Construct it only
from a PDU that :func:`fedlib.events.validation.validate_pdu` accepted: the
accessors trust the shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from fedlib.events.hashing import event_id_with
from fedlib.events.room_versions import EventFormat, RoomVersion, get_room_version

__all__ = ["Event", "ref_ids"]


def ref_ids(refs: Any) -> list[str]:
    """Event IDs of a ``prev_events``/``auth_events`` list in any event format
    (v1/v2 use ``[event_id, hashes]`` pairs, later versions bare IDs); entries of
    neither shape, and a value that is not a list, give nothing."""
    out: list[str] = []
    if not isinstance(refs, list):
        return out
    for ref in refs:
        if isinstance(ref, str):
            out.append(ref)
        elif isinstance(ref, list | tuple) and ref and isinstance(ref[0], str):
            out.append(ref[0])
    return out


def _ids(refs: Any, fmt: EventFormat) -> list[str]:
    if not isinstance(refs, list):
        return []
    if fmt is EventFormat.V1:
        # v1/v2 list [event_id, {"sha256": ...}] pairs.
        return [ref[0] for ref in refs]
    return list(refs)


@attrs.frozen(slots=True, eq=False)
class Event:
    """A PDU of a known room version, with its event ID.

    Equality and hashing are by event ID (and room version), which identify the
    event's essential content.
    """

    room_version: RoomVersion
    event_id: str
    #: The PDU as received. Treat it as read-only: the event ID was computed from it.
    pdu: Mapping[str, Any]

    @classmethod
    def from_pdu(cls, room_version: str | RoomVersion, pdu: Mapping[str, Any]) -> Event:
        """Wrap ``pdu``; the event ID is computed here (or read, in v1/v2)."""
        version = (
            room_version
            if isinstance(room_version, RoomVersion)
            else get_room_version(room_version)
        )
        return cls(version, event_id_with(version, pdu), pdu)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (
            self.event_id == other.event_id
            and self.room_version.identifier == other.room_version.identifier
        )

    def __hash__(self) -> int:
        return hash(self.event_id)

    def __repr__(self) -> str:
        return f"<Event {self.event_id} {self.type} in {self.room_id} (v{self.room_version.identifier})>"

    @property
    def room_id(self) -> str:
        """The room ID. A v12 create event carries none: its room ID is derived from
        its own event ID (``!`` in place of ``$``)."""
        room_id = self.pdu.get("room_id")
        if room_id is None and self.room_version.room_id_is_create_hash:
            return "!" + self.event_id[1:]
        return room_id if isinstance(room_id, str) else ""

    @property
    def type(self) -> str:
        return self.pdu["type"]  # type: ignore[no-any-return]

    @property
    def state_key(self) -> str | None:
        """The state key, or ``None`` for a non-state event."""
        return self.pdu.get("state_key")

    def is_state(self) -> bool:
        return "state_key" in self.pdu

    @property
    def sender(self) -> str:
        return self.pdu["sender"]  # type: ignore[no-any-return]

    @property
    def content(self) -> Mapping[str, Any]:
        content = self.pdu.get("content")
        return content if isinstance(content, dict) else {}

    @property
    def depth(self) -> int:
        return self.pdu["depth"]  # type: ignore[no-any-return]

    @property
    def origin_server_ts(self) -> int:
        return self.pdu["origin_server_ts"]  # type: ignore[no-any-return]

    @property
    def redacts(self) -> str | None:
        """The event a redaction redacts: ``content.redacts`` from v11 on, the top-level
        ``redacts`` before. (A v11+ event with only a top-level ``redacts`` redacts
        nothing.) ``None`` for other events or when absent or malformed."""
        if self.pdu.get("type") != "m.room.redaction":
            return None
        if self.room_version.redacts_in_content:
            value = self.content.get("redacts")
        else:
            value = self.pdu.get("redacts")
        return value if isinstance(value, str) else None

    def prev_event_ids(self) -> list[str]:
        """The IDs in ``prev_events`` (a new list)."""
        return _ids(self.pdu.get("prev_events"), self.room_version.event_format)

    def auth_event_ids(self) -> list[str]:
        """The IDs in ``auth_events`` (a new list)."""
        return _ids(self.pdu.get("auth_events"), self.room_version.event_format)

    @property
    def membership(self) -> str | None:
        """``content.membership`` of an ``m.room.member`` event, else ``None``."""
        if self.pdu.get("type") != "m.room.member":
            return None
        value = self.content.get("membership")
        return value if isinstance(value, str) else None
