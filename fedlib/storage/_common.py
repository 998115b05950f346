"""Helpers every store shares: reading event fields across formats, and the rules
for deriving state after an event and the new forward extremities."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from fedlib.events.event import ref_ids
from fedlib.storage.interface import EventStatus, PersistItem, ServerKey, StateKey, StateMap


def now_ms() -> int:
    return int(time.time() * 1000)


def prev_ids(event: Mapping[str, Any]) -> list[str]:
    return ref_ids(event.get("prev_events"))


def auth_ids(event: Mapping[str, Any]) -> list[str]:
    return ref_ids(event.get("auth_events"))


def state_key_of(event: Mapping[str, Any]) -> StateKey | None:
    sk = event.get("state_key")
    typ = event.get("type")
    if isinstance(sk, str) and isinstance(typ, str):
        return (typ, sk)
    return None


def int_field(event: Mapping[str, Any], name: str) -> int:
    value = event.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def membership_of(event: Mapping[str, Any]) -> str | None:
    if event.get("type") != "m.room.member":
        return None
    content = event.get("content")
    if isinstance(content, Mapping):
        m = content.get("membership")
        if isinstance(m, str):
            return m
    return None


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def changes_state(item: PersistItem) -> bool:
    """Whether the event itself enters the state after it (accepted and soft-failed
    state events do; a soft-failed event was valid against its own state)."""
    return item.status in (EventStatus.ACCEPTED, EventStatus.SOFT_FAILED) and (
        state_key_of(item.event) is not None
    )


def check_items(room_id: str, items: list[PersistItem]) -> None:
    for item in items:
        if item.event.get("room_id") not in (None, room_id):
            raise ValueError(f"event {item.event_id} is not in room {room_id}")
        if item.status is not EventStatus.OUTLIER and item.state_before is None:
            raise ValueError(f"non-outlier event {item.event_id} needs state_before")
        if item.status is EventStatus.REJECTED and item.rejection_reason is None:
            # A reason keeps /event answers explainable; an empty one is still a mark.
            pass


def new_extremities(
    old: Iterable[str],
    new_events: list[tuple[str, list[str]]],
    referenced: set[str],
) -> set[str]:
    """``old`` minus everything the new accepted events point at, plus the new events
    no stored event points at (``referenced`` holds those that are)."""
    ext = set(old)
    for event_id, _ in new_events:
        if event_id not in referenced:
            ext.add(event_id)
    for _, prevs in new_events:
        ext.difference_update(prevs)
    return ext


def state_diff(base: StateMap, target: StateMap) -> dict[StateKey, str | None]:
    """Entries turning ``base`` into ``target`` (``None`` deletes a key)."""
    delta: dict[StateKey, str | None] = {}
    for k, v in target.items():
        if base.get(k) != v:
            delta[k] = v
    for k in base:
        if k not in target:
            delta[k] = None
    return delta


def key_supersedes(new: ServerKey, old: ServerKey) -> bool:
    """Whether a freshly fetched key record should replace the stored one: an expiry
    is final, otherwise the later ``valid_until_ts`` wins."""
    if old.expired_ts is not None and new.expired_ts is None:
        return False
    if new.expired_ts is not None:
        return True
    return new.valid_until_ts >= old.valid_until_ts
