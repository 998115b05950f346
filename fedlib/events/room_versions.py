"""Room versions as data.

Each stable room version is one frozen :class:`RoomVersion` record of named
flags. Code branches on these flags, never on version strings, so a new room
version is a new row here plus whatever new behaviour its flags switch on.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from fedlib.errors import UnsupportedRoomVersionError


class EventFormat(enum.Enum):
    #: v1, v2: ``event_id`` is a field ``$opaque:server``; prev/auth events are
    #: ``[event_id, {"sha256": ...}]`` pairs.
    V1 = 1
    #: v3: event IDs are ``$`` + standard unpadded base64 of the reference hash.
    V3 = 3
    #: v4+: as v3 but URL-safe base64.
    V4 = 4


class StateResAlgorithm(enum.Enum):
    V1 = "v1"
    V2 = "v2"
    #: Room v12: v2 plus the conflicted state subgraph, iterative auth checks
    #: starting from the empty state, and no create event in auth_events.
    V2_1 = "v2.1"


class RedactionRules(enum.Enum):
    V1 = 1  # v1-v5
    V6 = 6  # m.room.aliases loses "aliases"
    V8 = 8  # m.room.join_rules keeps "allow"
    V9 = 9  # m.room.member keeps "join_authorised_via_users_server"
    V11 = 11  # create keeps all content; PL keeps "invite"; redaction keeps "redacts"; ...


@attrs.frozen(slots=True)
class RoomVersion:
    identifier: str
    event_format: EventFormat
    state_res: StateResAlgorithm
    redaction_rules: RedactionRules
    #: v5+: a signing key must be valid at the event's origin_server_ts.
    enforce_key_validity: bool
    #: v1-v5: m.room.aliases is authorised by the sender's server only.
    special_case_aliases_auth: bool
    #: v6+: no floats, integers in canonical range.
    strict_canonical_json: bool
    #: v6+: the "notifications" key of power levels is checked on change.
    limit_notifications_power_levels: bool
    #: v7+: the ``knock`` join rule and membership.
    knock_join_rule: bool
    #: v8+: the ``restricted`` join rule and ``join_authorised_via_users_server``.
    restricted_join_rule: bool
    #: v10+: the ``knock_restricted`` join rule.
    knock_restricted_join_rule: bool
    #: v10+: power level values must be integers (no strings).
    enforce_int_power_levels: bool
    #: v11+: the creator is the create event's sender; ``content.creator`` is gone.
    implicit_room_creator: bool
    #: v12: room ID is the create event's reference hash; the create event is not
    #: listed in auth_events; creators (sender + additional_creators) have
    #: infinite power.
    room_id_is_create_hash: bool

    @property
    def event_id_in_event(self) -> bool:
        """v1/v2 carry ``event_id`` in the PDU; later versions derive it."""
        return self.event_format is EventFormat.V1

    @property
    def redacts_in_content(self) -> bool:
        """v11+: a redaction names its target in ``content.redacts`` (top level before)."""
        return self.redaction_rules is RedactionRules.V11

    @property
    def privileged_creators(self) -> bool:
        """Room creators have infinite power (v12)."""
        return self.room_id_is_create_hash


def _v(identifier: str, **overrides: object) -> RoomVersion:
    n = int(identifier)
    values: dict[str, object] = dict(
        identifier=identifier,
        event_format=(EventFormat.V1 if n <= 2 else EventFormat.V3 if n == 3 else EventFormat.V4),
        state_res=(
            StateResAlgorithm.V1
            if n == 1
            else StateResAlgorithm.V2_1
            if n >= 12
            else StateResAlgorithm.V2
        ),
        redaction_rules=(
            RedactionRules.V1
            if n <= 5
            else RedactionRules.V6
            if n <= 7
            else RedactionRules.V8
            if n == 8
            else RedactionRules.V9
            if n <= 10
            else RedactionRules.V11
        ),
        enforce_key_validity=n >= 5,
        special_case_aliases_auth=n <= 5,
        strict_canonical_json=n >= 6,
        limit_notifications_power_levels=n >= 6,
        knock_join_rule=n >= 7,
        restricted_join_rule=n >= 8,
        knock_restricted_join_rule=n >= 10,
        enforce_int_power_levels=n >= 10,
        implicit_room_creator=n >= 11,
        room_id_is_create_hash=n >= 12,
    )
    values.update(overrides)
    return RoomVersion(**values)  # type: ignore[arg-type]


KNOWN_ROOM_VERSIONS: Mapping[str, RoomVersion] = MappingProxyType(
    {str(n): _v(str(n)) for n in range(1, 13)}
)

#: The version new rooms get when the caller does not choose.
DEFAULT_ROOM_VERSION = "12"


def get_room_version(identifier: str, errcode: str = "M_UNSUPPORTED_ROOM_VERSION") -> RoomVersion:
    """The record for ``identifier``, or :class:`UnsupportedRoomVersionError`.

    Federation endpoints pass ``errcode="M_INCOMPATIBLE_ROOM_VERSION"``.
    """
    try:
        return KNOWN_ROOM_VERSIONS[identifier]
    except (KeyError, TypeError):
        raise UnsupportedRoomVersionError(str(identifier), errcode=errcode) from None
