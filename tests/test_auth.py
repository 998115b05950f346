"""The authorisation rules, as a table of cases run on each room version they apply to.

Each case builds a room with :mod:`tests.auth_rooms`, makes one event, and states
the verdict: allowed, or rejected with a substring of the reason. Every case is
checked twice: against the room state (as state resolution calls ``check_auth``)
and through ``check_auth_events_list`` on the event's own listed auth events.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
from signedjson.key import decode_signing_key_base64, get_verify_key
from signedjson.sign import sign_json
from twisted.trial import unittest
from unpaddedbase64 import encode_base64

from fedlib.auth import (
    auth_types_for_event,
    check_auth,
    check_auth_events_list,
    get_named_level,
    get_send_level,
    get_user_power_level,
    is_creator,
    is_valid_user_id,
    select_auth_events,
)
from fedlib.errors import AuthError
from fedlib.events.room_versions import RoomVersion, get_room_version
from tests.auth_rooms import (
    ALICE,
    ALL_VERSIONS,
    BOB,
    CAROL,
    DAVE,
    EVE,
    Event,
    Room,
    standard_room,
)

ALLOW = None
Expect = str | None | Callable[[RoomVersion], str | None]
Built = tuple[Room, Event] | tuple[Room, Event, Mapping[tuple[str, str], Event]]

V_ALL = ALL_VERSIONS
V_PRE7 = ("1", "3", "6")
V_KNOCK = ("7", "8", "9", "10", "11", "12")
V_PRE8 = ("1", "3", "6", "7")
V_RESTRICTED = ("8", "9", "10", "11", "12")
V_KNOCK_RESTRICTED = ("10", "11", "12")
V_PRE12 = ("1", "3", "6", "7", "8", "9", "10", "11")
V_STRINGY = ("1", "3", "6", "7", "8", "9")
V_INT_ONLY = ("10", "11", "12")


@attrs.frozen
class Case:
    name: str
    build: Callable[[str], Built]
    expect: Expect
    versions: tuple[str, ...]


CASES: list[Case] = []


def case(
    name: str, expect: Expect, versions: tuple[str, ...] = V_ALL
) -> Callable[[Callable[[str], Built]], Callable[[str], Built]]:
    def register(build: Callable[[str], Built]) -> Callable[[str], Built]:
        CASES.append(Case(name, build, expect, versions))
        return build

    return register


def when(pred: Callable[[RoomVersion], bool], yes: str | None, no: str | None) -> Expect:
    return lambda v: yes if pred(v) else no


def msg(room: Room, sender: str, **content: Any) -> Event:
    return room.make("m.room.message", sender, {"body": "hi", **content})


def membership(room: Room, sender: str, target: str, value: str, **content: Any) -> Event:
    return room.make("m.room.member", sender, {"membership": value, **content}, state_key=target)


def pl_event(room: Room, sender: str, content: Mapping[str, Any]) -> Event:
    return room.make("m.room.power_levels", sender, dict(content), state_key="")


# --- m.room.create ------------------------------------------------------------------


def _create(v: str, **changes: Any) -> tuple[Room, Event]:
    room = Room(v)
    event = dict(room.create)
    event["content"] = dict(event["content"])
    for key, value in changes.items():
        if key.startswith("content_"):
            name = key[len("content_") :]
            if value is _DROP:
                event["content"].pop(name, None)
            else:
                event["content"][name] = value
        elif value is _DROP:
            event.pop(key, None)
        else:
            event[key] = value
    return room, event


_DROP = object()


@case("create: valid", ALLOW)
def _(v: str) -> Built:
    return _create(v)


@case("create: with prev_events", "prev_events")
def _(v: str) -> Built:
    return _create(v, prev_events=["$other"] if v != "1" else [["$o:a.test", {}]])


@case("create: room_id on another server", "room_id is not on the sender", V_PRE12)
def _(v: str) -> Built:
    return _create(v, room_id="!room:elsewhere.test")


@case("create: room_id present in v12", "has a room_id", ("12",))
def _(v: str) -> Built:
    return _create(v, room_id="!room:a.test")


@case("create: unknown room_version", "unknown room version")
def _(v: str) -> Built:
    return _create(v, content_room_version="999")


@case("create: room_version not a string", "unknown room version")
def _(v: str) -> Built:
    return _create(v, content_room_version=12)


@case("create: no room_version (defaults)", ALLOW)
def _(v: str) -> Built:
    return _create(v, content_room_version=_DROP)


@case(
    "create: no creator",
    when(lambda r: r.implicit_room_creator, ALLOW, "no creator"),
)
def _(v: str) -> Built:
    return _create(v, content_creator=_DROP)


@case("create: additional_creators valid", ALLOW, ("12",))
def _(v: str) -> Built:
    return _create(v, content_additional_creators=[BOB, CAROL])


@case("create: additional_creators empty list", ALLOW, ("12",))
def _(v: str) -> Built:
    return _create(v, content_additional_creators=[])


@case("create: additional_creators not a list", "additional_creators", ("12",))
def _(v: str) -> Built:
    return _create(v, content_additional_creators=BOB)


@case("create: additional_creators with a non-string", "additional_creators", ("12",))
def _(v: str) -> Built:
    return _create(v, content_additional_creators=[BOB, 5])


@case("create: additional_creators with a bad user ID", "additional_creators", ("12",))
def _(v: str) -> Built:
    return _create(v, content_additional_creators=["bob:b.test"])


@case("create: additional_creators with a bad server name", "additional_creators", ("12",))
def _(v: str) -> Built:
    return _create(v, content_additional_creators=["@bob:b test"])


@case("create: additional_creators ignored before v12", ALLOW, ("11",))
def _(v: str) -> Built:
    return _create(v, content_additional_creators="junk")


# --- the create event in the auth events and the room ID ------------------------------


@case("no create event in the auth events", "No m.room.create")
def _(v: str) -> Built:
    room = standard_room(v)
    state = {k: e for k, e in room.state.items() if k != ("m.room.create", "")}
    return room, msg(room, ALICE), state


@case("v12: room ID is not the create event's hash", "v12 rule 2", ("12",))
def _(v: str) -> Built:
    room = standard_room(v)
    event = msg(room, ALICE)
    event["room_id"] = "!" + "A" * 43
    return room, event, room.state


@case("v12: create event of another room", "v12 rule 2", ("12",))
def _(v: str) -> Built:
    room = standard_room(v)
    other = Room(v, creator=BOB)
    state = dict(room.state)
    state[("m.room.create", "")] = other.create
    return room, msg(room, ALICE), state


@case("create event of another room", "another room", V_PRE12)
def _(v: str) -> Built:
    room = standard_room(v)
    create = dict(room.create, room_id="!other:a.test")
    state = dict(room.state)
    state[("m.room.create", "")] = create
    return room, msg(room, ALICE), state


@case("sender's membership from another room", "another room")
def _(v: str) -> Built:
    room = standard_room(v)
    state = dict(room.state)
    key = ("m.room.member", ALICE)
    state[key] = dict(state[key], room_id="!other:a.test")
    return room, msg(room, ALICE), state


# --- m.federate -----------------------------------------------------------------------


@case("m.federate false: remote user joins", "does not federate")
def _(v: str) -> Built:
    room = standard_room(v, create_content={"m.federate": False})
    return room, membership(room, BOB, BOB, "join")


@case("m.federate false: local user joins", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, create_content={"m.federate": False})
    return room, membership(room, EVE, EVE, "join")


@case("m.federate false: remote member sends a message", "does not federate")
def _(v: str) -> Built:
    room = standard_room(v, create_content={"m.federate": False}, members={BOB: "join"})
    return room, msg(room, BOB)


@case("m.federate true: remote user joins", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, create_content={"m.federate": True})
    return room, membership(room, BOB, BOB, "join")


@case("m.federate not a boolean: only false blocks", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, create_content={"m.federate": "false"})
    return room, membership(room, BOB, BOB, "join")


@case("m.federate false: local user invites a remote user", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, create_content={"m.federate": False})
    return room, membership(room, ALICE, BOB, "invite")


# --- m.room.aliases -------------------------------------------------------------------

_SPECIAL_ALIASES: Callable[[RoomVersion], bool] = lambda r: r.special_case_aliases_auth  # noqa: E731


@case(
    "aliases: non-member sets its own server's aliases",
    when(_SPECIAL_ALIASES, ALLOW, "not joined"),
)
def _(v: str) -> Built:
    room = standard_room(v)
    return room, room.make("m.room.aliases", BOB, {"aliases": ["#a:b.test"]}, state_key="b.test")


@case(
    "aliases: state_key is another server",
    when(_SPECIAL_ALIASES, "not the sender's server", ALLOW),
)
def _(v: str) -> Built:
    room = standard_room(v)
    return room, room.make("m.room.aliases", ALICE, {"aliases": []}, state_key="b.test")


@case(
    "aliases: no state_key",
    when(_SPECIAL_ALIASES, "has no state_key", ALLOW),
)
def _(v: str) -> Built:
    room = standard_room(v)
    return room, room.make("m.room.aliases", ALICE, {"aliases": []})


@case(
    "aliases: joined user below state_default",
    when(_SPECIAL_ALIASES, ALLOW, "below the 50 required"),
)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"})
    return room, room.make("m.room.aliases", BOB, {"aliases": []}, state_key="b.test")


# --- membership basics ---------------------------------------------------------------


@case("member: no state_key", "no state_key")
def _(v: str) -> Built:
    room = standard_room(v)
    return room, room.make("m.room.member", BOB, {"membership": "join"})


@case("member: no membership", "no membership")
def _(v: str) -> Built:
    room = standard_room(v)
    return room, room.make("m.room.member", BOB, {}, state_key=BOB)


@case("member: unknown membership", "Unknown membership")
def _(v: str) -> Built:
    room = standard_room(v)
    return room, membership(room, ALICE, BOB, "dance")


@case("member: membership not a string", "Unknown membership")
def _(v: str) -> Built:
    room = standard_room(v)
    return room, room.make("m.room.member", ALICE, {"membership": ["join"]}, state_key=BOB)


@case("member: state_key not a string", "no state_key")
def _(v: str) -> Built:
    room = standard_room(v)
    event = room.make("m.room.member", ALICE, {"membership": "join"}, state_key=BOB)
    event["state_key"] = 5
    return room, event, room.state


# --- join ------------------------------------------------------------------------------


@case("join: creator's first join after the create event", ALLOW)
def _(v: str) -> Built:
    room = Room(v, join_creator=False)
    return room, membership(room, ALICE, ALICE, "join")


@case("join: someone else first after the create event", "Join rule is invite")
def _(v: str) -> Built:
    room = Room(v, join_creator=False)
    return room, membership(room, BOB, BOB, "join")


@case("join: creator's first join with two prev events", "Join rule is invite")
def _(v: str) -> Built:
    room = Room(v, join_creator=False)
    event = membership(room, ALICE, ALICE, "join")
    fake = "$other:a.test"
    event["prev_events"] = (
        [event["prev_events"][0], [fake, {}]]
        if room.room_version.event_id_in_event
        else [event["prev_events"][0], fake]
    )
    return room, event


@case("join: creator's first join citing a wrong prev event", "Join rule is invite")
def _(v: str) -> Built:
    room = Room(v, join_creator=False)
    event = membership(room, ALICE, ALICE, "join")
    event["prev_events"] = [["$x:a.test", {}]] if room.room_version.event_id_in_event else ["$x"]
    return room, event


@case(
    "join: content.creator (not the sender) first join",
    when(lambda r: r.implicit_room_creator, "Join rule is invite", ALLOW),
)
def _(v: str) -> Built:
    room = Room(v, join_creator=False, create_content={"creator": EVE})
    return room, membership(room, EVE, EVE, "join")


@case("join: public room", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v)
    return room, membership(room, BOB, BOB, "join")


@case("join: on behalf of another user", "on behalf of another user")
def _(v: str) -> Built:
    room = standard_room(v)
    return room, membership(room, ALICE, BOB, "join")


@case("join: banned user, public room", "banned")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "ban"})
    return room, membership(room, BOB, BOB, "join")


@case("join: invite room, not invited", "Join rule is invite")
def _(v: str) -> Built:
    room = standard_room(v, join_rule="invite")
    return room, membership(room, BOB, BOB, "join")


@case("join: invite room, invited", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="invite", members={BOB: "invite"})
    return room, membership(room, BOB, BOB, "join")


@case("join: invite room, already joined", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="invite", members={BOB: "join"})
    return room, membership(room, BOB, BOB, "join", displayname="Bob")


@case("join: invite room, left", "Join rule is invite")
def _(v: str) -> Built:
    room = standard_room(v, join_rule="invite", members={BOB: "leave"})
    return room, membership(room, BOB, BOB, "join")


@case("join: public room after leaving", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "leave"})
    return room, membership(room, BOB, BOB, "join")


@case(
    "join: knock room, invited",
    when(lambda r: r.knock_join_rule, ALLOW, "join rule is 'knock'"),
)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="knock", members={BOB: "invite"})
    return room, membership(room, BOB, BOB, "join")


@case(
    "join: knock room, knocked only",
    when(lambda r: r.knock_join_rule, "Join rule is knock", "join rule is 'knock'"),
)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="knock", members={BOB: "knock"})
    return room, membership(room, BOB, BOB, "join")


@case("join: private join rule", "join rule is 'private'")
def _(v: str) -> Built:
    room = standard_room(v, join_rule="private", members={BOB: "invite"})
    return room, membership(room, BOB, BOB, "join")


@case("join: join rule not a string", "join rule is 5")
def _(v: str) -> Built:
    room = standard_room(v)
    room.force("m.room.join_rules", ALICE, {"join_rule": 5}, state_key="")
    return room, membership(room, BOB, BOB, "join")


@case("join: no join rules event, not invited", "Join rule is invite")
def _(v: str) -> Built:
    room = Room(v)
    return room, membership(room, BOB, BOB, "join")


@case("join: no join rules event, invited", ALLOW)
def _(v: str) -> Built:
    room = Room(v)
    room.member(BOB, "invite", sender=ALICE)
    return room, membership(room, BOB, BOB, "join")


def _restricted(
    v: str,
    rule: str = "restricted",
    *,
    authoriser: str | None = CAROL,
    sign: bool = True,
    members: Mapping[str, str] | None = None,
    invite_level: int = 0,
    users: Mapping[str, int] | None = None,
) -> tuple[Room, Event]:
    room = standard_room(
        v,
        join_rule=rule,
        members=dict(members if members is not None else {CAROL: "join"}),
        levels={"invite": invite_level},
        users=users,
    )
    content: dict[str, Any] = {}
    if authoriser is not None:
        content["join_authorised_via_users_server"] = authoriser
    event = membership(room, BOB, BOB, "join", **content)
    if sign and authoriser is not None:
        event["signatures"] = {authoriser.split(":", 1)[1]: {"ed25519:1": "c2lnbmF0dXJl"}}
    return room, event


_RESTRICTED: Callable[[RoomVersion], bool] = lambda r: r.restricted_join_rule  # noqa: E731
_KNOCK_RESTRICTED: Callable[[RoomVersion], bool] = lambda r: r.knock_restricted_join_rule  # noqa: E731


@case(
    "join: restricted, authorised by a joined member",
    when(_RESTRICTED, ALLOW, "join rule is 'restricted'"),
)
def _(v: str) -> Built:
    return _restricted(v)


@case("join: restricted, no authoriser", "without join_authorised_via_users_server", V_RESTRICTED)
def _(v: str) -> Built:
    return _restricted(v, authoriser=None)


@case("join: restricted, authoriser not joined", "is not joined", V_RESTRICTED)
def _(v: str) -> Built:
    return _restricted(v, members={CAROL: "leave"})


@case("join: restricted, authoriser invited only", "is not joined", V_RESTRICTED)
def _(v: str) -> Built:
    return _restricted(v, members={CAROL: "invite"})


@case("join: restricted, authoriser cannot invite", "may not invite", V_RESTRICTED)
def _(v: str) -> Built:
    return _restricted(v, invite_level=50)


@case("join: restricted, authoriser has exactly the invite level", ALLOW, V_RESTRICTED)
def _(v: str) -> Built:
    return _restricted(v, invite_level=50, users={CAROL: 50})


@case(
    "join: restricted, authoriser's server did not sign", "not signed by the server", V_RESTRICTED
)
def _(v: str) -> Built:
    return _restricted(v, sign=False)


@case("join: restricted, authoriser not a string", "not signed by the server", V_RESTRICTED)
def _(v: str) -> Built:
    room, event = _restricted(v, authoriser=None)
    event["content"]["join_authorised_via_users_server"] = 42
    return room, event


@case("join: restricted, invited user needs no authoriser", ALLOW, V_RESTRICTED)
def _(v: str) -> Built:
    return _restricted(v, authoriser=None, members={BOB: "invite"})


@case("join: restricted, banned user", "banned", V_RESTRICTED)
def _(v: str) -> Built:
    return _restricted(v, members={CAROL: "join", BOB: "ban"})


@case(
    "join: knock_restricted, authorised",
    when(_KNOCK_RESTRICTED, ALLOW, "join rule is 'knock_restricted'"),
    V_RESTRICTED,
)
def _(v: str) -> Built:
    return _restricted(v, "knock_restricted")


@case("join: knock_restricted, invited", ALLOW, V_KNOCK_RESTRICTED)
def _(v: str) -> Built:
    return _restricted(v, "knock_restricted", authoriser=None, members={BOB: "invite"})


@case(
    "join: knock_restricted, no authoriser",
    "without join_authorised_via_users_server",
    V_KNOCK_RESTRICTED,
)
def _(v: str) -> Built:
    return _restricted(v, "knock_restricted", authoriser=None)


@case(
    "join: authoriser in a public room must still have signed",
    when(_RESTRICTED, "not signed by the server", ALLOW),
)
def _(v: str) -> Built:
    return _restricted(v, "public", sign=False)


@case(
    "leave carrying join_authorised_via_users_server, unsigned",
    when(_RESTRICTED, "not signed by the server", ALLOW),
)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"})
    return room, membership(room, BOB, BOB, "leave", join_authorised_via_users_server=CAROL)


# --- invite ----------------------------------------------------------------------------


@case("invite: by a joined member", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="invite")
    return room, membership(room, ALICE, BOB, "invite")


@case("invite: by a non-member", "Inviter is not joined")
def _(v: str) -> Built:
    room = standard_room(v, join_rule="invite")
    return room, membership(room, CAROL, BOB, "invite")


@case("invite: by an invited user", "Inviter is not joined")
def _(v: str) -> Built:
    room = standard_room(v, join_rule="invite", members={CAROL: "invite"})
    return room, membership(room, CAROL, BOB, "invite")


@case("invite: target already joined", "membership is join")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"})
    return room, membership(room, ALICE, BOB, "invite")


@case("invite: target banned", "membership is ban")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "ban"})
    return room, membership(room, ALICE, BOB, "invite")


@case("invite: target already invited", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "invite"})
    return room, membership(room, ALICE, BOB, "invite")


@case("invite: target has left", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "leave"})
    return room, membership(room, ALICE, BOB, "invite")


@case("invite: sender below the invite level", "below the invite level")
def _(v: str) -> Built:
    room = standard_room(v, members={CAROL: "join"}, levels={"invite": 50})
    return room, membership(room, CAROL, BOB, "invite")


@case("invite: sender exactly at the invite level", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={CAROL: "join"}, levels={"invite": 50}, users={CAROL: 50})
    return room, membership(room, CAROL, BOB, "invite")


@case(
    "invite: stringy invite level",
    when(lambda r: r.enforce_int_power_levels, "Invalid power level", ALLOW),
)
def _(v: str) -> Built:
    room = standard_room(v, members={CAROL: "join"}, levels={"invite": "10"}, users={CAROL: 10})
    return room, membership(room, CAROL, BOB, "invite")


@case(
    "invite: stringy invite level above the sender",
    when(lambda r: r.enforce_int_power_levels, "Invalid power level", "below the invite level"),
)
def _(v: str) -> Built:
    room = standard_room(v, members={CAROL: "join"}, levels={"invite": " +011 "}, users={CAROL: 10})
    return room, membership(room, CAROL, BOB, "invite")


@case("invite: no power levels event, ordinary member", ALLOW)
def _(v: str) -> Built:
    room = Room(v)
    room.join_rule("public")
    room.member(CAROL, "join")
    return room, membership(room, CAROL, BOB, "invite")


# --- third-party invites -----------------------------------------------------------------

_TPI_KEY = decode_signing_key_base64("ed25519", "1", "ZmVkbGliIGF1dGggdGVzdCBrZXkgb25lIDEyMzQ1Njc")
_TPI_PUBLIC = encode_base64(get_verify_key(_TPI_KEY).encode())
_OTHER_KEY = decode_signing_key_base64(
    "ed25519", "2", "ZmVkbGliIGF1dGggdGVzdCBrZXkgdHdvIDEyMzQ1Njc"
)


def _tpi(
    v: str,
    *,
    inviter: str = ALICE,
    sender: str | None = None,
    mxid: str = BOB,
    token: str = "tok",
    key: Any = _TPI_KEY,
    keys: Mapping[str, Any] | None = None,
    signed_extra: Mapping[str, Any] | None = None,
    members: Mapping[str, str] | None = None,
    with_event: bool = True,
    tpi_content: Any = None,
    mutate: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[Room, Event]:
    room = standard_room(v, join_rule="invite", members={CAROL: "join", **(members or {})})
    if with_event:
        room.force(
            "m.room.third_party_invite",
            inviter,
            keys if keys is not None else {"public_key": _TPI_PUBLIC, "display_name": "b..."},
            state_key="tok",
        )
    signed: dict[str, Any] = {"mxid": mxid, "token": token, "sender": inviter}
    signed.update(signed_extra or {})
    signed = sign_json(signed, "id.test", key)
    tpi: Any = {"display_name": "b...", "signed": signed}
    if tpi_content is not None:
        tpi = tpi_content
    if mutate is not None:
        mutate(tpi)
    return room, membership(room, sender or inviter, BOB, "invite", third_party_invite=tpi)


@case("3pid invite: valid", ALLOW)
def _(v: str) -> Built:
    return _tpi(v)


@case("3pid invite: key listed second in public_keys", ALLOW)
def _(v: str) -> Built:
    other = encode_base64(get_verify_key(_OTHER_KEY).encode())
    keys = {"public_keys": [{"public_key": other}, {"public_key": _TPI_PUBLIC}]}
    return _tpi(v, keys=keys)


@case("3pid invite: a junk key before the right one", ALLOW)
def _(v: str) -> Built:
    keys = {"public_keys": [{"public_key": "AAAA"}, {"public_key": _TPI_PUBLIC}]}
    return _tpi(v, keys=keys)


@case("3pid invite: URL-safe public key", ALLOW)
def _(v: str) -> Built:
    urlsafe = _TPI_PUBLIC.replace("+", "-").replace("/", "_")
    return _tpi(v, keys={"public_key": urlsafe})


@case("3pid invite: inviter has since left", ALLOW)
def _(v: str) -> Built:
    room, event = _tpi(v)
    room.member(ALICE, "leave")
    return room, event, room.state


@case("3pid invite: target banned", "Invitee is banned")
def _(v: str) -> Built:
    return _tpi(v, members={BOB: "ban"})


@case("3pid invite: no signed", "no signed object")
def _(v: str) -> Built:
    return _tpi(v, tpi_content={"display_name": "b..."})


@case("3pid invite: third_party_invite not an object", "no signed object")
def _(v: str) -> Built:
    return _tpi(v, tpi_content="yes")


@case("3pid invite: signed lacks token", "lacks mxid or token")
def _(v: str) -> Built:
    return _tpi(v, mutate=lambda t: t["signed"].pop("token"))


@case("3pid invite: signed lacks mxid", "lacks mxid or token")
def _(v: str) -> Built:
    return _tpi(v, mutate=lambda t: t["signed"].pop("mxid"))


@case("3pid invite: mxid is not the state_key", "mxid is not the state_key")
def _(v: str) -> Built:
    return _tpi(v, mxid=DAVE)


@case("3pid invite: no m.room.third_party_invite for the token", "No m.room.third_party_invite")
def _(v: str) -> Built:
    return _tpi(v, with_event=False)


@case("3pid invite: token names another invite", "No m.room.third_party_invite")
def _(v: str) -> Built:
    return _tpi(v, token="other")


@case("3pid invite: sender differs from the invite's sender", "Sender is not the sender")
def _(v: str) -> Built:
    return _tpi(v, sender=CAROL)


@case("3pid invite: signed with another key", "No signature")
def _(v: str) -> Built:
    return _tpi(v, key=_OTHER_KEY)


@case("3pid invite: signed content altered after signing", "No signature")
def _(v: str) -> Built:
    return _tpi(v, mutate=lambda t: t["signed"].update(extra="x"))


@case("3pid invite: no signatures", "No signature")
def _(v: str) -> Built:
    return _tpi(v, mutate=lambda t: t["signed"].pop("signatures"))


@case("3pid invite: invite event has no keys", "No signature")
def _(v: str) -> Built:
    return _tpi(v, keys={"display_name": "x"})


@case("3pid invite: public key is junk", "No signature")
def _(v: str) -> Built:
    return _tpi(v, keys={"public_key": "!!!", "public_keys": "nope"})


# --- leave, kick, unban ---------------------------------------------------------------------


@case("leave: joined user leaves", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"})
    return room, membership(room, BOB, BOB, "leave")


@case("leave: invited user rejects", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "invite"})
    return room, membership(room, BOB, BOB, "leave")


@case(
    "leave: knocking user rescinds",
    when(lambda r: r.knock_join_rule, ALLOW, "Cannot leave with membership knock"),
)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="knock", members={BOB: "knock"})
    return room, membership(room, BOB, BOB, "leave")


@case("leave: already left", "Cannot leave with membership leave")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "leave"})
    return room, membership(room, BOB, BOB, "leave")


@case("leave: never a member", "Cannot leave with membership None")
def _(v: str) -> Built:
    room = standard_room(v)
    return room, membership(room, BOB, BOB, "leave")


@case("leave: banned user cannot unban themselves", "Cannot leave with membership ban")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "ban"})
    return room, membership(room, BOB, BOB, "leave")


@case("kick: by a moderator", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join", CAROL: "join"}, users={CAROL: 50})
    return room, membership(room, CAROL, BOB, "leave")


@case("kick: by the creator", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"})
    return room, membership(room, ALICE, BOB, "leave")


@case("kick: by a non-member", "Kicker is not joined")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, users={CAROL: 50})
    return room, membership(room, CAROL, BOB, "leave")


@case("kick: below the kick level", "below the kick level")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join", CAROL: "join"}, users={CAROL: 49})
    return room, membership(room, CAROL, BOB, "leave")


@case("kick: target at the same level", "not below the sender's")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join", CAROL: "join"}, users={CAROL: 50, BOB: 50})
    return room, membership(room, CAROL, BOB, "leave")


@case("kick: target above", "not below the sender's")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join", CAROL: "join"}, users={CAROL: 50, BOB: 60})
    return room, membership(room, CAROL, BOB, "leave")


@case("kick: raised kick level", "below the kick level")
def _(v: str) -> Built:
    room = standard_room(
        v, members={BOB: "join", CAROL: "join"}, users={CAROL: 50}, levels={"kick": 75}
    )
    return room, membership(room, CAROL, BOB, "leave")


@case("kick: a user who never joined", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={CAROL: "join"}, users={CAROL: 50})
    return room, membership(room, CAROL, BOB, "leave")


@case("kick: rescind an invite", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "invite", CAROL: "join"}, users={CAROL: 50})
    return room, membership(room, CAROL, BOB, "leave")


@case("unban: by a moderator", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "ban", CAROL: "join"}, users={CAROL: 50})
    return room, membership(room, CAROL, BOB, "leave")


@case("unban: kick level but not ban level", "below the ban level to unban")
def _(v: str) -> Built:
    room = standard_room(
        v,
        members={BOB: "ban", CAROL: "join"},
        users={CAROL: 20},
        levels={"kick": 10, "ban": 30},
    )
    return room, membership(room, CAROL, BOB, "leave")


@case("unban: ban level but not kick level", "below the kick level")
def _(v: str) -> Built:
    room = standard_room(
        v,
        members={BOB: "ban", CAROL: "join"},
        users={CAROL: 20},
        levels={"kick": 30, "ban": 10},
    )
    return room, membership(room, CAROL, BOB, "leave")


# --- ban -----------------------------------------------------------------------------------


@case("ban: by a moderator", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join", CAROL: "join"}, users={CAROL: 50})
    return room, membership(room, CAROL, BOB, "ban")


@case("ban: a user never in the room", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v)
    return room, membership(room, ALICE, BOB, "ban")


@case("ban: below the ban level", "below the ban level")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join", CAROL: "join"}, users={CAROL: 49})
    return room, membership(room, CAROL, BOB, "ban")


@case("ban: target at the same level", "not below the sender's")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join", CAROL: "join"}, users={CAROL: 50, BOB: 50})
    return room, membership(room, CAROL, BOB, "ban")


@case("ban: by a non-member", "Banner is not joined")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join", CAROL: "leave"}, users={CAROL: 50})
    return room, membership(room, CAROL, BOB, "ban")


@case("ban: self-ban", "not below the sender's")
def _(v: str) -> Built:
    room = standard_room(v, members={CAROL: "join"}, users={CAROL: 50})
    return room, membership(room, CAROL, CAROL, "ban")


@case("ban: lowered ban level", ALLOW)
def _(v: str) -> Built:
    room = standard_room(
        v, members={BOB: "join", CAROL: "join"}, users={CAROL: 5}, levels={"ban": 5}
    )
    return room, membership(room, CAROL, BOB, "ban")


# --- knock ---------------------------------------------------------------------------------

_KNOCK: Callable[[RoomVersion], bool] = lambda r: r.knock_join_rule  # noqa: E731


@case("knock: knock room", when(_KNOCK, ALLOW, "Unknown membership"))
def _(v: str) -> Built:
    room = standard_room(v, join_rule="knock")
    return room, membership(room, BOB, BOB, "knock")


@case("knock: after leaving", ALLOW, V_KNOCK)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="knock", members={BOB: "leave"})
    return room, membership(room, BOB, BOB, "knock")


@case("knock: public room", "Cannot knock on a room whose join rule is public", V_KNOCK)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="public")
    return room, membership(room, BOB, BOB, "knock")


@case("knock: invite room", "Cannot knock on a room whose join rule is invite", V_KNOCK)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="invite")
    return room, membership(room, BOB, BOB, "knock")


@case("knock: on behalf of another user", "on behalf of another user", V_KNOCK)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="knock")
    return room, membership(room, ALICE, BOB, "knock")


@case("knock: already invited", "Cannot knock with membership invite", V_KNOCK)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="knock", members={BOB: "invite"})
    return room, membership(room, BOB, BOB, "knock")


@case("knock: already joined", "Cannot knock with membership join", V_KNOCK)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="knock", members={BOB: "join"})
    return room, membership(room, BOB, BOB, "knock")


@case("knock: banned", "Cannot knock with membership ban", V_KNOCK)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="knock", members={BOB: "ban"})
    return room, membership(room, BOB, BOB, "knock")


@case("knock: knocking again", ALLOW, V_KNOCK)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="knock", members={BOB: "knock"})
    return room, membership(room, BOB, BOB, "knock")


@case(
    "knock: knock_restricted room",
    when(_KNOCK_RESTRICTED, ALLOW, "Cannot knock on a room whose join rule is knock_restricted"),
    V_KNOCK,
)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="knock_restricted")
    return room, membership(room, BOB, BOB, "knock")


@case("knock: restricted room", "Cannot knock on a room whose join rule is restricted", V_KNOCK)
def _(v: str) -> Built:
    room = standard_room(v, join_rule="restricted")
    return room, membership(room, BOB, BOB, "knock")


# --- sender in room, required levels, state keys ----------------------------------------


@case("message: by a joined member", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"})
    return room, msg(room, BOB)


@case("message: by a non-member", "not joined")
def _(v: str) -> Built:
    room = standard_room(v)
    return room, msg(room, BOB)


@case("message: by an invited user", "membership invite")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "invite"})
    return room, msg(room, BOB)


@case("message: by a user who left", "membership leave")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "leave"})
    return room, msg(room, BOB)


@case("message: by a banned user", "membership ban")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "ban"})
    return room, msg(room, BOB)


@case("message: below events_default", "below the 10 required")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, levels={"events_default": 10})
    return room, msg(room, BOB)


@case("message: events entry for the type", "below the 20 required")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, levels={"events": {"m.room.message": 20}})
    return room, msg(room, BOB)


@case("message: events entry lower than events_default", ALLOW)
def _(v: str) -> Built:
    room = standard_room(
        v,
        members={BOB: "join"},
        levels={"events": {"m.room.message": 0}, "events_default": 50},
    )
    return room, msg(room, BOB)


@case("message: users_default raises everyone", ALLOW)
def _(v: str) -> Built:
    room = standard_room(
        v, members={BOB: "join"}, levels={"events_default": 10, "users_default": 10}
    )
    return room, msg(room, BOB)


@case("message: negative level", "below the 0 required")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, users={BOB: -1})
    return room, msg(room, BOB)


@case("state: below state_default", "below the 50 required")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"})
    return room, room.make("m.room.topic", BOB, {"topic": "x"}, state_key="")


@case("state: events entry lowers the level", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, levels={"events": {"m.room.topic": 0}})
    return room, room.make("m.room.topic", BOB, {"topic": "x"}, state_key="")


@case("state: lowered state_default", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, levels={"state_default": 0})
    return room, room.make("m.room.topic", BOB, {"topic": "x"}, state_key="")


@case("state: no power levels event, creator", ALLOW)
def _(v: str) -> Built:
    room = Room(v)
    return room, room.make("m.room.topic", ALICE, {"topic": "x"}, state_key="")


@case("state: no power levels event, other member", "below the 50 required")
def _(v: str) -> Built:
    room = Room(v)
    room.member(BOB, "join")
    return room, room.make("m.room.topic", BOB, {"topic": "x"}, state_key="")


@case("message: no power levels event, other member", ALLOW)
def _(v: str) -> Built:
    room = Room(v)
    room.member(BOB, "join")
    return room, msg(room, BOB)


@case("state: state_key is another user", "starts with '@'")
def _(v: str) -> Built:
    room = standard_room(v)
    return room, room.make("m.custom", ALICE, {}, state_key=BOB)


@case("state: state_key is the sender", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, levels={"state_default": 0})
    return room, room.make("m.custom", BOB, {}, state_key=BOB)


@case("state: state_key is the sender plus a suffix", "starts with '@'")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, levels={"state_default": 0})
    return room, room.make("m.custom", BOB, {}, state_key=BOB + "_x")


@case("state: empty state_key on a custom type", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v)
    return room, room.make("m.custom", ALICE, {}, state_key="")


@case("m.room.third_party_invite: at the invite level", ALLOW)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"})
    return room, room.make("m.room.third_party_invite", BOB, {"public_key": "x"}, state_key="t")


@case("m.room.third_party_invite: below the invite level", "below the invite level")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, levels={"invite": 10})
    return room, room.make("m.room.third_party_invite", BOB, {"public_key": "x"}, state_key="t")


@case("m.room.third_party_invite: events entry does not apply", ALLOW)
def _(v: str) -> Built:
    room = standard_room(
        v, members={BOB: "join"}, levels={"events": {"m.room.third_party_invite": 100}}
    )
    return room, room.make("m.room.third_party_invite", BOB, {"public_key": "x"}, state_key="t")


@case("m.room.third_party_invite: by a non-member", "not joined")
def _(v: str) -> Built:
    room = standard_room(v)
    return room, room.make("m.room.third_party_invite", BOB, {"public_key": "x"}, state_key="t")


# --- power levels ----------------------------------------------------------------------------


def _pl_room(v: str, **levels: Any) -> Room:
    users = levels.pop("users", {})
    return standard_room(
        v, members={BOB: "join", CAROL: "join"}, users={BOB: 50, **users}, levels=levels
    )


def _pl_change(room: Room, sender: str, **changes: Any) -> Event:
    current = room.state[("m.room.power_levels", "")]["content"]
    content = {**current, **changes}
    for key, value in changes.items():
        if value is _DROP:
            del content[key]
    return pl_event(room, sender, content)


@case("power levels: first power levels event", ALLOW)
def _(v: str) -> Built:
    room = Room(v)
    return room, pl_event(room, ALICE, {"users": room.creator_levels(), "ban": 60})


@case("power levels: first event may set anything", ALLOW)
def _(v: str) -> Built:
    room = Room(v)
    room.member(BOB, "join")
    room.force("m.room.topic", ALICE, {}, state_key="")
    return room, pl_event(room, ALICE, {"users": {BOB: 1000}, "ban": 1000})


@case("power levels: users not an object", "users is not an object")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users=[ALICE])


@case("power levels: users key not a user ID", "invalid user ID")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users={**room.creator_levels(), "bob": 10})


@case("power levels: users key with a bad server name", "invalid user ID")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users={**room.creator_levels(), "@bob:": 10})


@case("power levels: users key with a historical localpart", ALLOW)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users={**room.creator_levels(), "@Bob Smith!:b.test": 10})


@case("power levels: users value junk string", "Invalid power level")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users={**room.creator_levels(), BOB: "fifty"})


@case(
    "power levels: users value stringy integer",
    when(lambda r: r.enforce_int_power_levels, "Invalid power level", ALLOW),
)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users={**room.creator_levels(), BOB: " +40 "})


@case("power levels: users value with an underscore", "Invalid power level")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users={**room.creator_levels(), BOB: "1_0"})


@case("power levels: users value with a decimal point", "Invalid power level")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users={**room.creator_levels(), BOB: "10.0"})


@case("power levels: users value boolean", "Invalid power level")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users={**room.creator_levels(), BOB: True})


@case("power levels: users value null", "Invalid power level")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users={**room.creator_levels(), BOB: None})


@case(
    "power levels: users value float",
    when(lambda r: r.enforce_int_power_levels, "Invalid power level", ALLOW),
)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users={**room.creator_levels(), BOB: 40.9})


@case(
    "power levels: ban as a string",
    when(lambda r: r.enforce_int_power_levels, "ban is not an integer", ALLOW),
)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, ban="60")


@case(
    "power levels: events value as a string",
    when(lambda r: r.enforce_int_power_levels, "events is not an object of integers", ALLOW),
)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, events={"m.room.name": "60"})


@case(
    "power levels: notifications value as a string",
    when(lambda r: r.enforce_int_power_levels, "notifications is not an object of integers", ALLOW),
)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, notifications={"room": "60"})


@case(
    "power levels: junk ban with no previous power levels",
    when(lambda r: r.enforce_int_power_levels, "ban is not an integer", ALLOW),
)
def _(v: str) -> Built:
    room = Room(v)
    return room, pl_event(room, ALICE, {"users": room.creator_levels(), "ban": "lots"})


@case(
    "power levels: junk ban replacing power levels",
    when(
        lambda r: r.enforce_int_power_levels, "ban is not an integer", "Invalid power level for ban"
    ),
)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, ban="lots")


@case("power levels: sender not joined", "not joined")
def _(v: str) -> Built:
    room = _pl_room(v, users={DAVE: 100})
    return room, _pl_change(room, DAVE, ban=10)


@case("power levels: sender below state_default", "below the 50 required")
def _(v: str) -> Built:
    room = _pl_room(v, users={CAROL: 10})
    return room, _pl_change(room, CAROL, ban=10)


@case("power levels: raise ban within own level", ALLOW)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, ban=50)


@case("power levels: raise ban above own level", "Cannot set ban to 51")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, ban=51)


@case("power levels: change kick from above own level", "Cannot change kick from 60")
def _(v: str) -> Built:
    room = _pl_room(v, kick=60)
    return room, _pl_change(room, BOB, kick=40)


@case("power levels: remove redact that is above own level", "Cannot change redact from 60")
def _(v: str) -> Built:
    room = _pl_room(v, redact=60)
    return room, _pl_change(room, BOB, redact=_DROP)


@case("power levels: add invite above own level", "Cannot set invite to 60")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, invite=60)


@case("power levels: same value in another spelling", ALLOW, V_STRINGY)
def _(v: str) -> Built:
    room = _pl_room(v, kick=60)
    return room, _pl_change(room, BOB, kick="060")


@case("power levels: unchanged level above own", ALLOW)
def _(v: str) -> Built:
    room = _pl_room(v, kick=60, users_default=0)
    return room, _pl_change(room, BOB, users_default=5)


@case("power levels: users_default above own", "Cannot set users_default to 55")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, users_default=55)


@case("power levels: add events entry above own", "Cannot set events['m.room.name'] to 51")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, events={"m.room.name": 51})


@case("power levels: change events entry from above own", "Cannot change events['m.room.name']")
def _(v: str) -> Built:
    room = _pl_room(v, events={"m.room.name": 70})
    return room, _pl_change(room, BOB, events={"m.room.name": 40})


@case("power levels: remove events entry from above own", "Cannot change events['m.room.name']")
def _(v: str) -> Built:
    room = _pl_room(v, events={"m.room.name": 70})
    return room, _pl_change(room, BOB, events={})


@case("power levels: add events entry at own level", ALLOW)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, events={"m.room.name": 50})


@case(
    "power levels: notifications above own level",
    when(lambda r: r.limit_notifications_power_levels, "Cannot set notifications['room']", ALLOW),
)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, notifications={"room": 70})


@case(
    "power levels: notifications removed from above own level",
    when(
        lambda r: r.limit_notifications_power_levels, "Cannot change notifications['room']", ALLOW
    ),
)
def _(v: str) -> Built:
    room = _pl_room(v, notifications={"room": 70})
    return room, _pl_change(room, BOB, notifications={})


@case("power levels: notifications within own level", ALLOW)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, notifications={"room": 50})


@case("power levels: lower own level", ALLOW)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, users={**room.creator_levels(), BOB: 10})


@case("power levels: remove own entry", ALLOW)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, users=room.creator_levels())


@case("power levels: raise own level", "Cannot give @bob:b.test level 51")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, users={**room.creator_levels(), BOB: 51})


@case("power levels: promote another to own level", ALLOW)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, users={**room.creator_levels(), BOB: 50, CAROL: 50})


@case("power levels: promote another above own level", "Cannot give @carol:c.test level 51")
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, users={**room.creator_levels(), BOB: 50, CAROL: 51})


@case("power levels: demote a lower user", ALLOW)
def _(v: str) -> Built:
    room = _pl_room(v, users={CAROL: 40})
    return room, _pl_change(room, BOB, users={**room.creator_levels(), BOB: 50, CAROL: 0})


@case("power levels: demote a peer", "Cannot change the level of @carol:c.test")
def _(v: str) -> Built:
    room = _pl_room(v, users={CAROL: 50})
    return room, _pl_change(room, BOB, users={**room.creator_levels(), BOB: 50, CAROL: 0})


@case("power levels: remove a peer's entry", "Cannot change the level of @carol:c.test")
def _(v: str) -> Built:
    room = _pl_room(v, users={CAROL: 50})
    return room, _pl_change(room, BOB, users={**room.creator_levels(), BOB: 50})


@case(
    "power levels: creator demotes another 100",
    when(lambda r: r.privileged_creators, ALLOW, "Cannot change the level of @carol:c.test"),
)
def _(v: str) -> Built:
    room = _pl_room(v, users={CAROL: 100})
    return room, _pl_change(room, ALICE, users={**room.creator_levels(), BOB: 50, CAROL: 0})


@case("power levels: v12 lists the creator", "lists the room creator", ("12",))
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, BOB, users={ALICE: 0, BOB: 50})


@case("power levels: v12 first event lists the creator", "lists the room creator", ("12",))
def _(v: str) -> Built:
    room = Room(v)
    return room, pl_event(room, ALICE, {"users": {ALICE: 100}})


@case("power levels: v12 lists an additional creator", "lists an additional creator", ("12",))
def _(v: str) -> Built:
    room = standard_room(
        v, create_content={"additional_creators": [CAROL]}, members={CAROL: "join"}
    )
    return room, _pl_change(room, ALICE, users={CAROL: 100})


@case("power levels: listing the creator before v12", ALLOW, V_PRE12)
def _(v: str) -> Built:
    room = _pl_room(v)
    return room, _pl_change(room, ALICE, users={ALICE: 100, BOB: 20})


@case("power levels: v12 additional creator has no limit", ALLOW, ("12",))
def _(v: str) -> Built:
    room = standard_room(
        v,
        create_content={"additional_creators": [CAROL]},
        members={CAROL: "join", BOB: "join"},
        users={BOB: 100},
        levels={"ban": 100},
    )
    return room, _pl_change(room, CAROL, users={BOB: 0}, ban=10**9)


# --- creators' power ----------------------------------------------------------------------


@case(
    "creators: ban the creator at level 100",
    when(lambda r: r.privileged_creators, "not below the sender's", ALLOW),
)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, users={BOB: 100})
    if not room.room_version.privileged_creators:
        room.power_levels({"users": {ALICE: 50, BOB: 100}})
    return room, membership(room, BOB, ALICE, "ban")


@case("creators: v12 additional creator bans a 100 user", ALLOW, ("12",))
def _(v: str) -> Built:
    room = standard_room(
        v,
        create_content={"additional_creators": [CAROL]},
        members={CAROL: "join", BOB: "join"},
        users={BOB: 100},
    )
    return room, membership(room, CAROL, BOB, "ban")


@case("creators: v12 additional creator cannot kick the creator", "not below", ("12",))
def _(v: str) -> Built:
    room = standard_room(
        v, create_content={"additional_creators": [CAROL]}, members={CAROL: "join"}
    )
    return room, membership(room, CAROL, ALICE, "leave")


@case(
    "creators: additional_creators without power before v12",
    "below the 50 required",
    ("11",),
)
def _(v: str) -> Built:
    room = standard_room(
        v, create_content={"additional_creators": [CAROL]}, members={CAROL: "join"}
    )
    return room, room.make("m.room.topic", CAROL, {"topic": "x"}, state_key="")


@case("creators: v12 creator beats a huge events level", ALLOW, ("12",))
def _(v: str) -> Built:
    room = standard_room(v, levels={"events": {"m.room.tombstone": 2**53 - 1}})
    return room, room.make("m.room.tombstone", ALICE, {}, state_key="")


@case(
    "creators: v11 creator is the sender, not content.creator",
    when(lambda r: r.implicit_room_creator, ALLOW, "below the 50 required"),
)
def _(v: str) -> Built:
    room = Room(v, create_content={"creator": EVE}, join_creator=False)
    room.member(ALICE, "join")
    return room, room.make("m.room.topic", ALICE, {"topic": "x"}, state_key="")


# --- redactions ------------------------------------------------------------------------------

_V1_REDACT: Callable[[RoomVersion], bool] = lambda r: r.event_id_in_event  # noqa: E731


def _redaction(v: str, sender: str, target_server: str, **levels: Any) -> tuple[Room, Event]:
    room = standard_room(v, members={BOB: "join", CAROL: "join"}, users={CAROL: 50}, levels=levels)
    redacts = f"$target:{target_server}" if room.room_version.event_id_in_event else "$target"
    event = room.make("m.room.redaction", sender, {}, redacts=redacts)
    if room.room_version.implicit_room_creator:
        event["content"]["redacts"] = redacts
    return room, event


@case("redaction: by a moderator", ALLOW)
def _(v: str) -> Built:
    return _redaction(v, CAROL, "b.test")


@case("redaction: own server's event", ALLOW)
def _(v: str) -> Built:
    return _redaction(v, BOB, "b.test")


@case(
    "redaction: another server's event, below the redact level",
    when(_V1_REDACT, "may not redact", ALLOW),
)
def _(v: str) -> Built:
    return _redaction(v, BOB, "c.test")


@case(
    "redaction: lowered redact level",
    ALLOW,
)
def _(v: str) -> Built:
    return _redaction(v, BOB, "c.test", redact=0)


@case("redaction: events level for m.room.redaction", "below the 60 required")
def _(v: str) -> Built:
    return _redaction(v, CAROL, "b.test", events={"m.room.redaction": 60})


@case("redaction: by a non-member", "not joined")
def _(v: str) -> Built:
    return _redaction(v, DAVE, "d.test")


# --- junk in the state ----------------------------------------------------------------------


@case(
    "junk: users_default a string in the power levels state",
    when(lambda r: r.enforce_int_power_levels, "Invalid power level", ALLOW),
)
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, levels={"users_default": "5"})
    return room, msg(room, BOB)


@case("junk: events not an object in the state", "'events' is not an object")
def _(v: str) -> Built:
    room = standard_room(v, members={BOB: "join"}, levels={"events": ["m.room.message"]})
    return room, msg(room, BOB)


@case("junk: member event content not an object", "not joined")
def _(v: str) -> Built:
    room = standard_room(v)
    room.force("m.room.member", BOB, None, state_key=BOB)
    room.state[("m.room.member", BOB)]["content"] = "join"
    return room, msg(room, BOB)


@case("junk: event content not an object", "content is not an object")
def _(v: str) -> Built:
    room = standard_room(v)
    event = msg(room, ALICE)
    event["content"] = []
    return room, event, room.state


@case("junk: sender not a user ID", "sender is not a user ID")
def _(v: str) -> Built:
    room = standard_room(v)
    event = msg(room, ALICE)
    event["sender"] = "alice"
    return room, event, room.state


@case("junk: no type", "no type")
def _(v: str) -> Built:
    room = standard_room(v)
    event = msg(room, ALICE)
    del event["type"]
    return room, event, room.state


# --- running the table ----------------------------------------------------------------------


def _expected(case_: Case, version: str) -> str | None:
    if callable(case_.expect):
        return case_.expect(get_room_version(version))
    return case_.expect


def _verdict(run: Callable[[], None]) -> str | None:
    try:
        run()
    except AuthError as e:
        return e.msg
    return None


def _listed_auth_events(room: Room, event: Event) -> list[Event]:
    listed = event.get("auth_events", [])
    ids = [a[0] if isinstance(a, list) else a for a in listed]
    return [room.ids[i] for i in ids]


class AuthTableTests(unittest.TestCase):
    """One test per (case, room version); the methods are generated below."""

    def check_case(self, case_: Case, version: str) -> None:
        built = case_.build(version)
        room, event = built[0], built[1]
        expected = _expected(case_, version)
        state = built[2] if len(built) == 3 else room.state
        got = _verdict(lambda: check_auth(version, event, state))
        self._assert_verdict(expected, got, "against the state")
        if len(built) == 3 or event.get("type") == "m.room.create":
            return
        # The same verdict through the event's own listed auth events.

        def via_list() -> None:
            listed = _listed_auth_events(room, event)
            mapping = check_auth_events_list(version, event, listed, create_event=room.create)
            check_auth(version, event, mapping, create_event_id=room.create_id)

        self._assert_verdict(expected, _verdict(via_list), "via the auth events list")

    def _assert_verdict(self, expected: str | None, got: str | None, how: str) -> None:
        if expected is None:
            self.assertIsNone(got, f"rejected {how}: {got}")
        else:
            self.assertIsNotNone(got, f"allowed {how}, expected {expected!r}")
            assert got is not None
            self.assertIn(expected, got, f"{how}: got {got!r}")


def _add_table_tests() -> int:
    count = 0
    seen: set[str] = set()
    for case_ in CASES:
        slug = "".join(c if c.isalnum() else "_" for c in case_.name.lower()).strip("_")
        while "__" in slug:
            slug = slug.replace("__", "_")
        assert slug not in seen, f"duplicate case name {case_.name}"
        seen.add(slug)
        for version in case_.versions:

            def test(self: AuthTableTests, case_: Case = case_, version: str = version) -> None:
                self.check_case(case_, version)

            test.__doc__ = f"v{version}: {case_.name}"
            setattr(AuthTableTests, f"test_{slug}_v{version}", test)
            count += 1
    return count


TABLE_SIZE = _add_table_tests()

#: Room versions whose rules are those of a version in the table: v2 has v1's rules,
#: v4 and v5 have v3's (they differ in event IDs and key validity, not in auth).
SAME_RULES = {"2": "1", "4": "3", "5": "3"}


class SameRulesTests(unittest.TestCase):
    """The table's v1 and v3 rows, on v2, v4 and v5."""

    def test_v2_v4_v5(self) -> None:
        runner = AuthTableTests()
        checked = 0
        for version, like in SAME_RULES.items():
            for case_ in CASES:
                if like in case_.versions:
                    runner.check_case(case_, version)
                    checked += 1
        self.assertGreater(checked, 400)


class TableShapeTests(unittest.TestCase):
    def test_table_is_large(self) -> None:
        self.assertGreaterEqual(len(CASES), 150)
        self.assertGreaterEqual(TABLE_SIZE, 150)

    def test_every_version_is_covered(self) -> None:
        for version in ALL_VERSIONS:
            n = sum(1 for c in CASES if version in c.versions)
            self.assertGreater(n, 100, version)


class _RecordingState(Mapping[tuple[str, str], Event]):
    """A state map that records which keys are read."""

    def __init__(self, state: Mapping[tuple[str, str], Event]) -> None:
        self.state = state
        self.read: set[tuple[str, str]] = set()

    def __getitem__(self, key: tuple[str, str]) -> Event:
        self.read.add(key)
        return self.state[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        raise AssertionError("check_auth must not iterate over the state")

    def __len__(self) -> int:
        raise AssertionError("check_auth must not size the state")


class ReadsOnlySelectedStateTests(unittest.TestCase):
    """check_auth reads nothing from the state but the auth events selection (and,
    in v12, the create event), so it may be handed a whole room's state."""

    def test_table(self) -> None:
        checked = 0
        for case_ in CASES:
            for version in case_.versions:
                built = case_.build(version)
                room, event = built[0], built[1]
                if event.get("type") == "m.room.create":
                    continue
                state = _RecordingState(built[2] if len(built) == 3 else room.state)
                _verdict(lambda: check_auth(version, event, state))  # noqa: B023
                allowed = auth_types_for_event(version, event) | {("m.room.create", "")}
                self.assertLessEqual(state.read, allowed, f"{case_.name} v{version}")
                checked += 1
        self.assertGreater(checked, 1500)


# --- auth events selection and the listed auth events ---------------------------------------


class AuthEventsSelectionTests(unittest.TestCase):
    def test_message(self) -> None:
        for v in ALL_VERSIONS:
            room = standard_room(v)
            got = auth_types_for_event(v, msg(room, BOB))
            want = {("m.room.power_levels", ""), ("m.room.member", BOB)}
            if v != "12":
                want.add(("m.room.create", ""))
            self.assertEqual(got, want, v)

    def test_create_has_none(self) -> None:
        self.assertEqual(auth_types_for_event("10", {"type": "m.room.create"}), set())

    def test_join_with_authoriser(self) -> None:
        for v in ("7", "8", "12"):
            event = {
                "type": "m.room.member",
                "sender": BOB,
                "state_key": BOB,
                "content": {"membership": "join", "join_authorised_via_users_server": CAROL},
            }
            got = auth_types_for_event(v, event)
            self.assertIn(("m.room.join_rules", ""), got)
            self.assertEqual(("m.room.member", CAROL) in got, v != "7", v)

    def test_third_party_invite_token(self) -> None:
        event = {
            "type": "m.room.member",
            "sender": ALICE,
            "state_key": BOB,
            "content": {"membership": "invite", "third_party_invite": {"signed": {"token": "t"}}},
        }
        got = auth_types_for_event("10", event)
        self.assertIn(("m.room.third_party_invite", "t"), got)
        self.assertIn(("m.room.member", BOB), got)
        self.assertIn(("m.room.join_rules", ""), got)

    def test_leave_has_no_join_rules(self) -> None:
        event = {
            "type": "m.room.member",
            "sender": ALICE,
            "state_key": BOB,
            "content": {"membership": "leave"},
        }
        self.assertNotIn(("m.room.join_rules", ""), auth_types_for_event("10", event))

    def test_junk_shapes_add_nothing(self) -> None:
        event = {
            "type": "m.room.member",
            "sender": 5,
            "state_key": [],
            "content": {"membership": "invite", "third_party_invite": {"signed": []}},
        }
        self.assertEqual(
            auth_types_for_event("9", event),
            {("m.room.power_levels", ""), ("m.room.create", ""), ("m.room.join_rules", "")},
        )

    def test_select_auth_events(self) -> None:
        room = standard_room("12", members={BOB: "join"})
        state_ids = {k: room.id_of(e) for k, e in room.state.items()}
        event = membership(room, ALICE, BOB, "ban")
        got = select_auth_events("12", event, state_ids)
        want = {
            state_ids[("m.room.power_levels", "")],
            state_ids[("m.room.member", ALICE)],
            state_ids[("m.room.member", BOB)],
        }
        self.assertEqual(set(got), want)
        self.assertEqual(len(got), 3)


class AuthEventsListTests(unittest.TestCase):
    def _room_and_event(self, v: str) -> tuple[Room, Event, list[Event]]:
        room = standard_room(v, members={BOB: "join"})
        event = msg(room, BOB)
        return room, event, _listed_auth_events(room, event)

    def test_valid(self) -> None:
        for v in ("1", "11", "12"):
            room, event, listed = self._room_and_event(v)
            got = check_auth_events_list(v, event, listed, create_event=room.create)
            self.assertIs(got[("m.room.create", "")], room.create)
            self.assertIs(got[("m.room.member", BOB)], room.state[("m.room.member", BOB)])

    def test_v12_without_create_event_argument(self) -> None:
        _room, event, listed = self._room_and_event("12")
        self.assertNotIn(("m.room.create", ""), check_auth_events_list("12", event, listed))

    def test_duplicate(self) -> None:
        room, event, listed = self._room_and_event("10")
        other = room.member(BOB, "join", displayname="B")
        with self.assertRaisesRegex(AuthError, "Duplicate"):
            check_auth_events_list("10", event, [*listed, other])

    def test_unexpected_entry(self) -> None:
        room, event, listed = self._room_and_event("10")
        with self.assertRaisesRegex(AuthError, "not one the auth events selection picks"):
            check_auth_events_list("10", event, [*listed, room.state[("m.room.join_rules", "")]])

    def test_v12_create_listed(self) -> None:
        room, event, listed = self._room_and_event("12")
        with self.assertRaisesRegex(AuthError, "must not be listed"):
            check_auth_events_list("12", event, [*listed, room.create])

    def test_missing_create(self) -> None:
        _room, event, listed = self._room_and_event("9")
        listed = [e for e in listed if e["type"] != "m.room.create"]
        with self.assertRaisesRegex(AuthError, "No m.room.create"):
            check_auth_events_list("9", event, listed)

    def test_other_room(self) -> None:
        _room, event, listed = self._room_and_event("11")
        listed = [
            dict(e, room_id="!x:a.test") if e["type"] == "m.room.member" else e for e in listed
        ]
        with self.assertRaisesRegex(AuthError, "in another room"):
            check_auth_events_list("11", event, listed)

    def test_not_state(self) -> None:
        room, event, listed = self._room_and_event("11")
        with self.assertRaisesRegex(AuthError, "not a state event"):
            check_auth_events_list("11", event, [*listed, msg(room, BOB)])


# --- helpers ----------------------------------------------------------------------------------


class PowerLevelHelperTests(unittest.TestCase):
    def test_user_levels(self) -> None:
        pl = {"content": {"users": {BOB: "30", CAROL: 10}, "users_default": 5}}
        create = {"sender": ALICE, "content": {"creator": ALICE}}
        self.assertEqual(get_user_power_level("9", BOB, pl, create), 30)
        self.assertEqual(get_user_power_level("9", DAVE, pl, create), 5)
        self.assertEqual(get_user_power_level("9", ALICE, pl, create), 5)
        self.assertEqual(get_user_power_level("9", ALICE, None, create), 100)
        self.assertEqual(get_user_power_level("9", BOB, None, create), 0)
        with self.assertRaises(AuthError):
            get_user_power_level("10", BOB, pl, create)

    def test_creators_infinite_in_v12(self) -> None:
        create = {"sender": ALICE, "content": {"additional_creators": [BOB]}}
        pl = {"content": {"users": {CAROL: 100}}}
        self.assertEqual(get_user_power_level("12", ALICE, pl, create), math.inf)
        self.assertEqual(get_user_power_level("12", BOB, None, create), math.inf)
        self.assertEqual(get_user_power_level("12", CAROL, pl, create), 100)
        self.assertEqual(get_user_power_level("12", CAROL, None, create), 0)
        self.assertEqual(get_user_power_level("11", BOB, None, create), 0)
        self.assertEqual(get_user_power_level("11", ALICE, None, create), 100)
        self.assertTrue(is_creator("12", BOB, create))
        self.assertFalse(is_creator("11", BOB, create))
        self.assertFalse(is_creator("10", ALICE, create))

    def test_named_levels(self) -> None:
        self.assertEqual(get_named_level("10", None, "ban"), 50)
        self.assertEqual(get_named_level("10", None, "invite"), 0)
        self.assertEqual(get_named_level("10", {"content": {"ban": 7}}, "ban"), 7)
        self.assertEqual(get_named_level("3", {"content": {"ban": "07"}}, "ban"), 7)
        self.assertEqual(get_named_level("3", {"content": {"ban": 7.9}}, "ban"), 7)
        self.assertEqual(get_named_level("3", {"content": {"ban": -7.9}}, "ban"), -7)
        self.assertEqual(get_named_level("10", None, "custom", 3), 3)

    def test_send_levels(self) -> None:
        pl = {"content": {"events": {"m.a": 7}, "state_default": 20, "events_default": 3}}
        self.assertEqual(get_send_level("10", pl, "m.a", False), 7)
        self.assertEqual(get_send_level("10", pl, "m.b", True), 20)
        self.assertEqual(get_send_level("10", pl, "m.b", False), 3)
        self.assertEqual(get_send_level("10", None, "m.b", True), 50)
        self.assertEqual(get_send_level("10", None, "m.b", False), 0)

    def test_user_ids(self) -> None:
        for good in (ALICE, "@:a.test", "@a:1.2.3.4:8448", "@a:[::1]", "@ü:a.test"):
            self.assertTrue(is_valid_user_id(good), good)
        for bad in ("alice", "@alice", "@a:", "@a:b c", "@a\x00:b", "@a:" + "b" * 300, 5, None):
            self.assertFalse(is_valid_user_id(bad), bad)


class CreateEventIdArgumentTests(unittest.TestCase):
    def test_v12_passed_id_is_used(self) -> None:
        room = standard_room("12")
        event = msg(room, ALICE)
        check_auth("12", event, room.state, create_event_id=room.create_id)
        with self.assertRaisesRegex(AuthError, "v12 rule 2"):
            check_auth("12", event, room.state, create_event_id="$wrong")

    def test_creator_join_uses_passed_id(self) -> None:
        room = Room("10", join_creator=False)
        event = membership(room, ALICE, ALICE, "join")
        check_auth("10", event, room.state, create_event_id=room.create_id)
        with self.assertRaisesRegex(AuthError, "Join rule is invite"):
            check_auth("10", event, room.state, create_event_id="$wrong")
