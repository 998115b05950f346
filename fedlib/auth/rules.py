"""The authorisation rules of every room version (spec: room versions, "Authorisation rules").

:func:`check_auth` is the one entry point. It is pure and synchronous, reads plain
event dicts and never mutates or copies them, and looks up only the handful of
state keys the rules need, so ``auth_events`` may be a whole room's state.

Rule numbers in comments are those of the v1 rules ("v1 r5.2"), shifted as later
versions remove (aliases, v6) or add (v12 rule 2) rules; the messages name the rule
so a rejection can be traced to the spec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from unpaddedbase64 import decode_base64

from fedlib.auth.power_levels import (
    NAMED_LEVEL_DEFAULTS,
    domain_of,
    is_valid_user_id,
    level_or_reject,
    named_level_with,
    parse_level,
    send_level_with,
    user_level_with,
)
from fedlib.canonical import encode_canonical_json
from fedlib.errors import AuthError
from fedlib.events.hashing import event_id_with
from fedlib.events.room_versions import (
    KNOWN_ROOM_VERSIONS,
    EventFormat,
    RoomVersion,
    get_room_version,
)

StateKey = tuple[str, str]

CREATE_KEY: StateKey = ("m.room.create", "")
POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")
JOIN_RULES_KEY: StateKey = ("m.room.join_rules", "")

_MEMBER = "m.room.member"
_TPI = "m.room.third_party_invite"
_AUTHORISER = "join_authorised_via_users_server"
_NAMED_LEVELS = tuple(NAMED_LEVEL_DEFAULTS)

#: Looks up one auth event by state key, checking it is in the event's room.
_Getter = Callable[[StateKey], "Mapping[str, Any] | None"]


def _reject(reason: str) -> AuthError:
    return AuthError(reason)


def _content(event: Mapping[str, Any]) -> Mapping[str, Any]:
    content = event.get("content")
    return content if isinstance(content, dict) else {}


def _membership(member_event: Mapping[str, Any] | None) -> str | None:
    if member_event is None:
        return None
    membership = _content(member_event).get("membership")
    return membership if type(membership) is str else None


# --- Auth events selection ---------------------------------------------------------


def auth_types_with(version: RoomVersion, event: Mapping[str, Any]) -> set[StateKey]:
    """:func:`auth_types_for_event` for a resolved :class:`RoomVersion`."""
    etype = event.get("type")
    if etype == "m.room.create":
        return set()
    types: set[StateKey] = {POWER_LEVELS_KEY}
    if not version.room_id_is_create_hash:
        types.add(CREATE_KEY)
    sender = event.get("sender")
    if type(sender) is str:
        types.add((_MEMBER, sender))
    if etype != _MEMBER:
        return types
    state_key = event.get("state_key")
    if type(state_key) is str:
        types.add((_MEMBER, state_key))
    content = _content(event)
    membership = content.get("membership")
    if membership in ("join", "invite", "knock"):
        types.add(JOIN_RULES_KEY)
    if membership == "invite":
        tpi = content.get("third_party_invite")
        signed = tpi.get("signed") if isinstance(tpi, dict) else None
        token = signed.get("token") if isinstance(signed, dict) else None
        if type(token) is str:
            types.add((_TPI, token))
    if membership == "join" and version.restricted_join_rule:
        authoriser = content.get(_AUTHORISER)
        if type(authoriser) is str:
            types.add((_MEMBER, authoriser))
    return types


def auth_types_for_event(room_version: str, event: Mapping[str, Any]) -> set[StateKey]:
    """The (type, state_key) pairs of the state that authorise ``event``.

    The spec's "Auth events selection": the create event (not in v12, where the
    room ID stands for it), the power levels, the sender's membership; for
    membership events also the target's membership, the join rules (for join,
    invite and knock), the third-party invite named by the token of a third-party
    invite, and (v8+) the membership of ``join_authorised_via_users_server`` of a
    join. Nothing for a create event. Malformed fields add nothing.
    """
    return auth_types_with(get_room_version(room_version), event)


def select_auth_events(
    room_version: str, event: Mapping[str, Any], state: Mapping[StateKey, str]
) -> list[str]:
    """The event IDs to put in a new event's ``auth_events``, picked from ``state``
    (a map of (type, state_key) to event ID), in a stable order."""
    wanted = auth_types_for_event(room_version, event)
    return [state[key] for key in sorted(wanted) if key in state]


# --- Rule 2 (v12 rule 3): the event's own auth_events -----------------------------


def check_auth_events_list(
    room_version: str,
    event: Mapping[str, Any],
    auth_events: Sequence[Mapping[str, Any]],
    *,
    create_event: Mapping[str, Any] | None = None,
) -> dict[StateKey, Mapping[str, Any]]:
    """Check the events ``event`` lists in its ``auth_events`` and map them by state key.

    ``auth_events`` are the listed events themselves (already fetched, and all
    accepted: a rejected auth event rejects ``event``, which is the caller's to
    enforce). Rejects, with :class:`~fedlib.errors.AuthError`, duplicates of a
    (type, state_key) pair, entries the auth events selection would not pick
    (in v12 that includes the create event), entries of another room, and before
    v12 a list without the create event.

    The result is the ``auth_events`` argument of :func:`check_auth`. In v12 the
    create event is not listed; pass it as ``create_event`` to have it added
    under ``("m.room.create", "")``, as :func:`check_auth` needs it.
    """
    version = get_room_version(room_version)
    if event.get("type") == "m.room.create":
        return {}
    room_id = event.get("room_id")
    expected = auth_types_with(version, event)
    found: dict[StateKey, Mapping[str, Any]] = {}
    for auth_event in auth_events:
        etype = auth_event.get("type")
        state_key = auth_event.get("state_key")
        if type(etype) is not str or type(state_key) is not str:
            raise _reject("Auth event is not a state event")
        key = (etype, state_key)
        if key in found:
            raise _reject(f"Duplicate auth events for {key}")
        if key == CREATE_KEY and version.room_id_is_create_hash:
            raise _reject("The create event must not be listed in auth_events in this room version")
        if key not in expected:
            raise _reject(f"Auth event {key} is not one the auth events selection picks")
        if auth_event.get("room_id") != room_id:
            raise _reject(f"Auth event {key} is in another room: {auth_event.get('room_id')!r}")
        found[key] = auth_event
    if version.room_id_is_create_hash:
        if create_event is not None:
            found[CREATE_KEY] = create_event
    elif CREATE_KEY not in found:
        raise _reject("No m.room.create event in auth_events")
    return found


# --- The rules ------------------------------------------------------------------


def check_auth(
    room_version: str,
    event: Mapping[str, Any],
    auth_events: Mapping[StateKey, Mapping[str, Any]],
    *,
    create_event_id: str | None = None,
) -> None:
    """Raise :class:`~fedlib.errors.AuthError` unless the rules of ``room_version``
    allow ``event`` given ``auth_events``.

    ``auth_events`` maps (type, state_key) to event dicts: the event's own auth
    events (see :func:`check_auth_events_list`) or a room state during state
    resolution. Only the entries the rules need are read. In v12, where events do
    not list the create event, the caller includes it under
    ``("m.room.create", "")`` all the same.

    ``create_event_id``: the create event's ID if the caller already knows it (it
    usually does: it is the key under which it holds the event). It is needed in
    v12 to check the room ID (rule 2) and in every version for the creator's first
    join; when omitted it is computed from the create event, which costs one
    reference hash. The caller vouches for it: a wrong value can let an event
    through.

    The signature of the ``join_authorised_via_users_server``'s server is only
    checked for presence here; verifying signatures is done on receipt. Whether the
    auth events were themselves rejected is the caller's concern.
    """
    _check(get_room_version(room_version), event, auth_events, create_event_id)


def check_auth_with(
    version: RoomVersion,
    event: Mapping[str, Any],
    auth_events: Mapping[StateKey, Mapping[str, Any]],
    create_event_id: str | None = None,
) -> None:
    """:func:`check_auth` for a resolved :class:`RoomVersion` (the hot path)."""
    _check(version, event, auth_events, create_event_id)


def _check(
    version: RoomVersion,
    event: Mapping[str, Any],
    auth_events: Mapping[StateKey, Mapping[str, Any]],
    create_event_id: str | None,
) -> None:
    etype = event.get("type")
    sender = event.get("sender")
    if type(etype) is not str:
        raise _reject("Event has no type")
    sender_domain = domain_of(sender)
    if type(sender) is not str or not sender.startswith("@") or sender_domain is None:
        raise _reject(f"Event sender is not a user ID: {sender!r}")
    content = event.get("content")
    if not isinstance(content, dict):
        raise _reject("Event content is not an object")

    if etype == "m.room.create":
        _check_create(version, event, content, sender_domain)
        return

    room_id = event.get("room_id")
    if type(room_id) is not str:
        raise _reject("Event has no room_id")
    create = auth_events.get(CREATE_KEY)
    if create is None:
        raise _reject("No m.room.create event in auth events")
    if version.room_id_is_create_hash:
        # v12 rule 2: the room ID is the create event's ID with "!" for "$".
        if create_event_id is None:
            create_event_id = _event_id(version, create)
        if room_id != "!" + create_event_id[1:]:
            raise _reject("Room ID is not the create event's ID (v12 rule 2)")
    elif create.get("room_id") != room_id:
        raise _reject("The create event is in another room (rule 2.5)")

    def get(key: StateKey) -> Mapping[str, Any] | None:
        found = auth_events.get(key)
        if found is not None and found.get("room_id") != room_id:
            raise _reject(f"Auth event {key} is in another room (rule 2.5)")
        return found

    create_content = _content(create)
    # Rule 3 (v12 rule 4): m.federate.
    if (
        create_content.get("m.federate") is False
        and domain_of(create.get("sender")) != sender_domain
    ):
        raise _reject("The room does not federate and the sender is on another server (rule 3)")

    if etype == "m.room.aliases" and version.special_case_aliases_auth:
        # v1-v5 rule 4.
        state_key = event.get("state_key")
        if type(state_key) is not str:
            raise _reject("m.room.aliases event has no state_key (rule 4.1)")
        if state_key != sender_domain:
            raise _reject("m.room.aliases state_key is not the sender's server (rule 4.2)")
        return

    power_levels = get(POWER_LEVELS_KEY)

    if etype == _MEMBER:
        _check_membership(
            version, event, content, sender, get, create, power_levels, create_event_id
        )
        return

    # v1 rule 6.
    sender_membership = _membership(get((_MEMBER, sender)))
    if sender_membership != "join":
        raise _reject(f"Sender is not joined to the room (membership {sender_membership})")

    sender_level = user_level_with(version, sender, power_levels, create)
    if etype == _TPI:
        # v1 rule 7.
        invite_level = named_level_with(version, power_levels, "invite")
        if sender_level < invite_level:
            raise _reject(f"Sender's power level {sender_level} is below the invite level")
        return

    # v1 rule 8.
    state_key = event.get("state_key")
    is_state = "state_key" in event
    required = send_level_with(version, power_levels, etype, is_state)
    if sender_level < required:
        raise _reject(
            f"Sender's power level {sender_level} is below the {required} required for {etype}"
        )

    # v1 rule 9.
    if type(state_key) is str and state_key.startswith("@") and state_key != sender:
        raise _reject("State key starts with '@' and is not the sender")
    if is_state and type(state_key) is not str:
        raise _reject("State key is not a string")

    if etype == "m.room.power_levels":
        _check_power_levels(version, event, content, sender, sender_level, create, power_levels)
        return

    if etype == "m.room.redaction" and version.event_format is EventFormat.V1:
        # v1 rule 11 (v1, v2 only; v3 moved the redact-level check out of the auth
        # rules, together with the event IDs whose domains it compares).
        if sender_level >= named_level_with(version, power_levels, "redact"):
            return
        redacts_domain = domain_of(event.get("redacts"))
        if redacts_domain is None or redacts_domain != domain_of(event.get("event_id")):
            raise _reject("Sender may not redact other servers' events (v1 rule 11)")


def _event_id(version: RoomVersion, event: Mapping[str, Any]) -> str:
    try:
        return event_id_with(version, dict(event))
    except Exception as e:
        raise _reject(f"Cannot compute the create event's ID: {e}") from None


def _check_create(
    version: RoomVersion, event: Mapping[str, Any], content: Mapping[str, Any], sender_domain: str
) -> None:
    # Rule 1.1.
    if event.get("prev_events"):
        raise _reject("Create event has prev_events (rule 1.1)")
    if version.room_id_is_create_hash:
        # v12 rule 1.2.
        if "room_id" in event:
            raise _reject("Create event has a room_id (v12 rule 1.2)")
    elif domain_of(event.get("room_id")) != sender_domain:
        raise _reject("Create event's room_id is not on the sender's server (rule 1.2)")
    # Rule 1.3.
    if "room_version" in content:
        claimed = content["room_version"]
        if type(claimed) is not str or claimed not in KNOWN_ROOM_VERSIONS:
            raise _reject(f"Create event names an unknown room version {claimed!r} (rule 1.3)")
    # Rule 1.4 (until v11).
    if not version.implicit_room_creator and "creator" not in content:
        raise _reject("Create event has no creator (rule 1.4)")
    # v12 rule 1.4.
    if version.privileged_creators and "additional_creators" in content:
        extra = content["additional_creators"]
        if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
            raise _reject("additional_creators is not a list of user IDs (v12 rule 1.4)")


def _check_membership(
    version: RoomVersion,
    event: Mapping[str, Any],
    content: Mapping[str, Any],
    sender: str,
    get: _Getter,
    create: Mapping[str, Any],
    power_levels: Mapping[str, Any] | None,
    create_event_id: str | None,
) -> None:
    # v1 rule 5.1.
    target = event.get("state_key")
    membership = content.get("membership")
    if type(target) is not str:
        raise _reject("Membership event has no state_key (rule 5.1)")
    if "membership" not in content:
        raise _reject("Membership event has no membership (rule 5.1)")

    # v8 rule 4.2: presence of the authorising server's signature only.
    if version.restricted_join_rule and _AUTHORISER in content:
        authoriser_domain = domain_of(content[_AUTHORISER])
        signatures = event.get("signatures")
        server_sigs = (
            signatures.get(authoriser_domain)
            if isinstance(signatures, dict) and authoriser_domain is not None
            else None
        )
        if not isinstance(server_sigs, dict) or not server_sigs:
            raise _reject(
                "Event is not signed by the server of join_authorised_via_users_server (rule 4.2)"
            )

    if membership == "join":
        _check_join(
            version, event, content, sender, target, get, create, power_levels, create_event_id
        )
        return

    sender_membership = _membership(get((_MEMBER, sender)))
    target_membership = (
        sender_membership if target == sender else _membership(get((_MEMBER, target)))
    )

    if membership == "invite":
        tpi = content.get("third_party_invite")
        if "third_party_invite" in content:
            _check_third_party_invite(event, sender, target, target_membership, tpi, get)
            return
        if sender_membership != "join":
            raise _reject(f"Inviter is not joined to the room (membership {sender_membership})")
        if target_membership in ("join", "ban"):
            raise _reject(f"Invitee's membership is {target_membership}")
        sender_level = user_level_with(version, sender, power_levels, create)
        if sender_level < named_level_with(version, power_levels, "invite"):
            raise _reject(f"Inviter's power level {sender_level} is below the invite level")
        return

    if membership == "leave":
        if target == sender:
            allowed: tuple[str, ...] = (
                ("invite", "join", "knock") if version.knock_join_rule else ("invite", "join")
            )
            if sender_membership not in allowed:
                raise _reject(f"Cannot leave with membership {sender_membership}")
            return
        if sender_membership != "join":
            raise _reject(f"Kicker is not joined to the room (membership {sender_membership})")
        sender_level = user_level_with(version, sender, power_levels, create)
        if target_membership == "ban" and sender_level < named_level_with(
            version, power_levels, "ban"
        ):
            raise _reject(f"Sender's power level {sender_level} is below the ban level to unban")
        target_level = user_level_with(version, target, power_levels, create)
        if sender_level < named_level_with(version, power_levels, "kick"):
            raise _reject(f"Sender's power level {sender_level} is below the kick level")
        if target_level >= sender_level:
            raise _reject(
                f"Target's power level {target_level} is not below the sender's {sender_level}"
            )
        return

    if membership == "ban":
        if sender_membership != "join":
            raise _reject(f"Banner is not joined to the room (membership {sender_membership})")
        sender_level = user_level_with(version, sender, power_levels, create)
        if sender_level < named_level_with(version, power_levels, "ban"):
            raise _reject(f"Sender's power level {sender_level} is below the ban level")
        target_level = user_level_with(version, target, power_levels, create)
        if target_level >= sender_level:
            raise _reject(
                f"Target's power level {target_level} is not below the sender's {sender_level}"
            )
        return

    if membership == "knock" and version.knock_join_rule:
        join_rule = _join_rule(get)
        knockable = (
            ("knock", "knock_restricted") if version.knock_restricted_join_rule else ("knock",)
        )
        if join_rule not in knockable:
            raise _reject(f"Cannot knock on a room whose join rule is {join_rule}")
        if target != sender:
            raise _reject("Cannot knock on behalf of another user")
        if sender_membership in ("ban", "invite", "join"):
            raise _reject(f"Cannot knock with membership {sender_membership}")
        return

    raise _reject(f"Unknown membership {membership!r}")


def _join_rule(get: _Getter) -> object:
    join_rules = get(JOIN_RULES_KEY)
    if join_rules is None:
        # The spec names no default; "invite" is what rooms without the event have
        # always been treated as.
        return "invite"
    return _content(join_rules).get("join_rule", "invite")


def _check_join(
    version: RoomVersion,
    event: Mapping[str, Any],
    content: Mapping[str, Any],
    sender: str,
    target: str,
    get: _Getter,
    create: Mapping[str, Any],
    power_levels: Mapping[str, Any] | None,
    create_event_id: str | None,
) -> None:
    # Rule 5.2.1: the creator's own first join, right after the create event.
    prev_events = event.get("prev_events")
    if isinstance(prev_events, list) and len(prev_events) == 1:
        if version.implicit_room_creator:
            creator = create.get("sender")
        else:
            creator = _content(create).get("creator")
        if creator == target:
            prev = prev_events[0]
            if version.event_format is EventFormat.V1:
                prev = prev[0] if isinstance(prev, list) and prev else None
            if type(prev) is str:
                if create_event_id is None:
                    create_event_id = _event_id(version, create)
                if prev == create_event_id:
                    return
    # Rule 5.2.2.
    if sender != target:
        raise _reject("Cannot join on behalf of another user")
    membership = _membership(get((_MEMBER, sender)))
    # Rule 5.2.3.
    if membership == "ban":
        raise _reject("Sender is banned from the room")
    join_rule = _join_rule(get)
    if join_rule == "invite" or (version.knock_join_rule and join_rule == "knock"):
        # Rule 5.2.4.
        if membership in ("invite", "join"):
            return
        raise _reject(f"Join rule is {join_rule} and the sender's membership is {membership}")
    if (version.restricted_join_rule and join_rule == "restricted") or (
        version.knock_restricted_join_rule and join_rule == "knock_restricted"
    ):
        # v8 rule 4.3.5.
        if membership in ("invite", "join"):
            return
        authoriser = content.get(_AUTHORISER)
        if type(authoriser) is not str:
            raise _reject(f"Join to a {join_rule} room without join_authorised_via_users_server")
        if _membership(get((_MEMBER, authoriser))) != "join":
            raise _reject("join_authorised_via_users_server is not joined to the room")
        authoriser_level = user_level_with(version, authoriser, power_levels, create)
        if authoriser_level < named_level_with(version, power_levels, "invite"):
            raise _reject("join_authorised_via_users_server may not invite users")
        return
    if join_rule == "public":
        return
    raise _reject(f"Cannot join a room whose join rule is {join_rule!r}")


def _check_third_party_invite(
    event: Mapping[str, Any],
    sender: str,
    target: str,
    target_membership: str | None,
    tpi: object,
    get: _Getter,
) -> None:
    # v1 rule 5.3.1.
    if target_membership == "ban":
        raise _reject("Invitee is banned from the room")
    signed = tpi.get("signed") if isinstance(tpi, dict) else None
    if not isinstance(signed, dict):
        raise _reject("third_party_invite has no signed object")
    if "mxid" not in signed or "token" not in signed:
        raise _reject("third_party_invite.signed lacks mxid or token")
    if signed["mxid"] != target:
        raise _reject("third_party_invite.signed.mxid is not the state_key")
    token = signed["token"]
    invite = get((_TPI, token)) if type(token) is str else None
    if invite is None:
        raise _reject("No m.room.third_party_invite event for the token")
    if invite.get("sender") != sender:
        raise _reject("Sender is not the sender of the m.room.third_party_invite event")
    if not _signed_by_any(signed, _public_keys(_content(invite))):
        raise _reject("No signature of third_party_invite.signed matches the invite's keys")


def _public_keys(content: Mapping[str, Any]) -> list[bytes]:
    encoded: list[object] = []
    if "public_key" in content:
        encoded.append(content["public_key"])
    listed = content.get("public_keys")
    if isinstance(listed, list):
        encoded.extend(k.get("public_key") for k in listed if isinstance(k, dict))
    keys = []
    for value in encoded:
        if type(value) is not str:
            continue
        try:
            key = decode_base64(value)
        except Exception:
            continue
        if len(key) == 32:
            keys.append(key)
    return keys


def _signed_by_any(signed: Mapping[str, Any], keys: list[bytes]) -> bool:
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict) or not keys:
        return False
    candidates: list[bytes] = []
    for server_sigs in signatures.values():
        if not isinstance(server_sigs, dict):
            continue
        for sig in server_sigs.values():
            if type(sig) is not str:
                continue
            try:
                candidates.append(decode_base64(sig))
            except Exception:
                continue
    if not candidates:
        return False
    try:
        message = encode_canonical_json(
            {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
        )
    except Exception:
        return False
    for key in keys:
        verify_key = VerifyKey(key)
        for sig in candidates:
            try:
                verify_key.verify(message, sig)
                return True
            except (BadSignatureError, ValueError, TypeError):
                continue
    return False


def _check_power_levels(
    version: RoomVersion,
    event: Mapping[str, Any],
    content: Mapping[str, Any],
    sender: str,
    sender_level: int | float,
    create: Mapping[str, Any],
    current: Mapping[str, Any] | None,
) -> None:
    if version.enforce_int_power_levels:
        # v10 rules 9.1, 9.2. Earlier versions only require ``users`` to be valid;
        # their other values are parsed (leniently) when a change is compared.
        for name in _NAMED_LEVELS:
            if name in content and type(content[name]) is not int:
                raise _reject(f"Power level {name} is not an integer (v10 rule 9.1)")
        for map_name in ("events", "notifications"):
            if map_name in content:
                raw = content[map_name]
                if not isinstance(raw, dict) or any(type(v) is not int for v in raw.values()):
                    raise _reject(
                        f"Power levels {map_name} is not an object of integers (rule 9.2)"
                    )
    # v1 rule 10.1.
    users: Mapping[str, Any] = {}
    if "users" in content:
        users = content["users"]
        if not isinstance(users, dict):
            raise _reject("Power levels users is not an object (rule 10.1)")
        for user, value in users.items():
            if not is_valid_user_id(user):
                raise _reject(f"Power levels users has an invalid user ID {user!r} (rule 10.1)")
            if type(value) is not int and parse_level(version, value) is None:
                raise _reject(f"Invalid power level for {user!r}: {value!r} (rule 10.1)")

    if version.privileged_creators:
        # v12 rule 10.4.
        if create.get("sender") in users:
            raise _reject("Power levels users lists the room creator (v12 rule 10.4)")
        extra = _content(create).get("additional_creators")
        if isinstance(extra, list) and any(type(u) is str and u in users for u in extra):
            raise _reject("Power levels users lists an additional creator (v12 rule 10.4)")

    if current is None:
        return
    old_content = _content(current)

    # Rules 10.3-10.7 look only at alterations, so only altered values are parsed:
    # a change to one user of a big room costs one comparison per entry.
    for name, old, new in _alterations(version, old_content, content, "levels"):
        if old is not None and old > sender_level:
            raise _reject(f"Cannot change {name} from {old}, above the sender's level")
        if new is not None and new > sender_level:
            raise _reject(f"Cannot set {name} to {new}, above the sender's level")

    checked_maps = (
        ("events", "notifications") if version.limit_notifications_power_levels else ("events",)
    )
    for map_name in checked_maps:
        for key, old, new in _alterations(version, old_content, content, map_name):
            if old is not None and old > sender_level:
                raise _reject(
                    f"Cannot change {map_name}[{key!r}] from {old}, above the sender's level"
                )
            if new is not None and new > sender_level:
                raise _reject(f"Cannot set {map_name}[{key!r}] to {new}, above the sender's level")

    for user, old, new in _alterations(version, old_content, content, "users"):
        if old is not None and user != sender and old >= sender_level:
            raise _reject(f"Cannot change the level of {user}, not below the sender's")
        if new is not None and new > sender_level:
            raise _reject(f"Cannot give {user} level {new}, above the sender's level")


_MISSING = object()


def _level_entries(content: Mapping[str, Any], map_name: str) -> Mapping[str, Any]:
    if map_name == "levels":
        return content
    raw = content.get(map_name, _MISSING)
    if raw is _MISSING:
        return {}
    if not isinstance(raw, dict):
        raise _reject(f"Power levels {map_name} is not an object")
    return raw


def _alterations(
    version: RoomVersion,
    old_content: Mapping[str, Any],
    new_content: Mapping[str, Any],
    map_name: str,
) -> list[tuple[str, int | None, int | None]]:
    """The entries of ``map_name`` (``"levels"``: the named top-level levels) added,
    changed or removed, as (key, old level or None, new level or None)."""
    old_map = _level_entries(old_content, map_name)
    new_map = _level_entries(new_content, map_name)
    keys: Iterable[str] = _NAMED_LEVELS if map_name == "levels" else new_map
    found = []
    for key in keys:
        new_raw = new_map.get(key, _MISSING)
        old_raw = old_map.get(key, _MISSING)
        # Same JSON value, no alteration. The type test keeps 1 and true apart.
        if type(new_raw) is type(old_raw) and new_raw == old_raw:
            continue
        old = None if old_raw is _MISSING else level_or_reject(version, old_raw, f"{key}")
        new = None if new_raw is _MISSING else level_or_reject(version, new_raw, f"{key}")
        if old != new:
            found.append((key, old, new))
    if map_name != "levels":
        for key, old_raw in old_map.items():
            if key not in new_map:
                found.append((key, level_or_reject(version, old_raw, f"{key}"), None))
    return found
