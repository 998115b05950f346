"""Hypothesis strategies shared by the core tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from fedlib.canonical import MAX_INT, MIN_INT
from fedlib.events.room_versions import KNOWN_ROOM_VERSIONS

#: Text without lone surrogates (which JSON from the network never decodes to).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)

#: Values canonical JSON can carry.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(MIN_INT, MAX_INT) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(text, json_values, max_size=6)

room_versions = st.sampled_from(list(KNOWN_ROOM_VERSIONS))

_INTERESTING_KEYS = [
    "membership",
    "join_authorised_via_users_server",
    "third_party_invite",
    "creator",
    "additional_creators",
    "join_rule",
    "allow",
    "ban",
    "events",
    "events_default",
    "invite",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
    "notifications",
    "aliases",
    "history_visibility",
    "redacts",
    "body",
    "signed",
]
_TYPES = [
    "m.room.member",
    "m.room.create",
    "m.room.join_rules",
    "m.room.power_levels",
    "m.room.aliases",
    "m.room.history_visibility",
    "m.room.redaction",
    "m.room.message",
    "m.room.topic",
]
_TOP_LEVEL = [
    "origin",
    "membership",
    "prev_state",
    "redacts",
    "junk",
    "event_id",
    "state_key",
    "unsigned",
]

_contents = st.dictionaries(
    st.sampled_from(_INTERESTING_KEYS) | text,
    json_values | st.fixed_dictionaries({"signed": json_values}, optional={"display_name": text}),
    max_size=6,
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """Event-shaped dicts (not necessarily valid PDUs) with the keys redaction cares about."""
    event: dict[str, Any] = {
        "type": draw(st.sampled_from(_TYPES) | text),
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "content": draw(_contents),
        "origin_server_ts": draw(st.integers(0, MAX_INT)),
        "depth": draw(st.integers(0, MAX_INT)),
        "prev_events": [],
        "auth_events": [],
        "hashes": {"sha256": "x"},
        "signatures": draw(
            st.dictionaries(text, st.dictionaries(text, text, max_size=2), max_size=2)
        ),
    }
    for key in draw(st.lists(st.sampled_from(_TOP_LEVEL) | text, max_size=4)):
        event[key] = draw(json_values)
    return event
