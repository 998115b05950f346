"""Properties of the authorisation rules on generated input.

Whatever shape the content of the event or of the state has (junk power levels,
wrong types anywhere), the rules only ever answer "allowed" or
:class:`~fedlib.errors.AuthError`; they never crash, and never modify their input.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from fedlib.auth import (
    auth_types_for_event,
    check_auth,
    check_auth_events_list,
    get_named_level,
    get_user_power_level,
    select_auth_events,
)
from fedlib.errors import AuthError
from tests.auth_rooms import ALICE, ALL_VERSIONS, BOB, CAROL, standard_room

USERS = [ALICE, BOB, CAROL, "@x:", "alice", "", "@a:b:c"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(
        USERS
        + ["join", "invite", "leave", "ban", "knock", "public", "restricted", "50", " 7 ", "1_0"]
    ),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=4), st.sampled_from(USERS)), children, max_size=4
        ),
    ),
    max_leaves=12,
)
level_values = st.one_of(
    st.integers(min_value=-100, max_value=200), st.sampled_from(["50", "x", " +5 "]), json_values
)
power_levels_content = st.fixed_dictionaries(
    {},
    optional={
        "users": st.one_of(st.dictionaries(st.sampled_from(USERS), level_values), json_values),
        "users_default": level_values,
        "events_default": level_values,
        "state_default": level_values,
        "ban": level_values,
        "kick": level_values,
        "invite": level_values,
        "redact": level_values,
        "events": st.one_of(
            st.dictionaries(st.sampled_from(["m.room.message", "m.room.member"]), level_values),
            json_values,
        ),
        "notifications": json_values,
    },
)
member_content = st.fixed_dictionaries(
    {},
    optional={
        "membership": st.one_of(
            st.sampled_from(["join", "invite", "leave", "ban", "knock"]), json_values
        ),
        "join_authorised_via_users_server": st.one_of(st.sampled_from(USERS), json_values),
        "third_party_invite": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "signed": st.one_of(
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "mxid": st.one_of(st.sampled_from(USERS), json_values),
                                "token": st.one_of(st.just("tok"), json_values),
                                "signatures": json_values,
                            },
                        ),
                        json_values,
                    )
                },
            ),
            json_values,
        ),
    },
)
#: True about one time in five (sampled_from shrinks toward its first element).
rarely = st.sampled_from([False, False, False, False, True])

event_types = st.sampled_from(
    [
        "m.room.member",
        "m.room.power_levels",
        "m.room.message",
        "m.room.third_party_invite",
        "m.room.redaction",
        "m.room.aliases",
        "m.room.create",
        "m.room.join_rules",
    ]
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, dict[str, Any], dict[Any, Any]]:
    version = draw(st.sampled_from(ALL_VERSIONS))
    room = standard_room(
        version, members={BOB: "join", CAROL: draw(st.sampled_from(["join", "invite", "ban"]))}
    )
    etype = draw(event_types)
    if etype == "m.room.member":
        content: Any = draw(member_content)
    elif etype == "m.room.power_levels":
        content = draw(power_levels_content)
    else:
        content = draw(st.dictionaries(st.text(max_size=4), json_values, max_size=3))
    if draw(rarely):
        content = draw(json_values)
    state_key: Any = draw(st.sampled_from([ALICE, BOB, CAROL, "", "tok", *USERS]))
    if draw(rarely):
        state_key = draw(st.one_of(st.none(), json_values))
    sender = (
        draw(st.sampled_from(USERS))
        if draw(st.integers(0, 3)) == 0
        else draw(st.sampled_from([ALICE, BOB, CAROL]))
    )
    event = room.make(etype, ALICE, {}, state_key=state_key if isinstance(state_key, str) else "")
    event["sender"] = sender
    event["content"] = content
    if state_key is None:
        event.pop("state_key", None)
    elif not isinstance(state_key, str):
        event["state_key"] = state_key
    if draw(rarely):
        field = draw(st.sampled_from(["prev_events", "room_id", "redacts", "signatures"]))
        event[field] = draw(json_values)
    # Junk in the state the event is checked against.
    state: dict[Any, Any] = dict(room.state)
    junk_state = draw(
        st.lists(
            st.sampled_from(
                [
                    ("m.room.power_levels", ""),
                    ("m.room.join_rules", ""),
                    ("m.room.member", BOB),
                    ("m.room.member", ALICE),
                    ("m.room.create", ""),
                    ("m.room.third_party_invite", "tok"),
                ]
            ),
            max_size=3,
        )
    )
    for key in junk_state:
        base = state.get(key) or {"type": key[0], "state_key": key[1], "room_id": room.room_id}
        junk = dict(base)
        if key == ("m.room.power_levels", ""):
            junk["content"] = draw(power_levels_content)
        else:
            junk["content"] = draw(json_values)
        if draw(rarely):
            junk["sender"] = draw(json_values)
        state[key] = junk
    return version, event, state


class NeverCrashTests(unittest.TestCase):
    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(scenarios())
    def test_check_auth_raises_only_auth_error(
        self, scenario: tuple[str, dict[str, Any], dict[Any, Any]]
    ) -> None:
        version, event, state = scenario
        before = copy.deepcopy((event, state))
        with contextlib.suppress(AuthError):
            check_auth(version, event, state)
        self.assertEqual((event, state), before)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(scenarios())
    def test_auth_events_helpers_raise_only_auth_error(
        self, scenario: tuple[str, dict[str, Any], dict[Any, Any]]
    ) -> None:
        version, event, state = scenario
        types = auth_types_for_event(version, event)
        self.assertTrue(all(isinstance(k, tuple) and len(k) == 2 for k in types))
        ids = {k: f"$id{i}" for i, k in enumerate(state)}
        chosen = select_auth_events(version, event, ids)
        self.assertEqual(len(chosen), len(set(chosen)))
        try:
            mapping = check_auth_events_list(version, event, list(state.values()))
        except AuthError:
            return
        with contextlib.suppress(AuthError):
            check_auth(version, event, mapping)

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(ALL_VERSIONS),
        power_levels_content,
        st.sampled_from(USERS),
        json_values,
    )
    def test_level_helpers_raise_only_auth_error(
        self, version: str, content: dict[str, Any], user: str, create_content: Any
    ) -> None:
        pl = {"content": content}
        create = {"sender": ALICE, "content": create_content}
        try:
            level = get_user_power_level(version, user, pl, create)
            self.assertIsInstance(level, int | float)
        except AuthError:
            pass
        for name in ("ban", "kick", "invite", "redact", "state_default"):
            with contextlib.suppress(AuthError):
                self.assertIsInstance(get_named_level(version, pl, name), int)
