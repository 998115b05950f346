"""fedlib.ids: identifier grammars (spec appendix "Identifier Grammar", room versions)."""

from __future__ import annotations

import contextlib
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest
from unpaddedbase64 import encode_base64

from fedlib import ids
from fedlib.errors import InvalidIdError

HASH = hashlib.sha256(b"x").digest()
STD_HASH_ID = encode_base64(HASH)
URLSAFE_HASH_ID = encode_base64(HASH, urlsafe=True)
# A digest whose standard encoding uses '+' or '/' (so the alphabets differ).
_D = next(
    hashlib.sha256(b"%d" % i).digest()
    for i in range(1000)
    if "+" in encode_base64(hashlib.sha256(b"%d" % i).digest())
)


class ServerNameTests(unittest.TestCase):
    def test_spec_examples(self) -> None:
        self.assertEqual(ids.parse_server_name("matrix.org"), ("matrix.org", None))
        self.assertEqual(ids.parse_server_name("matrix.org:8888"), ("matrix.org", 8888))
        self.assertEqual(ids.parse_server_name("1.2.3.4"), ("1.2.3.4", None))
        self.assertEqual(ids.parse_server_name("1.2.3.4:1234"), ("1.2.3.4", 1234))
        self.assertEqual(ids.parse_server_name("[1234:5678::abcd]"), ("[1234:5678::abcd]", None))
        self.assertEqual(
            ids.parse_server_name("[1234:5678::abcd]:5678"), ("[1234:5678::abcd]", 5678)
        )

    def test_valid(self) -> None:
        for name in (
            "localhost",
            "a",
            "EXAMPLE.org",  # case is kept and allowed
            "xn--bcher-kva.example",
            "127.0.0.1:65535",
            "[::1]",
            "[::ffff:1.2.3.4]:1",
            "a-b.c-d",
            "1.2.3",  # not four octets: a DNS name
            "a" * 255,
        ):
            self.assertTrue(ids.is_valid_server_name(name), name)
        self.assertEqual(ids.parse_server_name("EXAMPLE.org"), ("EXAMPLE.org", None))

    def test_invalid(self) -> None:
        for name in (
            "",
            ":80",
            "example.org:",
            "example.org:0",
            "example.org:65536",
            "example.org:123456",
            "example.org:-1",
            "example.org:\uff18\uff10",  # non-ASCII (fullwidth) digits
            "example.org:80:80",
            "exa mple.org",
            "example..org",
            ".example.org",
            "example.org.",
            "ex_ample.org",
            "例え.jp",
            "1.2.3.256",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[1:2:3:4:5:6:7:8:9]",
            "[fe80::1%eth0]",
            "[]",
            "[g::1]",
            "::1",
            "a" * 256,
            "example.org\x00",
            "example.org\n",
        ):
            self.assertFalse(ids.is_valid_server_name(name), name)
            self.assertRaises(InvalidIdError, ids.parse_server_name, name)

    def test_non_string(self) -> None:
        for value in (None, 1, b"example.org", ["a"]):
            self.assertRaises(InvalidIdError, ids.parse_server_name, value)
            self.assertFalse(ids.is_valid_server_name(value))


class UserIdTests(unittest.TestCase):
    def test_parse(self) -> None:
        user = ids.parse_user_id("@alice:example.org:8448")
        self.assertEqual(user, ids.UserID("alice", "example.org:8448"))
        self.assertEqual(str(user), "@alice:example.org:8448")
        self.assertTrue(user.is_compliant())

    def test_historical_grammar_accepted_on_receipt(self) -> None:
        for user_id in ("@Alice:example.org", "@日本:example.org", "@:example.org", "@a b\t:x"):
            ids.parse_user_id(user_id)
            self.assertFalse(ids.is_valid_local_user_id(user_id), user_id)
        self.assertFalse(ids.parse_user_id("@:example.org").is_compliant())
        self.assertFalse(ids.parse_user_id("@a b:example.org").is_compliant())
        self.assertTrue(ids.parse_user_id("@Alice!:example.org").is_compliant())

    def test_current_grammar(self) -> None:
        self.assertTrue(ids.is_valid_local_user_id("@a.b_c=d-e/f+g0:example.org"))
        for bad in ("@A:example.org", "@a!:example.org", "@:example.org", "alice:example.org"):
            self.assertFalse(ids.is_valid_local_user_id(bad), bad)

    def test_invalid(self) -> None:
        for bad in (
            "alice:example.org",
            "@alice",
            "@alice:",
            "@al\x00ice:example.org",
            "@alice:exa mple.org",
            "@\ud800:example.org",
            "#alice:example.org",
            None,
            5,
        ):
            self.assertRaises(InvalidIdError, ids.parse_user_id, bad)
            self.assertFalse(ids.is_valid_user_id(bad))

    def test_length_is_in_bytes(self) -> None:
        domain = ":example.org"
        ascii_max = "@" + "a" * (255 - 1 - len(domain)) + domain
        self.assertEqual(len(ascii_max.encode()), 255)
        ids.parse_user_id(ascii_max)
        self.assertRaises(InvalidIdError, ids.parse_user_id, "@a" + ascii_max[1:])
        # 3-byte characters: fewer than 255 code points, more than 255 bytes.
        wide = "@" + "日" * 81 + domain
        self.assertLess(len(wide), 255)
        self.assertRaises(InvalidIdError, ids.parse_user_id, wide)


class RoomIdTests(unittest.TestCase):
    def test_v1_to_v11(self) -> None:
        for version in [str(n) for n in range(1, 12)]:
            ids.validate_room_id(version, "!abc:example.org")
            ids.validate_room_id(version, "!:example.org")
            for bad in ("!abc", "abc:example.org", "!abc:", "!a\x00:b", "$abc:example.org"):
                self.assertRaises(InvalidIdError, ids.validate_room_id, version, bad)
            self.assertRaises(
                InvalidIdError, ids.validate_room_id, version, "!" + "a" * 250 + ":b.org"
            )

    def test_v12(self) -> None:
        ids.validate_room_id("12", "!" + URLSAFE_HASH_ID)
        for bad in (
            "!abc:example.org",
            "!" + URLSAFE_HASH_ID[:-1],
            "!" + URLSAFE_HASH_ID + "A",
            "!" + encode_base64(_D),  # standard alphabet
            "$" + URLSAFE_HASH_ID,
            "!" + URLSAFE_HASH_ID[:-1] + "B",  # cannot end a 32-byte digest
        ):
            self.assertRaises(InvalidIdError, ids.validate_room_id, "12", bad)
            self.assertFalse(ids.is_valid_room_id("12", bad))

    def test_server_of(self) -> None:
        self.assertEqual(ids.server_of("!a:example.org:8448"), "example.org:8448")
        self.assertEqual(ids.server_of("@a:b.c"), "b.c")
        self.assertEqual(ids.server_of("#a:b.c"), "b.c")
        self.assertEqual(ids.server_of("$a:b.c"), "b.c")
        for bad in ("!" + URLSAFE_HASH_ID, "a:b", "", "@a:b:c:d", None):
            self.assertRaises(InvalidIdError, ids.server_of, bad)


class EventIdTests(unittest.TestCase):
    def test_formats(self) -> None:
        std = "$" + encode_base64(_D)
        urlsafe = "$" + encode_base64(_D, urlsafe=True)
        for version in ("1", "2"):
            ids.validate_event_id(version, "$abc:example.org")
            self.assertRaises(InvalidIdError, ids.validate_event_id, version, std)
        ids.validate_event_id("3", std)
        self.assertRaises(InvalidIdError, ids.validate_event_id, "3", urlsafe)
        self.assertRaises(InvalidIdError, ids.validate_event_id, "3", "$abc:example.org")
        for version in [str(n) for n in range(4, 13)]:
            ids.validate_event_id(version, urlsafe)
            self.assertRaises(InvalidIdError, ids.validate_event_id, version, std)
            self.assertRaises(InvalidIdError, ids.validate_event_id, version, "$abc:example.org")
            self.assertRaises(InvalidIdError, ids.validate_event_id, version, urlsafe + "=")
            self.assertTrue(ids.is_valid_event_id(version, "$" + URLSAFE_HASH_ID))

    def test_length(self) -> None:
        self.assertRaises(
            InvalidIdError, ids.validate_event_id, "1", "$" + "a" * 250 + ":example.org"
        )


class AliasTests(unittest.TestCase):
    def test_parse(self) -> None:
        alias = ids.parse_room_alias("#room:example.org")
        self.assertEqual((alias.localpart, alias.domain), ("room", "example.org"))
        self.assertEqual(str(alias), "#room:example.org")
        ids.parse_room_alias("#日本:example.org")
        for bad in ("room:example.org", "#room", "#a\x00:b", "#r:bad host", "#" + "a" * 255 + ":b"):
            self.assertRaises(InvalidIdError, ids.parse_room_alias, bad)


_ANY_TEXT = st.text(max_size=300) | st.text(
    st.sampled_from(list("@!#$:[]0123456789abcdefABCDEF.-_+/=\x00 \ud800日")), max_size=60
)


class NeverRaiseOtherTests(unittest.TestCase):
    @settings(max_examples=300)
    @given(_ANY_TEXT, st.sampled_from(["1", "3", "4", "11", "12"]))
    def test_parsers_raise_only_invalid_id(self, text: str, version: str) -> None:
        checks = [
            ids.parse_server_name,
            ids.parse_user_id,
            ids.parse_room_alias,
            ids.server_of,
            lambda s: ids.validate_room_id(version, s),
            lambda s: ids.validate_event_id(version, s),
        ]
        for check in checks:
            with contextlib.suppress(InvalidIdError):
                check(text)
        for predicate in (
            ids.is_valid_server_name,
            ids.is_valid_user_id,
            ids.is_valid_local_user_id,
        ):
            self.assertIsInstance(predicate(text), bool)

    @given(
        st.from_regex(
            r"@[a-z0-9._=/+-]{1,20}:[a-z0-9]{1,10}(\.[a-z]{2,5})?(:[1-9][0-9]{0,3})?",
            fullmatch=True,
        )
    )
    def test_generated_user_ids_parse(self, user_id: str) -> None:
        self.assertTrue(ids.is_valid_local_user_id(user_id))
        self.assertEqual(ids.parse_user_id(user_id).to_string(), user_id)


class FastPathTests(unittest.TestCase):
    """The batch and cached checks agree with the one-at-a-time ones."""

    def test_all_valid_event_ids(self) -> None:
        def digest(n: int) -> bytes:
            return hashlib.sha256(b"%d" % n).digest()

        urlsafe = ["$" + encode_base64(digest(n), urlsafe=True) for n in range(40)]
        std = ["$" + encode_base64(digest(n)) for n in range(40)]
        odd: list[object] = [
            "$e:example.org",
            urlsafe[0][:-1] + "B",
            urlsafe[0] + ",",
            urlsafe[0] + "," + urlsafe[1],
            urlsafe[0][:-1],
            "",
            5,
            None,
        ]
        for version in ("1", "3", "10", "12"):
            cases: list[list[object]] = [[], urlsafe[:5], std[:5], urlsafe[:20] + std[:20]]
            cases += [[x] for x in odd] + [urlsafe[:3] + [x] for x in odd]
            for ids_ in cases:
                self.assertEqual(
                    ids.all_valid_event_ids(version, ids_),
                    all(ids.is_valid_event_id(version, e) for e in ids_),
                    (version, ids_),
                )

    @settings(max_examples=300)
    @given(st.text(max_size=60), st.booleans())
    def test_room_id_cache(self, room_id: str, create_hash: bool) -> None:
        version = "12" if create_hash else "10"
        try:
            ids.validate_room_id(version, room_id)
            valid = True
        except InvalidIdError:
            valid = False
        self.assertEqual(ids.is_valid_room_id(version, room_id), valid)
        self.assertEqual(ids.is_valid_room_id(version, room_id), valid)
