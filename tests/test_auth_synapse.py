"""fedlib's authorisation verdicts against Synapse's on the same events.

``tests/fixtures/synapse_auth.json`` is written by
``tests/fixtures/make_synapse_auth_fixtures.py`` (run with Synapse's virtualenv): the
rows of the table in ``tests/test_auth.py`` on every room version they apply to, and
rooms generated at random, each with Synapse's verdict. fedlib must agree on every
case, except the few listed in :data:`DIVERGENCES`, where Synapse departs from the
spec and fedlib follows the spec.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from fedlib.auth import check_auth, check_auth_events_list
from fedlib.errors import AuthError

FIXTURE = Path(__file__).parent / "fixtures" / "synapse_auth.json"

ALL = frozenset(("1", "3", "6", "7", "8", "9", "10", "11", "12"))
STRINGY = frozenset(("1", "3", "6", "7", "8", "9"))
RESTRICTED = frozenset(("8", "9", "10", "11", "12"))
INT_ONLY = frozenset(("10", "11", "12"))

#: Table cases where Synapse does not follow the spec: case name (without the
#: version) -> (the room versions it applies to, the rule, substring of fedlib's verdict
#: or None for "allowed").
DIVERGENCES: dict[str, tuple[frozenset[str], str, str | None]] = {
    "table: m.federate not a boolean: only false blocks": (
        ALL,
        "Rule 3 (v12 rule 4) rejects when m.federate is set to false; Synapse also "
        "treats any value but true as false.",
        None,
    ),
    "table: m.federate false: local user invites a remote user": (
        ALL,
        "Rule 3 compares the sender's server with the creator's; Synapse also "
        "rejects membership events whose target is on another server.",
        None,
    ),
    "table: 3pid invite: a junk key before the right one": (
        ALL,
        "Rule 5.3.1.7 (v8 4.4.1.7) allows when any signature matches any public key; "
        "Synapse gives up with a ValueError at a key that is not 32 bytes.",
        None,
    ),
    "table: power levels: users key with a bad server name": (
        ALL,
        "Rule 10.1 (v8 9.1, v10 9.3, v12 10.3) requires keys that are valid user IDs; "
        "Synapse only checks for the sigil and a colon, so accepts '@bob:'.",
        "invalid user ID",
    ),
    "table: power levels: users value with an underscore": (
        STRINGY,
        "The stringy power levels grammar is optional whitespace, sign and decimal "
        "digits; Synapse's int() also accepts '1_0'.",
        "Invalid power level",
    ),
    "table: power levels: users value boolean": (
        STRINGY,
        "Rule 10.1 requires integers (or integer strings); Synapse's int() turns "
        "true into 1 before v10.",
        "Invalid power level",
    ),
    "table: leave carrying join_authorised_via_users_server, unsigned": (
        RESTRICTED,
        "v8 rule 4.2 requires the authorising server's signature whenever content "
        "has join_authorised_via_users_server; Synapse checks it on joins only.",
        "not signed by the server of join_authorised_via_users_server",
    ),
    "table: invite: stringy invite level": (
        INT_ONLY,
        "From v10 power levels must be integers (v10 rule 9.1): a power levels event "
        "with a string cannot be accepted, so fedlib rejects events authorised by one; "
        "Synapse reads the string with int().",
        "Invalid power level",
    ),
    "table: junk: users_default a string in the power levels state": (
        INT_ONLY,
        "As above (v10 rule 9.1): fedlib does not read strings as power levels in v10+.",
        "Invalid power level",
    ),
}


def _federate_target_only(case: dict[str, Any], pool: dict[str, Any], ours: str | None) -> bool:
    """Synapse's extra m.federate check on the target of a membership event (see the
    m.federate entries of :data:`DIVERGENCES`), met by a generated room."""
    event = case["event"]
    creates = [pool[k] for k in case["auth_events"] if pool[k]["type"] == "m.room.create"]
    if case["create_event"] is not None:
        creates.append(pool[case["create_event"]])
    return (
        ours is None
        and case["synapse"].get("reason") == "This room has been marked as unfederatable."
        and event["type"] == "m.room.member"
        and len(creates) == 1
        and creates[0]["sender"].split(":", 1)[1] == event["sender"].split(":", 1)[1]
        and creates[0]["sender"].split(":", 1)[1] != event["state_key"].split(":", 1)[1]
    )


def _base_name(name: str) -> tuple[str, str | None]:
    if name.endswith(")") and " (v" in name:
        base, _, version = name.rpartition(" (v")
        return base, version[:-1]
    return name, None


def _fedlib_verdict(case: dict[str, Any], pool: dict[str, Any]) -> str | None:
    version = case["room_version"]
    listed = [pool[key] for key in case["auth_events"]]
    create = pool[case["create_event"]] if case["create_event"] is not None else None
    try:
        mapping = check_auth_events_list(version, case["event"], listed, create_event=create)
        check_auth(version, case["event"], mapping)
    except AuthError as e:
        return e.msg
    return None


@functools.cache
def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FIXTURE.read_text())
    return loaded


class SynapseDifferentialTests(unittest.TestCase):
    def setUp(self) -> None:
        self.document = _document()

    def test_fixture_is_substantial(self) -> None:
        cases = self.document["cases"]
        self.assertGreater(len(cases), 2000)
        random_cases = [c for c in cases if c["name"].startswith("random")]
        self.assertGreaterEqual(len(random_cases), 1000)
        allowed = sum(1 for c in random_cases if c["synapse"]["allowed"])
        # Both verdicts are well represented among the random rooms.
        self.assertGreater(allowed, len(random_cases) // 5)
        self.assertLess(allowed, len(random_cases) * 4 // 5)
        versions = {c["room_version"] for c in random_cases}
        self.assertEqual(versions, set(ALL))

    def test_agrees_with_synapse(self) -> None:
        pool = self.document["pool"]
        disagreements = []
        seen_divergences: set[tuple[str, str]] = set()
        for case in self.document["cases"]:
            ours = _fedlib_verdict(case, pool)
            synapse_allowed = case["synapse"]["allowed"]
            if (ours is None) == synapse_allowed:
                continue
            base, version = _base_name(case["name"])
            if base.startswith("random") and _federate_target_only(case, pool, ours):
                continue
            documented = DIVERGENCES.get(base)
            if documented is None or version not in documented[0]:
                disagreements.append((case["name"], ours, case["synapse"]))
                continue
            expected = documented[2]
            if expected is None:
                self.assertIsNone(ours, case["name"])
            else:
                self.assertIsNotNone(ours, case["name"])
                assert ours is not None
                self.assertIn(expected, ours, case["name"])
            seen_divergences.add((base, str(version)))
        self.assertEqual(disagreements, [], f"{len(disagreements)} disagreements with Synapse")
        # Every documented divergence still shows up, on exactly the versions listed.
        for base, (versions, _, _) in DIVERGENCES.items():
            for version in versions:
                self.assertIn((base, version), seen_divergences, f"{base} v{version}")
