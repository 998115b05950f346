"""fedlib.events.validation.validate_pdu."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest
from unpaddedbase64 import encode_base64

from fedlib.errors import BadJsonError, MatrixError, UnsupportedRoomVersionError
from fedlib.events.room_versions import KNOWN_ROOM_VERSIONS, EventFormat
from fedlib.events.validation import MAX_PDU_SIZE, validate_pdu
from tests.reference_validation import reference_validate_pdu
from tests.strategies import json_values


def _ref(version: str, n: int) -> Any:
    fmt = KNOWN_ROOM_VERSIONS[version].event_format
    digest = hashlib.sha256(b"%d" % n).digest()
    if fmt is EventFormat.V1:
        return [f"$e{n}:example.org", {"sha256": "h"}]
    return "$" + encode_base64(digest, urlsafe=fmt is EventFormat.V4)


V12_ROOM = "!" + encode_base64(hashlib.sha256(b"room").digest(), urlsafe=True)


def _pdu(version: str, **extra: Any) -> dict[str, Any]:
    rv = KNOWN_ROOM_VERSIONS[version]
    pdu: dict[str, Any] = {
        "type": "m.room.message",
        "room_id": V12_ROOM if rv.room_id_is_create_hash else "!r:example.org",
        "sender": "@u:example.org",
        "content": {"body": "x"},
        "depth": 3,
        "origin_server_ts": 1,
        "prev_events": [_ref(version, 1)],
        "auth_events": [_ref(version, 2)],
        "hashes": {"sha256": "h"},
        "signatures": {"example.org": {"ed25519:1": "s"}},
    }
    if rv.event_id_in_event:
        pdu["event_id"] = "$e:example.org"
    pdu.update(extra)
    return pdu


ALL = list(KNOWN_ROOM_VERSIONS)


class ValidatePduTests(unittest.TestCase):
    def assertInvalid(self, version: str, pdu: Any) -> None:
        e = self.assertRaises(BadJsonError, validate_pdu, version, pdu)
        self.assertEqual((e.code, e.errcode), (400, "M_BAD_JSON"))

    def test_valid(self) -> None:
        for version in ALL:
            validate_pdu(version, _pdu(version))
            validate_pdu(version, _pdu(version, state_key="", unsigned={"age": 1}))
            validate_pdu(KNOWN_ROOM_VERSIONS[version], _pdu(version))

    def test_required_fields(self) -> None:
        for version in ALL:
            required = [
                "type",
                "sender",
                "content",
                "depth",
                "origin_server_ts",
                "prev_events",
                "auth_events",
                "hashes",
                "signatures",
                "room_id",
            ]
            if int(version) <= 2:
                required.append("event_id")
            for field in required:
                pdu = _pdu(version)
                del pdu[field]
                self.assertInvalid(version, pdu)

    def test_types(self) -> None:
        bad: list[dict[str, Any]] = [
            {"type": 5},
            {"sender": ["@u:example.org"]},
            {"sender": "u@example.org"},
            {"state_key": None},
            {"state_key": 1},
            {"content": []},
            {"depth": "3"},
            {"depth": True},
            {"depth": -1},
            {"depth": 1.5},
            {"origin_server_ts": "1"},
            {"origin_server_ts": False},
            {"hashes": {}},
            {"hashes": {"sha256": 1}},
            {"signatures": {"example.org": "s"}},
            {"signatures": {"example.org": {"ed25519:1": 1}}},
            {"signatures": []},
            {"unsigned": []},
            {"redacts": 5},
            {"prev_events": "x"},
            {"auth_events": {}},
            {"room_id": 5},
        ]
        for version in ALL:
            for extra in bad:
                self.assertInvalid(version, _pdu(version, **extra))
        self.assertInvalid("10", [])
        self.assertInvalid("10", "x")

    def test_depth_limits(self) -> None:
        validate_pdu("5", _pdu("5", depth=2**63 - 1))
        self.assertInvalid("5", _pdu("5", depth=2**63))
        validate_pdu("6", _pdu("6", depth=2**53 - 1))
        self.assertInvalid("6", _pdu("6", depth=2**53))

    def test_reference_counts(self) -> None:
        for version in ALL:
            validate_pdu(version, _pdu(version, prev_events=[_ref(version, n) for n in range(20)]))
            self.assertInvalid(
                version, _pdu(version, prev_events=[_ref(version, n) for n in range(21)])
            )
            validate_pdu(version, _pdu(version, auth_events=[_ref(version, n) for n in range(10)]))
            self.assertInvalid(
                version, _pdu(version, auth_events=[_ref(version, n) for n in range(11)])
            )

    def test_reference_formats(self) -> None:
        self.assertInvalid("1", _pdu("1", prev_events=["$e:example.org"]))
        self.assertInvalid("1", _pdu("1", prev_events=[["$e:example.org"]]))
        self.assertInvalid("1", _pdu("1", prev_events=[["$e:example.org", "h"]]))
        self.assertInvalid("1", _pdu("1", prev_events=[["nope", {}]]))
        self.assertInvalid("3", _pdu("3", prev_events=[_ref("1", 1)]))
        self.assertInvalid("3", _pdu("3", prev_events=["$e:example.org"]))
        self.assertInvalid("10", _pdu("10", auth_events=[5]))
        # v3 uses the standard alphabet, v4+ the URL-safe one.
        for n in range(200):
            std = _ref("3", n)
            if "+" in std or "/" in std:
                break
        validate_pdu("3", _pdu("3", prev_events=[std]))
        self.assertInvalid("4", _pdu("4", prev_events=[std]))

    def test_id_formats(self) -> None:
        self.assertInvalid("1", _pdu("1", event_id="e:example.org"))
        self.assertInvalid("10", _pdu("10", room_id="r:example.org"))
        self.assertInvalid("10", _pdu("10", room_id=V12_ROOM))
        self.assertInvalid("12", _pdu("12", room_id="!r:example.org"))

    def test_v12_create_has_no_room_id(self) -> None:
        create = _pdu("12", type="m.room.create", state_key="", prev_events=[], auth_events=[])
        self.assertInvalid("12", create)
        del create["room_id"]
        validate_pdu("12", create)
        # Before v12 the create event has a room ID like any other.
        create11 = _pdu("11", type="m.room.create", state_key="")
        validate_pdu("11", create11)
        del create11["room_id"]
        self.assertInvalid("11", create11)

    def test_field_byte_limits(self) -> None:
        long_ascii = "a" * 256
        long_wide = "日" * 86  # 258 bytes in 86 code points
        for value in (long_ascii, long_wide):
            self.assertInvalid("10", _pdu("10", type=value))
            self.assertInvalid("10", _pdu("10", state_key=value))
            self.assertInvalid("10", _pdu("10", sender="@" + value + ":example.org"))
            self.assertInvalid("10", _pdu("10", room_id="!" + value + ":example.org"))
            self.assertInvalid("1", _pdu("1", event_id="$" + value + ":example.org"))
        validate_pdu("10", _pdu("10", type="a" * 255, state_key="日" * 85))

    def test_size_limit(self) -> None:
        pdu = _pdu("10", content={"body": ""})
        from fedlib.canonical import encode_canonical_json

        room = MAX_PDU_SIZE - len(encode_canonical_json(pdu))
        validate_pdu("10", _pdu("10", content={"body": "x" * room}))
        self.assertInvalid("10", _pdu("10", content={"body": "x" * (room + 1)}))
        # Bytes, not code points.
        self.assertInvalid("10", _pdu("10", content={"body": "日" * (room // 3 + 1)}))

    def test_unencodable(self) -> None:
        self.assertInvalid("10", _pdu("10", content={"body": "\ud800"}))
        self.assertInvalid("10", _pdu("10", content={"x": float("nan")}))
        self.assertInvalid("10", _pdu("10", content={"x": object()}))

    def test_unknown_version(self) -> None:
        self.assertRaises(UnsupportedRoomVersionError, validate_pdu, "99", _pdu("10"))

    @settings(max_examples=200)
    @given(
        st.sampled_from(ALL),
        st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "sender",
                    "state_key",
                    "content",
                    "depth",
                    "origin_server_ts",
                    "prev_events",
                    "auth_events",
                    "hashes",
                    "signatures",
                    "room_id",
                    "event_id",
                    "redacts",
                    "unsigned",
                ]
            ),
            json_values,
            max_size=6,
        ),
    )
    def test_arbitrary_fields_raise_only_bad_json(
        self, version: str, overrides: dict[str, Any]
    ) -> None:
        try:
            validate_pdu(version, _pdu(version, **overrides))
        except BadJsonError:
            pass
        except MatrixError as e:  # pragma: no cover - reported with the culprit
            self.fail(f"{e!r} for {overrides!r}")


def _outcome(fn: Any, version: str, pdu: Any) -> tuple[str, ...]:
    try:
        fn(version, pdu)
    except MatrixError as e:
        return (type(e).__name__, e.errcode, e.msg)
    return ("ok",)


_TOP = [
    "type",
    "sender",
    "state_key",
    "content",
    "depth",
    "origin_server_ts",
    "prev_events",
    "auth_events",
    "hashes",
    "signatures",
    "room_id",
    "event_id",
    "redacts",
    "unsigned",
]
# Values that reach the fast paths' edges: long and wide strings, IDs of each
# format, near-miss IDs, non-str keys, unencodable values.
_EDGE_VALUES = st.sampled_from(
    [
        "a" * 63,
        "a" * 64,
        "日" * 63,
        "日" * 85,
        "日" * 86,
        "@u:example.org",
        "@" + "u" * 250 + ":e.org",
        "@u:bad_server",
        "@u\x00:example.org",
        "!r:example.org",
        "!" + "r" * 62 + ":e",
        V12_ROOM,
        V12_ROOM[:-1] + "B",
        "$e:example.org",
        _ref("10", 1),
        _ref("3", 1),
        _ref("10", 1)[:-1] + "B",
        [_ref("10", 1), _ref("10", 2)],
        [_ref("10", 1) + "," + _ref("10", 2)],
        [_ref("10", 1) + ",", _ref("10", 2)[1:]],
        [_ref("1", 1)],
        [_ref("10", n) for n in range(21)],
        {"sha256": "h"},
        {"example.org": {"ed25519:1": "s"}},
        {"example.org": {"ed25519:1": 1}},
        {1: "x"},
        "\ud800",
        float("nan"),
        2**53,
        2**63,
        True,
        None,
    ]
)


class ReferenceTests(unittest.TestCase):
    """The fast paths change no outcome: every PDU gets what the plain checks give."""

    def assertSame(self, version: str, pdu: Any) -> None:
        self.assertEqual(
            _outcome(validate_pdu, version, pdu),
            _outcome(reference_validate_pdu, version, pdu),
            pdu,
        )

    @settings(max_examples=500)
    @given(
        st.sampled_from(ALL),
        st.dictionaries(st.sampled_from(_TOP), json_values | _EDGE_VALUES, max_size=6),
        st.lists(st.sampled_from(_TOP), max_size=3),
    )
    def test_same_outcome(
        self, version: str, overrides: dict[str, Any], removed: list[str]
    ) -> None:
        pdu = _pdu(version, **overrides)
        for key in removed:
            pdu.pop(key, None)
        self.assertSame(version, pdu)

    def test_non_str_keys(self) -> None:
        for version in ("1", "10", "12"):
            good = _pdu(version)
            for extra in ({1: "x"}, {None: 1}, {1.5: "x"}, {True: 1}):
                self.assertSame(version, {**good, **extra})
                # Only non-str keys besides the ones the content hash skips.
                for kept in ("hashes", "signatures", "unsigned"):
                    self.assertSame(version, {**extra, kept: {"x": 1}})
                self.assertSame(version, dict(extra))
            self.assertSame(version, {})
            self.assertSame(version, {"unsigned": {"x": "y" * MAX_PDU_SIZE}})
            self.assertSame(version, {"unsigned": {}})

    def test_content_json(self) -> None:
        from fedlib.canonical import encode_canonical_json
        from fedlib.events.validation import validate_pdu_content_json

        for version in ALL:
            pdu = _pdu(version, unsigned={"age": 1})
            hashed = {k: v for k, v in pdu.items() if k not in ("hashes", "signatures", "unsigned")}
            self.assertEqual(
                validate_pdu_content_json(KNOWN_ROOM_VERSIONS[version], pdu),
                encode_canonical_json(hashed),
            )


class SizeLimitTests(unittest.TestCase):
    """The size limit counts the whole PDU as received, signatures and unsigned
    included, to the byte, however its bytes are split between the members the
    content hash covers and the others."""

    def _padded(self, total: int, where: str, wide: bool = False) -> dict[str, Any]:
        from fedlib.canonical import encode_canonical_json

        pad = "日" if wide else "x"
        width = len(pad.encode("utf-8"))
        base = _pdu("10")
        if where == "unsigned":
            base["unsigned"] = {"age": 1, "pad": ""}
        elif where == "signatures":
            base["signatures"] = {"example.org": {"ed25519:1": "s", "ed25519:pad": ""}}
        elif where == "hashes":
            base["hashes"] = {"sha256": "h", "pad": ""}
        else:
            base["content"] = {"body": ""}
        room = total - len(encode_canonical_json(base))
        count, rest = divmod(room, width)
        filler = pad * count + "x" * rest
        if where == "unsigned":
            base["unsigned"]["pad"] = filler
        elif where == "signatures":
            base["signatures"]["example.org"]["ed25519:pad"] = filler
        elif where == "hashes":
            base["hashes"]["pad"] = filler
        else:
            base["content"]["body"] = filler
        self.assertEqual(len(encode_canonical_json(base)), total)
        return base

    def test_exact_boundary(self) -> None:
        for where in ("content", "unsigned", "signatures", "hashes"):
            for wide in (False, True):
                validate_pdu("10", self._padded(MAX_PDU_SIZE, where, wide))
                validate_pdu("10", self._padded(MAX_PDU_SIZE - 1, where, wide))
                e = self.assertRaises(
                    BadJsonError, validate_pdu, "10", self._padded(MAX_PDU_SIZE + 1, where, wide)
                )
                self.assertIn("larger than", e.msg)

    def test_split_between_members(self) -> None:
        from fedlib.canonical import encode_canonical_json

        # Half the bytes in content, half in unsigned and signatures.
        for total in (MAX_PDU_SIZE - 1, MAX_PDU_SIZE, MAX_PDU_SIZE + 1):
            pdu = _pdu(
                "10",
                content={"body": "c" * 30000},
                unsigned={"x": "u" * 20000},
                signatures={"example.org": {"ed25519:1": "s" * 10000}},
            )
            pdu["unsigned"]["x"] += "u" * (total - len(encode_canonical_json(pdu)))
            self.assertEqual(len(encode_canonical_json(pdu)), total)
            self.assertEqual(
                _outcome(validate_pdu, "10", pdu), _outcome(reference_validate_pdu, "10", pdu)
            )
            self.assertEqual(_outcome(validate_pdu, "10", pdu)[0] == "ok", total <= MAX_PDU_SIZE)
