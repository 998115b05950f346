"""fedlib.crypto.request_auth: the X-Matrix Authorization header."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from fedlib.crypto import keys
from fedlib.crypto.request_auth import (
    XMatrixAuth,
    parse_authorization,
    request_json,
    sign_request,
    verify_request,
)
from fedlib.crypto.signing import sign_json
from fedlib.errors import SignatureError

KEY = keys.generate_signing_key("k1")
VERIFY_KEY = keys.get_verify_key(KEY)


class ParseTests(unittest.TestCase):
    def test_spec_example(self) -> None:
        auth = parse_authorization(
            'X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",'
            'key="ed25519:key1",sig="ABCDEF..."'
        )
        self.assertEqual(
            auth,
            XMatrixAuth(
                origin="origin.hs.example.com",
                key_id="ed25519:key1",
                signature="ABCDEF...",
                destination="destination.hs.example.com",
            ),
        )

    def test_unquoted_values_and_colons(self) -> None:
        auth = parse_authorization("X-Matrix origin=a.org:8448,key=ed25519:k,sig=abc/+=")
        self.assertEqual(auth, XMatrixAuth("a.org:8448", "ed25519:k", "abc/+=", None))

    def test_case_insensitive_scheme_and_names(self) -> None:
        for header in (
            'x-matrix ORIGIN="a.org",Key="ed25519:k",SIG="s"',
            'X-MATRIX origin="a.org",key="ed25519:k",sig="s"',
        ):
            self.assertEqual(parse_authorization(header), XMatrixAuth("a.org", "ed25519:k", "s"))

    def test_whitespace(self) -> None:
        header = 'X-Matrix   origin="a.org" ,\tkey = "ed25519:k" ,  sig="s"  '
        self.assertEqual(parse_authorization(header), XMatrixAuth("a.org", "ed25519:k", "s"))
        self.assertEqual(
            parse_authorization(b'X-Matrix origin="a.org",key="ed25519:k",sig="s"'),
            XMatrixAuth("a.org", "ed25519:k", "s"),
        )

    def test_escapes(self) -> None:
        auth = parse_authorization(r'X-Matrix origin="a.org",key="ed\"25519:k\\",sig="\s"')
        self.assertEqual(auth.key_id, 'ed"25519:k\\')
        self.assertEqual(auth.signature, "s")

    def test_quoted_commas_and_equals(self) -> None:
        auth = parse_authorization('X-Matrix sig="a,b=c",origin="a.org",key="ed25519:k"')
        self.assertEqual(auth.signature, "a,b=c")

    def test_unknown_params_and_empty_elements(self) -> None:
        auth = parse_authorization(
            'X-Matrix ,origin="a.org",, extra="x,y",flag=1,key="ed25519:k",sig="s",'
        )
        self.assertEqual(auth, XMatrixAuth("a.org", "ed25519:k", "s"))

    def test_malformed(self) -> None:
        for header in (
            "",
            "X-Matrix",
            "X-Matrix ",
            'Bearer origin="a.org",key="ed25519:k",sig="s"',
            'X-Matrixorigin="a.org",key="ed25519:k",sig="s"',
            'X-Matrix key="ed25519:k",sig="s"',
            'X-Matrix origin="a.org",sig="s"',
            'X-Matrix origin="a.org",key="ed25519:k"',
            'X-Matrix origin="",key="ed25519:k",sig="s"',
            'X-Matrix origin=,key="ed25519:k",sig="s"',
            'X-Matrix origin="a.org" key="ed25519:k",sig="s"',
            'X-Matrix origin="a.org,key="ed25519:k",sig="s"',
            'X-Matrix origin="a.org"x,key="ed25519:k",sig="s"',
            'X-Matrix origin,key="ed25519:k",sig="s"',
            'X-Matrix origin="a.org",origin="b.org",key="ed25519:k",sig="s"',
            'X-Matrix origin="not a server",key="ed25519:k",sig="s"',
            'X-Matrix origin="a.org",destination="bad host",key="ed25519:k",sig="s"',
            'X-Matrix origin=a"b,key="ed25519:k",sig="s"',
        ):
            e = self.assertRaises(SignatureError, parse_authorization, header)
            self.assertEqual(e.code, 401)
        self.assertRaises(SignatureError, parse_authorization, b"X-Matrix origin=\xff")

    @given(st.text(max_size=80) | st.text(st.sampled_from(list('X-Matrix ="\\,:\t')), max_size=60))
    def test_arbitrary_text_raises_only_signature_error(self, text: str) -> None:
        with contextlib.suppress(SignatureError):
            parse_authorization("X-Matrix " + text)
        with contextlib.suppress(SignatureError):
            parse_authorization(text)


class SignVerifyTests(unittest.TestCase):
    def test_round_trip(self) -> None:
        content = {"pdus": [], "edus": [{"a": "b"}]}
        header = sign_request(
            "PUT", "/_matrix/federation/v1/send/1?x=y", "a.org", "b.org:8448", KEY, content
        )
        self.assertTrue(header.startswith('X-Matrix origin="a.org",destination="b.org:8448",'))
        auth = parse_authorization(header)
        self.assertEqual(auth.key_id, "ed25519:k1")
        self.assertEqual(auth.destination, "b.org:8448")
        verify_request(
            auth, "PUT", "/_matrix/federation/v1/send/1?x=y", "b.org:8448", VERIFY_KEY, content
        )
        # The signature is the one sign_json makes over the request object.
        signed = sign_json(
            request_json(
                "PUT", "/_matrix/federation/v1/send/1?x=y", "a.org", "b.org:8448", content
            ),
            "a.org",
            KEY,
        )
        self.assertEqual(auth.signature, signed["signatures"]["a.org"]["ed25519:k1"])

    def test_get_without_content(self) -> None:
        auth = parse_authorization(
            sign_request("GET", "/_matrix/key/v2/server", "a.org", "b.org", KEY)
        )
        verify_request(auth, "GET", "/_matrix/key/v2/server", "b.org", VERIFY_KEY)
        self.assertRaises(
            SignatureError,
            verify_request,
            auth,
            "GET",
            "/_matrix/key/v2/server",
            "b.org",
            VERIFY_KEY,
            {},
        )

    def test_tampering(self) -> None:
        content = {"a": 1}
        auth = parse_authorization(sign_request("POST", "/p", "a.org", "b.org", KEY, content))
        good = ("POST", "/p", "b.org", VERIFY_KEY, content)
        verify_request(auth, *good)
        for args in (
            ("GET", "/p", "b.org", VERIFY_KEY, content),
            ("POST", "/q", "b.org", VERIFY_KEY, content),
            ("POST", "/p", "b.org", VERIFY_KEY, {"a": 2}),
            ("POST", "/p", "b.org", keys.get_verify_key(keys.generate_signing_key("x")), content),
        ):
            self.assertRaises(SignatureError, verify_request, auth, *args)
        forged_origin = XMatrixAuth("c.org", auth.key_id, auth.signature, auth.destination)
        self.assertRaises(SignatureError, verify_request, forged_origin, *good)
        bad_sig = XMatrixAuth(auth.origin, auth.key_id, "!!notbase64", auth.destination)
        self.assertRaises(SignatureError, verify_request, bad_sig, *good)

    def test_destination(self) -> None:
        auth = parse_authorization(sign_request("GET", "/p", "a.org", "b.org", KEY))
        # A header naming another destination is refused before any crypto.
        e = self.assertRaises(
            SignatureError, verify_request, auth, "GET", "/p", "c.org", VERIFY_KEY
        )
        self.assertIn("c.org", e.msg)
        # Older servers leave destination out; the signature still covers ours.
        legacy = XMatrixAuth(auth.origin, auth.key_id, auth.signature, None)
        verify_request(legacy, "GET", "/p", "b.org", VERIFY_KEY)
        self.assertRaises(SignatureError, verify_request, legacy, "GET", "/p", "c.org", VERIFY_KEY)

    def test_quoting_round_trip(self) -> None:
        header = sign_request("GET", "/p", "[::1]:8448", "127.0.0.1:8008", KEY)
        auth = parse_authorization(header)
        self.assertEqual((auth.origin, auth.destination), ("[::1]:8448", "127.0.0.1:8008"))
        verify_request(auth, "GET", "/p", "127.0.0.1:8008", VERIFY_KEY)
