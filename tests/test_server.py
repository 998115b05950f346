"""The Resource tree: routing, errors, limits, X-Matrix auth, keys, version, queries."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from fedlib.crypto.keys import decode_verify_key_base64, generate_signing_key
from fedlib.crypto.request_auth import sign_request
from fedlib.crypto.signing import verify_json
from fedlib.server.resource import Route
from tests.server_helpers import OUR_NAME, Harness, Remote

FAKE_AUTH = 'X-Matrix origin=remote.test,key="ed25519:r1",sig="x"'
DIR = "/_matrix/federation/v1/query/directory?room_alias=%23room:us.test"


class RoutingAndErrorsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.h = Harness(self.remote)

    def test_version_unauthenticated(self) -> None:
        r = self.h.request("GET", "/_matrix/federation/v1/version", sign=False)
        self.assertEqual(r.code, 200)
        self.assertEqual(r.json["server"]["name"], "fedlib")
        self.assertEqual(r.headers["content-type"], "application/json")

    def test_unknown_path_404(self) -> None:
        r = self.h.request("GET", "/_matrix/federation/v1/nonsense", sign=False)
        self.assertEqual((r.code, r.errcode), (404, "M_UNRECOGNIZED"))
        r = self.h.request("GET", "/", sign=False)
        self.assertEqual((r.code, r.errcode), (404, "M_UNRECOGNIZED"))

    def test_wrong_method_405(self) -> None:
        r = self.h.request("POST", "/_matrix/federation/v1/version", {}, sign=False)
        self.assertEqual((r.code, r.errcode), (405, "M_UNRECOGNIZED"))

    def test_well_known_absent_and_present(self) -> None:
        r = self.h.request("GET", "/.well-known/matrix/server", sign=False)
        self.assertEqual(r.code, 404)
        h = Harness(self.remote, well_known_server="fed.us.test:443")
        r = h.request("GET", "/.well-known/matrix/server", sign=False)
        self.assertEqual((r.code, r.json), (200, {"m.server": "fed.us.test:443"}))

    def test_unexpected_exception_is_500_without_details(self) -> None:
        async def boom(request: Any) -> tuple[int, Any]:
            raise RuntimeError("secret detail")

        router = self.h.resource._router  # type: ignore[attr-defined]
        router._routes.setdefault(4, []).insert(
            0, (("_matrix", "federation", "v1", "boom"), (), Route("GET", "/x", boom, False))
        )
        r = self.h.request("GET", "/_matrix/federation/v1/boom", sign=False)
        self.assertEqual((r.code, r.errcode), (500, "M_UNKNOWN"))
        self.assertNotIn(b"secret", r.body)
        self.assertNotIn(b"Traceback", r.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_body_too_large_by_content_length(self) -> None:
        h = Harness(self.remote, max_body_bytes=1000)
        r = h.request("POST", "/_matrix/federation/v1/publicRooms", {"x": "a" * 2000})
        self.assertEqual((r.code, r.errcode), (413, "M_TOO_LARGE"))

    def test_body_too_large_without_content_length(self) -> None:
        h = Harness(self.remote, max_body_bytes=1000)
        body = b"{" + b'"a":' + b'"' + b"x" * 3000 + b'"}'
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        raw = (
            b"POST /_matrix/federation/v1/publicRooms HTTP/1.1\r\nHost: us.test\r\n"
            b"Authorization: " + FAKE_AUTH.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked
        )
        r = h.raw(raw)
        self.assertEqual((r.code, r.errcode), (413, "M_TOO_LARGE"))

    def test_not_json(self) -> None:
        auth = sign_request(
            "POST", "/_matrix/federation/v1/publicRooms", "remote.test", OUR_NAME, self.remote.key
        )
        for body in (b"{not json", b"\xff\xfe{}", b'{"a": NaN}'):
            r = self.h.request(
                "POST", "/_matrix/federation/v1/publicRooms", body=body, auth_header=auth
            )
            self.assertEqual(r.code, 400, body)
            self.assertIn(r.errcode, ("M_NOT_JSON", "M_BAD_JSON"))

    def test_deep_nesting_and_big_integers_rejected(self) -> None:
        for body in (b"[" * 5000 + b"]" * 5000, b'{"a": 9007199254740993}'):
            r = self.h.request(
                "POST", "/_matrix/federation/v1/publicRooms", body=body, auth_header=FAKE_AUTH
            )
            self.assertEqual((r.code, r.errcode), (400, "M_BAD_JSON"))

    def test_invalid_utf8_in_path_and_query(self) -> None:
        r = self.h.request("GET", "/_matrix/federation/v1/query/directory?room_alias=%ff")
        self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"))
        r = self.h.request("GET", "/_matrix/federation/v1/hierarchy/%ff%fe")
        self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"))


class AuthTests(unittest.TestCase):
    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.h = Harness(self.remote)
        self.h.hooks.directory["#room:us.test"] = ("!r:us.test", ["us.test"])

    def test_signed_request_ok_and_origin_seen(self) -> None:
        r = self.h.request("GET", DIR)
        self.assertEqual(r.code, 200)
        self.assertEqual(r.json, {"room_id": "!r:us.test", "servers": ["us.test"]})
        self.assertEqual(self.h.seen_origins, ["remote.test"])

    def test_missing_auth(self) -> None:
        r = self.h.request("GET", DIR, sign=False)
        self.assertEqual((r.code, r.errcode), (401, "M_UNAUTHORIZED"))
        self.assertEqual(self.h.seen_origins, [])

    def test_unauthenticated_body_not_processed(self) -> None:
        before = self.h.snapshot()
        for body in (b"{not json", b'{"pdus": []}'):
            r = self.h.request("PUT", "/_matrix/federation/v1/send/t1", body=body, sign=False)
            self.assertEqual((r.code, r.errcode), (401, "M_UNAUTHORIZED"))
        self.assertEqual(self.h.snapshot(), before)
        self.assertEqual(self.h.keyring.lookups, [])

    def test_malformed_auth(self) -> None:
        for header in ("Bearer abc", "X-Matrix", 'X-Matrix origin=remote.test,key="ed25519:r1"'):
            r = self.h.request("GET", DIR, auth_header=header)
            self.assertEqual((r.code, r.errcode), (401, "M_UNAUTHORIZED"), header)

    def test_wrong_signature(self) -> None:
        other = generate_signing_key("r1")
        r = self.h.request("GET", DIR, key=other)
        self.assertEqual((r.code, r.errcode), (401, "M_UNAUTHORIZED"))

    def test_unknown_key(self) -> None:
        other = generate_signing_key("zz")
        r = self.h.request("GET", DIR, key=other)
        self.assertEqual((r.code, r.errcode), (401, "M_UNAUTHORIZED"))

    def test_unknown_origin(self) -> None:
        r = self.h.request("GET", DIR, origin=Remote("stranger.test"))
        self.assertEqual((r.code, r.errcode), (401, "M_UNAUTHORIZED"))

    def test_wrong_destination(self) -> None:
        r = self.h.request("GET", DIR, destination="someone-else.test")
        self.assertEqual((r.code, r.errcode), (401, "M_UNAUTHORIZED"))

    def test_signature_covers_uri_and_body(self) -> None:
        auth = sign_request("GET", DIR, "remote.test", OUR_NAME, self.remote.key)
        r = self.h.request("GET", DIR.replace("room", "other"), auth_header=auth)
        self.assertEqual(r.code, 401)
        path = "/_matrix/federation/v1/publicRooms"
        auth = sign_request("POST", path, "remote.test", OUR_NAME, self.remote.key, {"limit": 1})
        r = self.h.request("POST", path, {"limit": 2}, auth_header=auth)
        self.assertEqual(r.code, 401)
        r = self.h.request("POST", path, {"limit": 1}, auth_header=auth)
        self.assertEqual(r.code, 200)

    def test_rate_limit(self) -> None:
        h = Harness(self.remote, rate_per_second=1.0, rate_burst=3)
        codes = [h.request("GET", DIR).code for _ in range(4)]
        self.assertEqual(codes[:3], [404, 404, 404])
        r = h.request("GET", DIR)
        self.assertEqual((r.code, r.errcode), (429, "M_LIMIT_EXCEEDED"))
        self.assertGreater(r.json["retry_after_ms"], 0)
        h.clock.advance(2)
        self.assertEqual(h.request("GET", DIR).code, 404)
        # Another origin has its own allowance.
        other = Remote("other.test")
        h.keyring.add(other)
        self.assertEqual(h.request("GET", DIR, origin=other).code, 404)


class KeyServerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.h = Harness(self.remote)

    def _check_own(self, resp: dict[str, Any]) -> None:
        self.assertEqual(resp["server_name"], OUR_NAME)
        (kid, value), *_ = resp["verify_keys"].items()
        vk = decode_verify_key_base64("ed25519", kid.split(":")[1], value["key"])
        verify_json(resp, OUR_NAME, vk)
        self.assertGreater(resp["valid_until_ts"], self.h.clock.seconds() * 1000)

    def test_server_keys(self) -> None:
        r = self.h.request("GET", "/_matrix/key/v2/server", sign=False)
        self.assertEqual(r.code, 200)
        self._check_own(r.json)
        self.assertEqual(r.json["old_verify_keys"], {})

    def test_notary_query_for_us_and_unknown(self) -> None:
        r = self.h.request(
            "POST",
            "/_matrix/key/v2/query",
            {"server_keys": {OUR_NAME: {}, "unknown.test": {}}},
            sign=False,
        )
        self.assertEqual(r.code, 200)
        self.assertEqual(len(r.json["server_keys"]), 1)
        self._check_own(r.json["server_keys"][0])
        r = self.h.request("GET", f"/_matrix/key/v2/query/{OUR_NAME}", sign=False)
        self._check_own(r.json["server_keys"][0])

    def test_notary_bad_body(self) -> None:
        for body in ({}, {"server_keys": []}, {"server_keys": {"a": []}}):
            r = self.h.request("POST", "/_matrix/key/v2/query", body, sign=False)
            self.assertEqual((r.code, r.errcode), (400, "M_BAD_JSON"), body)


class QueryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.h = Harness(self.remote)

    def test_directory(self) -> None:
        r = self.h.request("GET", DIR)
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))
        r = self.h.request("GET", "/_matrix/federation/v1/query/directory")
        self.assertEqual((r.code, r.errcode), (400, "M_MISSING_PARAM"))

    def test_profile(self) -> None:
        self.h.hooks.profiles["@a:us.test"] = {"displayname": "A", "avatar_url": "mxc://x/y"}
        base = "/_matrix/federation/v1/query/profile?user_id=%40a:us.test"
        r = self.h.request("GET", base)
        self.assertEqual((r.code, r.json["displayname"]), (200, "A"))
        r = self.h.request("GET", base + "&field=displayname")
        self.assertEqual(r.json, {"displayname": "A"})
        r = self.h.request("GET", base.replace("%40a", "%40b"))
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))

    def test_public_rooms(self) -> None:
        r = self.h.request("GET", "/_matrix/federation/v1/publicRooms?limit=5")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.json["chunk"], [])
        r = self.h.request("GET", "/_matrix/federation/v1/publicRooms?limit=x")
        self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"))
        r = self.h.request("POST", "/_matrix/federation/v1/publicRooms", {"limit": 3})
        self.assertEqual(r.code, 200)
        r = self.h.request("POST", "/_matrix/federation/v1/publicRooms", {"limit": "3"})
        self.assertEqual((r.code, r.errcode), (400, "M_BAD_JSON"))

    def test_hierarchy_unknown(self) -> None:
        r = self.h.request("GET", "/_matrix/federation/v1/hierarchy/!nope:us.test")
        self.assertEqual((r.code, r.errcode), (404, "M_NOT_FOUND"))


class UserQueryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.remote = Remote("remote.test")
        self.h = Harness(self.remote)

    def test_devices(self) -> None:
        r = self.h.request("GET", "/_matrix/federation/v1/user/devices/%40a:us.test")
        self.assertEqual((r.code, r.json["user_id"]), (200, "@a:us.test"))
        r = self.h.request("GET", "/_matrix/federation/v1/user/devices/%40a:remote.test")
        self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"))

    def test_keys(self) -> None:
        r = self.h.request(
            "POST", "/_matrix/federation/v1/user/keys/query", {"device_keys": {"@a:us.test": []}}
        )
        self.assertEqual((r.code, r.json), (200, {"device_keys": {"@a:us.test": {}}}))
        r = self.h.request("POST", "/_matrix/federation/v1/user/keys/query", {"device_keys": 1})
        self.assertEqual((r.code, r.errcode), (400, "M_BAD_JSON"))
        r = self.h.request(
            "POST",
            "/_matrix/federation/v1/user/keys/claim",
            {"one_time_keys": {"@a:us.test": {"DEV": "signed_curve25519"}}},
        )
        self.assertEqual((r.code, r.json), (200, {"one_time_keys": {}}))


class NotaryThroughKeyringTests(unittest.TestCase):
    def test_keyring_notary_used_and_failures_left_out(self) -> None:
        from twisted.internet import defer

        from fedlib.errors import SignatureError

        remote = Remote("remote.test")
        h = Harness(remote)
        calls: list[Any] = []

        def notary_query(server_keys: Any, name: str, key: Any, own: Any) -> Any:
            calls.append(dict(server_keys))
            (server,) = server_keys
            if server == "down.test":
                return defer.fail(SignatureError("unreachable"))
            if server == OUR_NAME:
                return defer.succeed({"server_keys": [own]})
            return defer.succeed({"server_keys": [{"server_name": server, "signatures": {}}]})

        h.keyring.notary_query = notary_query  # type: ignore[attr-defined]
        body = {"server_keys": {"remote.test": {}, "down.test": {}, OUR_NAME: {}, "bad name!": {}}}
        r = h.request("POST", "/_matrix/key/v2/query", body, sign=False)
        self.assertEqual(r.code, 200)
        names = sorted(k["server_name"] for k in r.json["server_keys"])
        self.assertEqual(names, ["remote.test", OUR_NAME])
        self.assertNotIn({"bad name!": {}}, calls)
        r = h.request(
            "GET", "/_matrix/key/v2/query/remote.test?minimum_valid_until_ts=5", sign=False
        )
        self.assertEqual(r.code, 200)
        self.assertEqual(calls[-1], {"remote.test": {"*": {"minimum_valid_until_ts": 5}}})
