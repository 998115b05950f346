"""Black-box checks of a running ``twistd -n fedlib`` against the server-server
API's OpenAPI descriptions (``data/api/server-server/*.yaml``) and text
(``content/server-server-api.md``), from a remote server's point of view.

One fedlib process serves the whole module (see :func:`tests.blackbox_helpers.shared`);
every test makes its own rooms and users. Tests marked ``todo`` record a known
deviation from the spec.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import signedjson.key
import signedjson.sign
from twisted.trial import unittest

from fedlib.crypto.keys import generate_signing_key
from fedlib.crypto.request_auth import sign_request
from fedlib.crypto.signing import sign_json
from fedlib.events.hashing import compute_event_id, compute_room_id
from tests.blackbox_helpers import FedlibProcess, RemoteServer, Response, q, raw_request, shared

F1 = "/_matrix/federation/v1"
F2 = "/_matrix/federation/v2"


def now_ms() -> int:
    return int(time.time() * 1000)


class BlackBoxCase(unittest.TestCase):
    timeout = 60
    fed: FedlibProcess
    remote: RemoteServer
    other: RemoteServer

    def setUp(self) -> None:
        self.fed, self.remote, self.other = shared()

    # -- helpers --

    def req(self, method: str, path: str, content: Any = None, **kw: Any) -> Response:
        return self.remote.request(self.fed, method, path, content, **kw)

    def assertError(self, resp: Response, code: int, errcode: str | tuple[str, ...]) -> None:
        errcodes = (errcode,) if isinstance(errcode, str) else errcode
        self.assertEqual(resp.code, code, resp)
        self.assertIn(resp.errcode, errcodes, resp)
        self.assertIsInstance(resp.json().get("error", ""), str)

    def assertShape(self, obj: Any, shape: Mapping[str, type | tuple[type, ...]]) -> None:
        """Each key of ``shape`` present in ``obj`` with that type."""
        self.assertIsInstance(obj, dict, obj)
        for key, typ in shape.items():
            self.assertIn(key, obj, f"{key} missing from {str(obj)[:300]}")
            self.assertIsInstance(obj[key], typ, f"{key}: {obj[key]!r}")

    def assertPdu(self, pdu: Any) -> None:
        self.assertShape(
            pdu,
            {
                "type": str,
                "sender": str,
                "content": dict,
                "depth": int,
                "origin_server_ts": int,
                "prev_events": list,
                "auth_events": list,
                "hashes": dict,
                "signatures": dict,
            },
        )

    def new_room(self, version: str = "10", **body: Any) -> tuple[str, str]:
        """A room hosted by fedlib (created through its Client-Server API) and the
        access token of its creator."""
        token = self.fed.register("u" + os.urandom(4).hex())
        r = self.fed.client(
            "POST", "/createRoom", {"preset": "public_chat", "room_version": version, **body}, token
        )
        self.assertEqual(r.code, 200, r)
        return str(r.json()["room_id"]), token

    def join(self, room_id: str, version: str, localpart: str | None = None) -> dict[str, Any]:
        """Join a remote user over make_join/send_join v2; the handshake's parts."""
        user = self.remote.user(localpart or "j" + os.urandom(3).hex())
        mj = self.req("GET", f"{F1}/make_join/{q(room_id)}/{q(user)}?ver={version}")
        self.assertEqual(mj.code, 200, mj)
        event = dict(mj.json()["event"])
        event["origin_server_ts"] = now_ms()
        signed = self.remote.sign_event(version, event)
        event_id = compute_event_id(version, signed)
        sj = self.req("PUT", f"{F2}/send_join/{q(room_id)}/{q(event_id)}", signed)
        self.assertEqual(sj.code, 200, sj)
        return {
            "user": user,
            "make_join": mj.json(),
            "event": signed,
            "event_id": event_id,
            "send_join": sj.json(),
        }

    def message(
        self, room_id: str, version: str, joined: Mapping[str, Any], content: Mapping[str, Any]
    ) -> tuple[dict[str, Any], str]:
        """A signed m.room.message from the joined remote user, after its join."""
        state = {
            (e["type"], e.get("state_key")): compute_event_id(version, e)
            for e in joined["send_join"]["state"]
        }
        auth = [state[("m.room.power_levels", "")], joined["event_id"]]
        if version not in ("12",):
            auth.append(state[("m.room.create", "")])
        event = {
            "type": "m.room.message",
            "room_id": room_id,
            "sender": joined["user"],
            "content": dict(content),
            "depth": joined["event"]["depth"] + 1,
            "prev_events": [joined["event_id"]],
            "auth_events": auth,
            "origin_server_ts": now_ms(),
        }
        signed = self.remote.sign_event(version, event)
        return signed, compute_event_id(version, signed)

    def send(
        self, pdus: list[Any], edus: list[Any] | None = None, txn: str | None = None
    ) -> Response:
        body: dict[str, Any] = {
            "origin": self.remote.server_name,
            "origin_server_ts": now_ms(),
            "pdus": pdus,
        }
        if edus is not None:
            body["edus"] = edus
        return self.req("PUT", f"{F1}/send/{txn or os.urandom(6).hex()}", body)

    def unsigned_auth(self) -> str:
        """An X-Matrix header with a syntactically valid but wrong signature."""
        return (
            f'X-Matrix origin="{self.remote.server_name}",destination="{self.fed.server_name}",'
            f'key="{self.remote.key_id}",sig="{"A" * 86}"'
        )


class KeysAndVersion(BlackBoxCase):
    """keys_server.yaml, keys_query.yaml, version.yaml, wellknown.yaml."""

    def check_key_response(self, obj: Any, server_name: str) -> None:
        self.assertShape(
            obj,
            {
                "server_name": str,
                "verify_keys": dict,
                "old_verify_keys": dict,
                "valid_until_ts": int,
                "signatures": dict,
            },
        )
        self.assertEqual(obj["server_name"], server_name)
        self.assertGreater(obj["valid_until_ts"], now_ms())
        for kid, key in obj["verify_keys"].items():
            self.assertTrue(kid.startswith("ed25519:"), kid)
            self.assertShape(key, {"key": str})
        self.assertSigned(obj, server_name, obj["verify_keys"])

    def assertSigned(self, obj: Any, server_name: str, verify_keys: Mapping[str, Any]) -> None:
        """Checked with signedjson, independently of fedlib's own signing code."""
        self.assertIn(server_name, obj["signatures"])
        for kid, key in verify_keys.items():
            version = kid.split(":", 1)[1]
            vk = signedjson.key.decode_verify_key_base64("ed25519", version, key["key"])
            signedjson.sign.verify_signed_json(obj, server_name, vk)

    def test_server_keys(self) -> None:
        r = raw_request(self.fed.port, "GET", "/_matrix/key/v2/server")
        self.assertEqual(r.code, 200, r)
        self.assertTrue(r.headers["content-type"].startswith("application/json"))
        self.check_key_response(r.json(), self.fed.server_name)

    def test_server_keys_unauthenticated_even_with_junk_auth(self) -> None:
        r = raw_request(
            self.fed.port,
            "GET",
            "/_matrix/key/v2/server",
            headers={"Authorization": "X-Matrix garbage"},
        )
        self.assertEqual(r.code, 200, r)

    def test_notary_get(self) -> None:
        r = raw_request(self.fed.port, "GET", f"/_matrix/key/v2/query/{q(self.remote.server_name)}")
        self.assertEqual(r.code, 200, r)
        keys = r.json()["server_keys"]
        self.assertIsInstance(keys, list)
        self.assertEqual(len(keys), 1, keys)
        self.check_key_response(keys[0], self.remote.server_name)
        # The notary adds its own signature.
        own = raw_request(self.fed.port, "GET", "/_matrix/key/v2/server").json()
        self.assertSigned(keys[0], self.fed.server_name, own["verify_keys"])

    def test_notary_post(self) -> None:
        body = {"server_keys": {self.remote.server_name: {}}}
        r = raw_request(self.fed.port, "POST", "/_matrix/key/v2/query", json.dumps(body).encode())
        self.assertEqual(r.code, 200, r)
        keys = r.json()["server_keys"]
        self.assertEqual([k["server_name"] for k in keys], [self.remote.server_name])
        self.check_key_response(keys[0], self.remote.server_name)

    def test_notary_post_with_key_criteria(self) -> None:
        body = {
            "server_keys": {
                self.remote.server_name: {self.remote.key_id: {"minimum_valid_until_ts": now_ms()}}
            }
        }
        r = raw_request(self.fed.port, "POST", "/_matrix/key/v2/query", json.dumps(body).encode())
        self.assertEqual(r.code, 200, r)
        self.assertEqual(len(r.json()["server_keys"]), 1, r)

    def test_notary_unreachable_server(self) -> None:
        # Nothing listens on port 1: the notary has no keys to give, which is
        # not an error of the request.
        r = raw_request(self.fed.port, "GET", "/_matrix/key/v2/query/127.0.0.1:1")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json()["server_keys"], [])

    def test_notary_post_errors(self) -> None:
        r = raw_request(self.fed.port, "POST", "/_matrix/key/v2/query", b"{nope")
        self.assertError(r, 400, "M_NOT_JSON")
        r = raw_request(self.fed.port, "POST", "/_matrix/key/v2/query", b"{}")
        self.assertError(r, 400, ("M_BAD_JSON", "M_MISSING_PARAM"))

    def test_version(self) -> None:
        r = raw_request(self.fed.port, "GET", f"{F1}/version")
        self.assertEqual(r.code, 200, r)
        server = r.json()["server"]
        self.assertIsInstance(server.get("name"), str)
        self.assertIsInstance(server.get("version"), str)

    def test_well_known_not_delegated(self) -> None:
        r = raw_request(self.fed.port, "GET", "/.well-known/matrix/server")
        # Not delegated: a 404 (wellknown.yaml); never a 200 without m.server.
        if r.code == 200:
            self.assertIsInstance(r.json().get("m.server"), str)
        else:
            self.assertEqual(r.code, 404, r)


class RequestAuthentication(BlackBoxCase):
    """server-server-api.md, "Request Authentication": 401 M_UNAUTHORIZED."""

    path = f"{F1}/send/authtest"

    def body(self) -> dict[str, Any]:
        return {"origin": self.remote.server_name, "origin_server_ts": now_ms(), "pdus": []}

    def test_signed_request_accepted(self) -> None:
        r = self.req("PUT", self.path + os.urandom(3).hex(), self.body())
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json(), {"pdus": {}})

    def test_missing_header(self) -> None:
        self.assertError(self.req("PUT", self.path, self.body(), sign=False), 401, "M_UNAUTHORIZED")

    def test_missing_header_on_get(self) -> None:
        r = self.req("GET", f"{F1}/event/{q('$abc')}", sign=False)
        self.assertError(r, 401, "M_UNAUTHORIZED")

    def test_malformed_header(self) -> None:
        for header in ("X-Matrix garbage", "X-Matrix ", 'X-Matrix origin="a"', "Bearer abc"):
            r = self.req("PUT", self.path, self.body(), authorization=header)
            self.assertError(r, 401, "M_UNAUTHORIZED")

    def test_wrong_destination(self) -> None:
        r = self.req("PUT", self.path, self.body(), destination="127.0.0.1:1")
        self.assertError(r, 401, "M_UNAUTHORIZED")

    def test_wrong_signature(self) -> None:
        r = self.req("PUT", self.path, self.body(), authorization=self.unsigned_auth())
        self.assertError(r, 401, "M_UNAUTHORIZED")

    def test_signature_over_other_content(self) -> None:
        header = sign_request(
            "PUT",
            self.path,
            self.remote.server_name,
            self.fed.server_name,
            self.remote.signing_key,
            {"pdus": []},
        )
        r = self.req("PUT", self.path, self.body(), authorization=header)
        self.assertError(r, 401, "M_UNAUTHORIZED")

    def test_signature_over_other_path(self) -> None:
        header = sign_request(
            "PUT",
            self.path + "x",
            self.remote.server_name,
            self.fed.server_name,
            self.remote.signing_key,
            self.body(),
        )
        r = self.req("PUT", self.path, self.body(), authorization=header)
        self.assertError(r, 401, "M_UNAUTHORIZED")

    def test_unknown_key(self) -> None:
        stranger = generate_signing_key("unknownkey")
        header = sign_request(
            "PUT", self.path, self.remote.server_name, self.fed.server_name, stranger, self.body()
        )
        r = self.req("PUT", self.path, self.body(), authorization=header)
        self.assertError(r, 401, "M_UNAUTHORIZED")

    def test_unreachable_origin(self) -> None:
        header = sign_request(
            "GET", f"{F1}/event/$x", "127.0.0.1:1", self.fed.server_name, self.remote.signing_key
        )
        r = self.req("GET", f"{F1}/event/$x", authorization=header)
        self.assertError(r, 401, "M_UNAUTHORIZED")

    def test_destination_may_be_omitted(self) -> None:
        # Older servers leave destination out; the spec still accepts that.
        path = self.path + os.urandom(3).hex()
        body = self.body()
        full = sign_request(
            "PUT",
            path,
            self.remote.server_name,
            self.fed.server_name,
            self.remote.signing_key,
            body,
        )
        parts = [p for p in full[len("X-Matrix ") :].split(",") if not p.startswith("destination=")]
        # The signature covers destination either way, so it still verifies.
        r = self.req("PUT", path, body, authorization="X-Matrix " + ",".join(parts))
        self.assertEqual(r.code, 200, r)


class RoutingAndJson(BlackBoxCase):
    """Unsupported endpoints (404/405 M_UNRECOGNIZED), JSON errors, limits."""

    def test_unknown_path(self) -> None:
        for path in (f"{F1}/nonexistent", f"{F1}/send", "/_matrix/federation/v9/send/x", "/x"):
            self.assertError(self.req("GET", path), 404, "M_UNRECOGNIZED")
            self.assertError(self.req("GET", path, sign=False), 404, "M_UNRECOGNIZED")

    def test_wrong_method(self) -> None:
        self.assertError(self.req("POST", f"{F1}/version", {}), 405, "M_UNRECOGNIZED")
        self.assertError(self.req("GET", f"{F1}/send/x"), 405, "M_UNRECOGNIZED")
        self.assertError(self.req("DELETE", "/_matrix/key/v2/server"), 405, "M_UNRECOGNIZED")
        self.assertError(self.req("PUT", f"{F1}/make_join/!a:b/@c:d", {}), 405, "M_UNRECOGNIZED")

    def test_head_is_get_without_body(self) -> None:
        r = raw_request(self.fed.port, "HEAD", f"{F1}/version")
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.body, b"")

    def test_not_json(self) -> None:
        r = self.req("PUT", f"{F1}/send/nj", raw_body=b"{not json")
        self.assertError(r, 400, "M_NOT_JSON")

    def test_invalid_utf8(self) -> None:
        r = self.req(
            "PUT",
            f"{F1}/send/u8",
            raw_body=b'{"pdus": [], "x": "\xff\xfe"}',
            sign=False,
            authorization=self.unsigned_auth(),
        )
        self.assertError(r, 400, ("M_NOT_JSON", "M_BAD_JSON"))

    def test_json_not_an_object(self) -> None:
        self.assertError(self.req("PUT", f"{F1}/send/arr", []), 400, ("M_BAD_JSON", "M_NOT_JSON"))

    def test_nan_is_not_json(self) -> None:
        r = self.req(
            "PUT",
            f"{F1}/send/nan",
            raw_body=b'{"origin_server_ts": NaN, "pdus": []}',
            authorization=self.unsigned_auth(),
        )
        self.assertError(r, 400, ("M_NOT_JSON", "M_BAD_JSON"))

    def test_deeply_nested(self) -> None:
        deep = b'{"pdus": [], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        r = self.req("PUT", f"{F1}/send/deep", raw_body=deep, authorization=self.unsigned_auth())
        self.assertError(r, 400, ("M_NOT_JSON", "M_BAD_JSON"))
        # fedlib is still alive.
        self.assertEqual(raw_request(self.fed.port, "GET", f"{F1}/version").code, 200)

    def test_huge_body(self) -> None:
        body = b'{"pdus": ["' + b"a" * (11 * 1024 * 1024) + b'"]}'
        r = self.req("PUT", f"{F1}/send/huge", raw_body=body, authorization=self.unsigned_auth())
        self.assertError(r, 413, "M_TOO_LARGE")

    def test_missing_query_params(self) -> None:
        room = q("!r:" + self.fed.server_name)
        for path in (
            f"{F1}/state_ids/{room}",
            f"{F1}/state/{room}",
            f"{F1}/backfill/{room}?limit=5",
            f"{F1}/backfill/{room}?v=%24x",
            f"{F1}/timestamp_to_event/{room}?dir=f",
            f"{F1}/timestamp_to_event/{room}?ts=1",
            f"{F1}/query/directory",
            f"{F1}/query/profile",
        ):
            r = self.req("GET", path)
            self.assertEqual(r.code, 400, (path, r))
            self.assertIn(r.errcode, ("M_MISSING_PARAM", "M_INVALID_PARAM"), (path, r))

    def test_bad_query_params(self) -> None:
        room = q("!r:" + self.fed.server_name)
        for path in (
            f"{F1}/timestamp_to_event/{room}?ts=abc&dir=f",
            f"{F1}/timestamp_to_event/{room}?ts=1&dir=x",
            f"{F1}/backfill/{room}?v=%24x&limit=abc",
        ):
            r = self.req("GET", path)
            self.assertEqual(r.code, 400, (path, r))
            self.assertIn(r.errcode, ("M_INVALID_PARAM", "M_BAD_JSON"), (path, r))

    def test_unknown_room(self) -> None:
        room = q("!unknown:" + self.fed.server_name)
        user = q(self.remote.user("x"))
        for method, path in (
            ("GET", f"{F1}/make_join/{room}/{user}?ver=10"),
            ("GET", f"{F1}/make_leave/{room}/{user}"),
            ("GET", f"{F1}/make_knock/{room}/{user}?ver=10"),
            ("GET", f"{F1}/backfill/{room}?v=%24x&limit=1"),
            ("GET", f"{F1}/timestamp_to_event/{room}?ts=1&dir=f"),
            ("GET", f"{F1}/hierarchy/{room}"),
        ):
            r = self.req(method, path)
            self.assertIn(r.code, (403, 404), (path, r))
            self.assertIn(r.errcode, ("M_NOT_FOUND", "M_FORBIDDEN"), (path, r))

    def test_unknown_event(self) -> None:
        self.assertError(self.req("GET", f"{F1}/event/{q('$nope')}"), 404, "M_NOT_FOUND")


class Transactions(BlackBoxCase):
    """transactions.yaml: PUT /send/{txnId}."""

    def test_empty_transaction_shape(self) -> None:
        r = self.send([])
        self.assertEqual(r.code, 200, r)
        self.assertEqual(r.json(), {"pdus": {}})

    def test_too_many_pdus(self) -> None:
        self.assertError(self.send([{}] * 51), 400, ("M_BAD_JSON", "M_TOO_LARGE"))

    def test_too_many_edus(self) -> None:
        edu = {"edu_type": "m.typing", "content": {}}
        self.assertError(self.send([], [edu] * 101), 400, ("M_BAD_JSON", "M_TOO_LARGE"))

    def test_fifty_pdus_allowed(self) -> None:
        # 50 junk PDUs: each gets its own error (or is dropped), the transaction is 200.
        r = self.send([{"room_id": "!x:y", "type": "m.room.message"}] * 50)
        self.assertEqual(r.code, 200, r)
        self.assertIsInstance(r.json()["pdus"], dict)

    def test_missing_pdus(self) -> None:
        r = self.req("PUT", f"{F1}/send/nopdus", {"origin": self.remote.server_name})
        self.assertError(r, 400, ("M_BAD_JSON", "M_MISSING_PARAM"))

    def test_origin_mismatch(self) -> None:
        r = self.req(
            "PUT", f"{F1}/send/om", {"origin": "127.0.0.1:9", "origin_server_ts": 1, "pdus": []}
        )
        self.assertEqual(r.code, 400, r)

    def test_duplicate_transaction_not_reprocessed(self) -> None:
        room, _ = self.new_room("10")
        joined = self.join(room, "10")
        first, first_id = self.message(room, "10", joined, {"msgtype": "m.text", "body": "one"})
        txn = "dup" + os.urandom(4).hex()
        r1 = self.send([first], txn=txn)
        self.assertEqual(r1.code, 200, r1)
        self.assertEqual(r1.json()["pdus"], {first_id: {}})
        r2 = self.send([first], txn=txn)
        self.assertEqual((r2.code, r2.json()), (r1.code, r1.json()))
        # Same (origin, txnId), other content: the first answer, nothing processed.
        second, second_id = self.message(room, "10", joined, {"msgtype": "m.text", "body": "two"})
        r3 = self.send([second], txn=txn)
        self.assertEqual((r3.code, r3.json()), (r1.code, r1.json()))
        self.assertError(self.req("GET", f"{F1}/event/{q(second_id)}"), 404, "M_NOT_FOUND")
        ev = self.req("GET", f"{F1}/event/{q(first_id)}")
        self.assertEqual(ev.code, 200, ev)

    def test_float_rejected_per_pdu(self) -> None:
        room, _ = self.new_room("10")
        joined = self.join(room, "10")
        good, good_id = self.message(room, "10", joined, {"body": "ok"})
        bad, bad_id = self.message(room, "10", joined, {"body": "float", "n": 1.5})
        r = self.send([good, bad])
        self.assertEqual(r.code, 200, r)
        pdus = r.json()["pdus"]
        self.assertEqual(pdus.get(good_id), {})
        self.assertIsInstance(pdus[bad_id].get("error"), str)
        self.assertError(self.req("GET", f"{F1}/event/{q(bad_id)}"), 404, "M_NOT_FOUND")

    def test_bad_signature_rejected_per_pdu(self) -> None:
        room, _ = self.new_room("10")
        joined = self.join(room, "10")
        bad, bad_id = self.message(room, "10", joined, {"body": "x"})
        bad["signatures"] = {self.remote.server_name: {self.remote.key_id: "A" * 86}}
        r = self.send([bad])
        self.assertEqual(r.code, 200, r)
        self.assertIsInstance(r.json()["pdus"][bad_id].get("error"), str)

    def test_largest_integer_accepted(self) -> None:
        room, _ = self.new_room("10")
        joined = self.join(room, "10")
        pdu, pdu_id = self.message(
            room, "10", joined, {"body": "x", "n": 2**53 - 1, "m": -(2**53) + 1}
        )
        r = self.send([pdu])
        self.assertEqual((r.code, r.json()["pdus"]), (200, {pdu_id: {}}))

    def test_out_of_range_integer_rejected_per_pdu(self) -> None:
        room, _ = self.new_room("10")
        joined = self.join(room, "10")
        good, good_id = self.message(room, "10", joined, {"body": "ok"})
        bad, bad_id = self.message(room, "10", joined, {"body": "big", "n": 2**53})
        r = self.send([good, bad])
        self.assertEqual(r.code, 200, r)
        pdus = r.json()["pdus"]
        self.assertEqual(pdus.get(good_id), {})
        self.assertIsInstance(pdus.get(bad_id, {}).get("error"), str)

    def test_large_integer_in_edu_accepted(self) -> None:
        edu = {"edu_type": "org.example.blackbox", "content": {"n": 2**60}}
        r = self.send([], [edu])
        self.assertEqual(r.code, 200, r)


class RoomLifecycle(BlackBoxCase):
    """A room hosted by the fedlib process, joined, read, left and knocked on by
    the remote: joins-v1/v2, state, state_ids, event_auth, backfill, events,
    get_missing_events, timestamp_to_event, leaving-v1/v2, knocks, space_hierarchy."""

    def check_lifecycle(self, version: str) -> None:
        room, token = self.new_room(version)
        self.fed.client(
            "PUT",
            f"/rooms/{q(room)}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "hello"},
            token,
        )
        user = self.remote.user("bob")

        # make_join: incompatible versions.
        for ver in ("", "?ver=1", "?ver=999"):
            r = self.req("GET", f"{F1}/make_join/{q(room)}/{q(user)}{ver}")
            self.assertError(r, 400, "M_INCOMPATIBLE_ROOM_VERSION")
            self.assertEqual(r.json().get("room_version"), version)
        # make_join: user of another server.
        r = self.req("GET", f"{F1}/make_join/{q(room)}/{q('@x:127.0.0.1:2')}?ver={version}")
        self.assertError(r, 403, "M_FORBIDDEN")

        joined = self.join(room, version, "bob")
        mj = joined["make_join"]
        self.assertShape(mj, {"event": dict})
        self.assertEqual(mj.get("room_version"), version)
        template = mj["event"]
        self.assertShape(
            template,
            {"type": str, "sender": str, "state_key": str, "content": dict, "room_id": str},
        )
        self.assertEqual(template["content"]["membership"], "join")
        self.assertEqual(template["state_key"], user)

        sj = joined["send_join"]
        self.assertShape(sj, {"state": list, "auth_chain": list, "origin": str})
        self.assertEqual(sj["origin"], self.fed.server_name)
        for pdu in sj["state"] + sj["auth_chain"]:
            self.assertPdu(pdu)
        types = {(e["type"], e["state_key"]) for e in sj["state"]}
        self.assertIn(("m.room.create", ""), types)
        event_id = joined["event_id"]

        # send_join v1: [200, {...}]; omit_members: servers_in_room.
        r = self.req("PUT", f"{F1}/send_join/{q(room)}/{q(event_id)}", joined["event"])
        self.assertEqual(r.code, 200, r)
        v1 = r.json()
        self.assertIsInstance(v1, list)
        self.assertEqual(v1[0], 200)
        self.assertShape(v1[1], {"state": list, "auth_chain": list})
        r = self.req(
            "PUT", f"{F2}/send_join/{q(room)}/{q(event_id)}?omit_members=true", joined["event"]
        )
        self.assertEqual(r.code, 200, r)
        if r.json().get("members_omitted"):
            self.assertShape(r.json(), {"servers_in_room": list})

        # Reads.
        r = self.req("GET", f"{F1}/state/{q(room)}?event_id={q(event_id)}")
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"pdus": list, "auth_chain": list})
        for pdu in r.json()["pdus"]:
            self.assertPdu(pdu)
        r = self.req("GET", f"{F1}/state_ids/{q(room)}?event_id={q(event_id)}")
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"pdu_ids": list, "auth_chain_ids": list})
        self.assertTrue(all(isinstance(i, str) for i in r.json()["pdu_ids"]))
        r = self.req("GET", f"{F1}/state_ids/{q(room)}?event_id={q('$nope')}")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = self.req("GET", f"{F1}/event_auth/{q(room)}/{q(event_id)}")
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"auth_chain": list})
        r = self.req("GET", f"{F1}/event/{q(event_id)}")
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"origin": str, "origin_server_ts": int, "pdus": list})
        self.assertEqual(len(r.json()["pdus"]), 1)
        self.assertEqual(compute_event_id(version, r.json()["pdus"][0]), event_id)
        r = self.req("GET", f"{F1}/backfill/{q(room)}?v={q(event_id)}&limit=3")
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"origin": str, "origin_server_ts": int, "pdus": list})
        self.assertLessEqual(len(r.json()["pdus"]), 3)
        self.assertGreater(len(r.json()["pdus"]), 0)
        r = self.req(
            "POST",
            f"{F1}/get_missing_events/{q(room)}",
            {"earliest_events": [], "latest_events": [event_id], "limit": 5},
        )
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"events": list})
        self.assertLessEqual(len(r.json()["events"]), 5)
        r = self.req("GET", f"{F1}/timestamp_to_event/{q(room)}?ts={now_ms() + 60000}&dir=b")
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"event_id": str, "origin_server_ts": int})
        r = self.req("GET", f"{F1}/timestamp_to_event/{q(room)}?ts=0&dir=b")
        self.assertError(r, 404, "M_NOT_FOUND")
        r = self.req("GET", f"{F1}/hierarchy/{q(room)}")
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"room": dict, "children": list, "inaccessible_children": list})
        self.assertShape(
            r.json()["room"],
            {
                "room_id": str,
                "num_joined_members": int,
                "world_readable": bool,
                "guest_can_join": bool,
                "children_state": list,
            },
        )

        # A server not in the room may not read it.
        for path in (
            f"{F1}/state_ids/{q(room)}?event_id={q(event_id)}",
            f"{F1}/state/{q(room)}?event_id={q(event_id)}",
            f"{F1}/event_auth/{q(room)}/{q(event_id)}",
            f"{F1}/backfill/{q(room)}?v={q(event_id)}&limit=2",
        ):
            r = self.other.request(self.fed, "GET", path)
            self.assertError(r, 403, "M_FORBIDDEN")

        # Leave: make_leave, send_leave v2 ({}) and v1 ([200, {}]).
        r = self.req("GET", f"{F1}/make_leave/{q(room)}/{q(user)}")
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"event": dict})
        leave = dict(r.json()["event"])
        self.assertEqual(leave["content"]["membership"], "leave")
        leave["origin_server_ts"] = now_ms()
        leave = self.remote.sign_event(version, leave)
        leave_id = compute_event_id(version, leave)
        r = self.req("PUT", f"{F2}/send_leave/{q(room)}/{q(leave_id)}", leave)
        self.assertEqual((r.code, r.json()), (200, {}))
        r = self.req("PUT", f"{F1}/send_leave/{q(room)}/{q(leave_id)}", leave)
        self.assertEqual((r.code, r.json()), (200, [200, {}]))

    def test_lifecycle_v10(self) -> None:
        self.check_lifecycle("10")

    def test_lifecycle_v12(self) -> None:
        self.check_lifecycle("12")

    def test_lifecycle_v5(self) -> None:
        self.check_lifecycle("5")

    def knock(self, version: str) -> dict[str, Any]:
        room, _ = self.new_room(
            version,
            initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
            ],
        )
        user = self.remote.user("k" + os.urandom(3).hex())
        r = self.req("GET", f"{F1}/make_knock/{q(room)}/{q(user)}")
        self.assertError(r, 400, "M_INCOMPATIBLE_ROOM_VERSION")
        self.assertEqual(r.json().get("room_version"), version)
        r = self.req("GET", f"{F1}/make_knock/{q(room)}/{q(user)}?ver={version}")
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"event": dict, "room_version": str})
        event = dict(r.json()["event"])
        self.assertEqual(event["content"]["membership"], "knock")
        event["origin_server_ts"] = now_ms()
        signed = self.remote.sign_event(version, event)
        event_id = compute_event_id(version, signed)
        r = self.req("PUT", f"{F1}/send_knock/{q(room)}/{q(event_id)}", signed)
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"knock_room_state": list})
        return {"room": room, "response": r.json()}

    def test_knock_public_room_forbidden(self) -> None:
        room, _ = self.new_room("10")
        r = self.req("GET", f"{F1}/make_knock/{q(room)}/{q(self.remote.user('k'))}?ver=10")
        self.assertError(r, 403, "M_FORBIDDEN")

    def test_knock_room_state_has_create(self) -> None:
        state = self.knock("10")["response"]["knock_room_state"]
        self.assertIn("m.room.create", [e.get("type") for e in state])

    def test_knock_room_state_formatted_per_room_version(self) -> None:
        for version in ("10", "12"):
            state = self.knock(version)["response"]["knock_room_state"]
            for event in state:
                self.assertPdu(event)


class Invites(BlackBoxCase):
    """invites-v2.yaml: PUT /v2/invite to a fedlib user for a remote room."""

    version = "10"

    def invite_event(self, **overrides: Any) -> tuple[str, dict[str, Any], str]:
        room = "!inv" + os.urandom(4).hex() + ":" + self.remote.server_name
        sender = self.remote.user("inviter")
        create = self.remote.sign_event(
            self.version,
            {
                "type": "m.room.create",
                "state_key": "",
                "room_id": room,
                "sender": sender,
                "content": {"creator": sender, "room_version": self.version},
                "depth": 1,
                "prev_events": [],
                "auth_events": [],
                "origin_server_ts": now_ms(),
            },
        )
        create_id = compute_event_id(self.version, create)
        event = {
            "type": "m.room.member",
            "state_key": self.fed.user("invitee"),
            "room_id": room,
            "sender": sender,
            "content": {"membership": "invite"},
            "depth": 2,
            "prev_events": [create_id],
            "auth_events": [create_id],
            "origin_server_ts": now_ms(),
            **overrides,
        }
        signed = self.remote.sign_event(self.version, event)
        self.create = create
        return room, signed, compute_event_id(self.version, signed)

    def setUp(self) -> None:
        super().setUp()
        if not getattr(Invites, "registered", False):
            self.fed.register("invitee")
            Invites.registered = True  # type: ignore[attr-defined]

    def put(self, room: str, event: Any, event_id: str, **extra: Any) -> Response:
        body = {
            "room_version": self.version,
            "event": event,
            "invite_room_state": [self.create],
            **extra,
        }
        return self.req("PUT", f"{F2}/invite/{q(room)}/{q(event_id)}", body)

    def test_invite_signed_and_returned(self) -> None:
        room, event, event_id = self.invite_event()
        r = self.put(room, event, event_id)
        self.assertEqual(r.code, 200, r)
        self.assertShape(r.json(), {"event": dict})
        returned = r.json()["event"]
        self.assertIn(self.fed.server_name, returned["signatures"])
        self.assertIn(self.remote.server_name, returned["signatures"])
        self.assertEqual(compute_event_id(self.version, returned), event_id)

    def test_unsupported_room_version(self) -> None:
        room, event, event_id = self.invite_event()
        r = self.put(room, event, event_id, room_version="999")
        self.assertError(r, 400, "M_INCOMPATIBLE_ROOM_VERSION")
        self.assertEqual(r.json().get("room_version"), "999")

    def test_invalid_invites_are_invalid_param(self) -> None:
        cases = {
            "not a member event": self.invite_event(type="m.room.topic"),
            "not membership invite": self.invite_event(content={"membership": "join"}),
            "target not local": self.invite_event(state_key="@x:127.0.0.1:3"),
            "sender not of origin": self.invite_event(sender="@x:127.0.0.1:3"),
        }
        room, event, event_id = self.invite_event()
        event = dict(event, signatures={self.remote.server_name: {self.remote.key_id: "A" * 86}})
        cases["bad signature"] = (room, event, event_id)
        for name, (room, event, event_id) in cases.items():
            r = self.put(room, event, event_id)
            self.assertEqual(r.code, 400, (name, r))
            self.assertEqual(r.errcode, "M_INVALID_PARAM", (name, r))


class OutboundTransactions(BlackBoxCase):
    """What the fedlib process sends: transactions.yaml and "Request Authentication"
    seen from the receiving side."""

    timeout = 90

    def setUp(self) -> None:
        super().setUp()
        # A remote of this test's own, so that the requests it records are ours.
        self.remote = RemoteServer()
        self.addCleanup(self.remote.stop)

    def sends(self, room_id: str) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
        out = []
        for (method, path, body), headers in zip(
            list(self.remote.received), list(self.remote.received_headers), strict=False
        ):
            if method == "PUT" and path.startswith(f"{F1}/send/"):
                content = json.loads(body)
                if any(p.get("room_id") == room_id for p in content.get("pdus", [])):
                    out.append((path, headers, content))
        return out

    def wait_sends(self, room_id: str, count: int, timeout: float = 45.0) -> Any:
        deadline = time.monotonic() + timeout
        while len(self.sends(room_id)) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        sends = self.sends(room_id)
        self.assertGreaterEqual(len(sends), count, f"only {len(sends)} transactions")
        return sends

    def test_transaction_is_signed_and_well_formed(self) -> None:
        room, token = self.new_room("10")
        self.join(room, "10")
        self.fed.client(
            "PUT",
            f"/rooms/{q(room)}/send/m.room.message/o1",
            {"msgtype": "m.text", "body": "o"},
            token,
        )
        path, headers, body = self.wait_sends(room, 1)[0]
        self.assertShape(body, {"origin": str, "origin_server_ts": int, "pdus": list})
        self.assertEqual(body["origin"], self.fed.server_name)
        self.assertLessEqual(len(body["pdus"]), 50)
        self.assertLessEqual(len(body.get("edus", [])), 100)
        for pdu in body["pdus"]:
            self.assertPdu(pdu)
            self.assertNotIn("event_id", pdu)  # room version 10
        auth = headers.get("Authorization", "")
        self.assertTrue(auth.startswith("X-Matrix "), auth)
        params = dict(
            (part.split("=", 1)[0].strip().lower(), part.split("=", 1)[1].strip().strip('"'))
            for part in auth[len("X-Matrix ") :].split(",")
        )
        self.assertEqual(params.get("origin"), self.fed.server_name)
        self.assertEqual(params.get("destination"), self.remote.server_name)
        own = raw_request(self.fed.port, "GET", "/_matrix/key/v2/server").json()["verify_keys"]
        kid = params["key"]
        signed = {
            "method": "PUT",
            "uri": path,
            "origin": self.fed.server_name,
            "destination": self.remote.server_name,
            "content": body,
            "signatures": {self.fed.server_name: {kid: params["sig"]}},
        }
        vk = signedjson.key.decode_verify_key_base64(
            "ed25519", kid.split(":", 1)[1], own[kid]["key"]
        )
        signedjson.sign.verify_signed_json(signed, self.fed.server_name, vk)

    def test_failed_transaction_retried_with_same_txn_id(self) -> None:
        room, token = self.new_room("10")
        self.join(room, "10")
        self.remote.send_answers.append((500, {"errcode": "M_UNKNOWN", "error": "try again"}))
        self.fed.client(
            "PUT",
            f"/rooms/{q(room)}/send/m.room.message/r1",
            {"msgtype": "m.text", "body": "r"},
            token,
        )
        first, second = self.wait_sends(room, 2)[:2]
        self.assertEqual(first[2]["pdus"], second[2]["pdus"])
        self.assertEqual(first[0], second[0], "the retry of a failed transaction has a new txnId")

    def test_backlog_split_into_transactions_of_at_most_50_pdus(self) -> None:
        room, token = self.new_room("10")
        self.join(room, "10")
        self.remote.send_answers.append((500, {"errcode": "M_UNKNOWN", "error": "try again"}))
        bodies = [f"b{i}" for i in range(60)]
        for i, text in enumerate(bodies):
            r = self.fed.client(
                "PUT",
                f"/rooms/{q(room)}/send/m.room.message/b{i}",
                {"msgtype": "m.text", "body": text},
                token,
            )
            self.assertEqual(r.code, 200, r)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = {
                p["content"].get("body")
                for _, _, body in self.sends(room)
                for p in body["pdus"]
                if isinstance(p.get("content"), dict)
            }
            if seen >= set(bodies):
                break
            time.sleep(0.3)
        self.assertTrue(seen >= set(bodies), f"{len(seen & set(bodies))} of 60 delivered")
        for _, _, body in self.sends(room):
            self.assertLessEqual(len(body["pdus"]), 50)


class EventChecks(BlackBoxCase):
    """server-server-api.md "Checks performed on receipt of a PDU" and the
    restricted-room, ACL and ban rules, seen from outside."""

    def test_hash_mismatch_stored_redacted(self) -> None:
        for version in ("10", "12"):
            room, _ = self.new_room(version)
            joined = self.join(room, version)
            pdu, pdu_id = self.message(room, version, joined, {"body": "original"})
            pdu = dict(pdu, content={"body": "tampered"})
            r = self.send([pdu])
            self.assertEqual((r.code, r.json()["pdus"]), (200, {pdu_id: {}}))
            got = self.req("GET", f"{F1}/event/{q(pdu_id)}")
            self.assertEqual(got.code, 200, got)
            self.assertEqual(got.json()["pdus"][0]["content"], {})

    def test_missing_hashes_rejected(self) -> None:
        room, _ = self.new_room("10")
        joined = self.join(room, "10")
        pdu, _ = self.message(room, "10", joined, {"body": "x"})
        del pdu["hashes"]
        r = self.send([pdu])
        self.assertEqual(r.code, 200, r)
        # The event ID covers the hashes, so there is one entry, under fedlib's ID.
        (result,) = r.json()["pdus"].values()
        self.assertIsInstance(result.get("error"), str)

    def test_v12_create_event_not_allowed_in_auth_events(self) -> None:
        room, _ = self.new_room("12")
        joined = self.join(room, "12")
        pdu, pdu_id = self.message(room, "12", joined, {"body": "x"})
        create = next(e for e in joined["send_join"]["state"] if e["type"] == "m.room.create")
        event = {k: v for k, v in pdu.items() if k not in ("hashes", "signatures")}
        event["auth_events"] = [*event["auth_events"], compute_event_id("12", create)]
        pdu = self.remote.sign_event("12", event)
        pdu_id = compute_event_id("12", pdu)
        r = self.send([pdu])
        self.assertEqual(r.code, 200, r)
        self.assertIsInstance(r.json()["pdus"][pdu_id].get("error"), str)

    def test_oversized_state_key_rejected(self) -> None:
        room, _ = self.new_room("10")
        joined = self.join(room, "10")
        pdu, _ = self.message(room, "10", joined, {"topic": "x"})
        event = {k: v for k, v in pdu.items() if k not in ("hashes", "signatures")}
        event.update(type="m.room.topic", state_key="x" * 256)
        pdu = self.remote.sign_event("10", event)
        pdu_id = compute_event_id("10", pdu)
        r = self.send([pdu])
        self.assertEqual(r.code, 200, r)
        self.assertIsInstance(r.json()["pdus"][pdu_id].get("error"), str)

    def test_unknown_prev_event_asks_origin(self) -> None:
        remote = RemoteServer()
        self.addCleanup(remote.stop)
        self.remote = remote
        room, _ = self.new_room("10")
        joined = self.join(room, "10")
        pdu, _ = self.message(room, "10", joined, {"body": "gap"})
        event = {k: v for k, v in pdu.items() if k not in ("hashes", "signatures")}
        event["prev_events"] = ["$" + "A" * 43]
        event["depth"] += 5
        pdu = remote.sign_event("10", event)
        r = self.send([pdu])
        self.assertEqual(r.code, 200, r)
        asked = [p for m, p, _ in remote.received if "/get_missing_events/" in p]
        self.assertTrue(asked, remote.received)

    def test_restricted_join(self) -> None:
        allowed, _ = self.new_room("10")
        rules = {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": allowed}],
        }
        restricted, _ = self.new_room(
            "10", initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": rules}]
        )
        user = self.remote.user("r" + os.urandom(3).hex())
        r = self.req("GET", f"{F1}/make_join/{q(restricted)}/{q(user)}?ver=10")
        self.assertError(r, 403, "M_FORBIDDEN")
        unknown = {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": "!u:127.0.0.1:9"}],
        }
        nowhere, _ = self.new_room(
            "10", initial_state=[{"type": "m.room.join_rules", "state_key": "", "content": unknown}]
        )
        r = self.req("GET", f"{F1}/make_join/{q(nowhere)}/{q(user)}?ver=10")
        self.assertError(r, 400, "M_UNABLE_TO_AUTHORISE_JOIN")
        localpart = user[1:].split(":", 1)[0]
        self.join(allowed, "10", localpart)
        joined = self.join(restricted, "10", localpart)
        via = joined["make_join"]["event"]["content"].get("join_authorised_via_users_server")
        self.assertTrue(isinstance(via, str) and via.endswith(":" + self.fed.server_name), via)
        # send_join's "event": the join countersigned by the resident server.
        event = joined["send_join"].get("event")
        self.assertIsInstance(event, dict)
        self.assertIn(self.fed.server_name, event["signatures"])
        self.assertIn(self.remote.server_name, event["signatures"])

    def test_server_acl_and_ban(self) -> None:
        acl = {"allow": ["*"], "deny": [], "allow_ip_literals": False}
        room, _ = self.new_room(
            "10", initial_state=[{"type": "m.room.server_acl", "state_key": "", "content": acl}]
        )
        user = q(self.remote.user("x"))
        self.assertError(
            self.req("GET", f"{F1}/make_join/{q(room)}/{user}?ver=10"), 403, "M_FORBIDDEN"
        )
        room, token = self.new_room("10")
        r = self.fed.client(
            "POST", f"/rooms/{q(room)}/ban", {"user_id": self.remote.user("banned")}, token
        )
        self.assertEqual(r.code, 200, r)
        r = self.req("GET", f"{F1}/make_join/{q(room)}/{q(self.remote.user('banned'))}?ver=10")
        self.assertError(r, 403, "M_FORBIDDEN")


class InvitesV12(BlackBoxCase):
    """invites-v2.yaml: invite_room_state validation, which servers SHOULD apply to
    room versions 12 and later."""

    version = "12"

    def setUp(self) -> None:
        super().setUp()
        if not getattr(InvitesV12, "registered", False):
            self.fed.register("invitee12")
            InvitesV12.registered = True  # type: ignore[attr-defined]

    def remote_room(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        """A room of the remote's: its create event, the creator's join, the room ID."""
        sender = self.remote.user("creator")
        create = self.remote.sign_event(
            self.version,
            {
                "type": "m.room.create",
                "state_key": "",
                "sender": sender,
                "content": {"room_version": self.version, "nonce": os.urandom(4).hex()},
                "depth": 1,
                "prev_events": [],
                "auth_events": [],
                "origin_server_ts": now_ms(),
            },
        )
        room_id = compute_room_id(create, self.version)
        member = self.remote.sign_event(
            self.version,
            {
                "type": "m.room.member",
                "state_key": sender,
                "room_id": room_id,
                "sender": sender,
                "content": {"membership": "join"},
                "depth": 2,
                "prev_events": [compute_event_id(self.version, create)],
                "auth_events": [],
                "origin_server_ts": now_ms(),
            },
        )
        return create, member, room_id

    def invite(self, invite_room_state: list[Any]) -> Response:
        _, member, room_id = self.room
        member_id = compute_event_id(self.version, member)
        event = self.remote.sign_event(
            self.version,
            {
                "type": "m.room.member",
                "state_key": self.fed.user("invitee12"),
                "room_id": room_id,
                "sender": member["sender"],
                "content": {"membership": "invite"},
                "depth": 3,
                "prev_events": [member_id],
                "auth_events": [member_id],
                "origin_server_ts": now_ms(),
            },
        )
        event_id = compute_event_id(self.version, event)
        body = {
            "room_version": self.version,
            "event": event,
            "invite_room_state": invite_room_state,
        }
        return self.req("PUT", f"{F2}/invite/{q(room_id)}/{q(event_id)}", body)

    def test_valid_invite_room_state(self) -> None:
        self.room = self.remote_room()
        create, member, _ = self.room
        r = self.invite([create, member])
        self.assertEqual(r.code, 200, r)
        self.assertIn(self.fed.server_name, r.json()["event"]["signatures"])

    def test_invalid_invite_room_state(self) -> None:
        self.room = self.remote_room()
        create, member, _ = self.room
        other_create = self.remote_room()[0]
        cases = {
            "no m.room.create": [member],
            "empty": [],
            "another room's create": [other_create, member],
            "stripped create": [{k: create[k] for k in ("type", "state_key", "sender", "content")}],
            "create with a bad signature": [
                dict(create, signatures={self.remote.server_name: {self.remote.key_id: "A" * 86}})
            ],
        }
        for name, state in cases.items():
            r = self.invite(state)
            self.assertEqual((r.code, r.errcode), (400, "M_INVALID_PARAM"), (name, r))


class MembershipValidation(BlackBoxCase):
    """joins-v2.yaml, leaving-v2.yaml, knocks.yaml: the validation of send_join,
    send_leave and send_knock, for which servers SHOULD answer 400 M_INVALID_PARAM."""

    def bad_events(self, room: str, membership: str) -> dict[str, tuple[dict[str, Any], str]]:
        user = self.remote.user("v" + os.urandom(3).hex())
        template = {
            "type": "m.room.member",
            "room_id": room,
            "sender": user,
            "state_key": user,
            "content": {"membership": membership},
            "depth": 10,
            "prev_events": [],
            "auth_events": [],
            "origin_server_ts": now_ms(),
        }
        other = "knock" if membership != "knock" else "join"
        variants = {
            "wrong type": {**template, "type": "m.room.topic"},
            "wrong membership": {**template, "content": {"membership": other}},
            "sender of another server": {**template, "sender": "@x:127.0.0.1:3"},
            "state_key not sender": {**template, "state_key": self.remote.user("other")},
        }
        out = {}
        for name, event in variants.items():
            signed = self.remote.sign_event("10", event)
            out[name] = (signed, compute_event_id("10", signed))
        signed = self.remote.sign_event("10", template)
        event_id = compute_event_id("10", signed)
        signed["signatures"] = {self.remote.server_name: {self.remote.key_id: "A" * 86}}
        out["bad signature"] = (signed, event_id)
        return out

    def check(self, path: str, membership: str, knock: bool = False) -> None:
        rules = [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]
        room, _ = self.new_room("10", initial_state=rules if knock else [])
        failures = []
        for name, (event, event_id) in self.bad_events(room, membership).items():
            r = self.req("PUT", f"{path}/{q(room)}/{q(event_id)}", event)
            if (r.code, r.errcode) != (400, "M_INVALID_PARAM"):
                failures.append(f"{name}: {r.code} {r.errcode}")
            self.assertIn(r.code, (400, 403), (name, r))
        self.assertEqual(failures, [])

    def test_send_join(self) -> None:
        self.check(f"{F2}/send_join", "join")

    def test_send_leave(self) -> None:
        self.check(f"{F2}/send_leave", "leave")

    def test_send_knock(self) -> None:
        self.check(f"{F1}/send_knock", "knock", knock=True)


class Identifiers(BlackBoxCase):
    """appendices.md, User Identifiers: at most 255 bytes."""

    def test_make_join_refuses_overlong_user_id(self) -> None:
        room, _ = self.new_room("10")
        user = "@" + "u" * 250 + ":" + self.remote.server_name
        r = self.req("GET", f"{F1}/make_join/{q(room)}/{q(user)}?ver=10")
        self.assertEqual(r.code, 400, r)
        self.assertIn(r.errcode, ("M_INVALID_PARAM", "M_BAD_JSON", "M_INVALID_USERNAME"), r)

    def test_overlong_sender_rejected_per_pdu(self) -> None:
        room, _ = self.new_room("10")
        joined = self.join(room, "10")
        pdu, _ = self.message(room, "10", joined, {"body": "x"})
        event = {k: v for k, v in pdu.items() if k not in ("hashes", "signatures")}
        event["sender"] = "@" + "u" * 250 + ":" + self.remote.server_name
        pdu = self.remote.sign_event("10", event)
        r = self.send([pdu])
        self.assertEqual(r.code, 200, r)
        (result,) = r.json()["pdus"].values()
        self.assertIsInstance(result.get("error"), str)


class _BadKeyServer(RemoteServer):
    """A remote whose /_matrix/key/v2/server answer is wrong in one way."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        super().__init__()

    def key_response(self) -> dict[str, Any]:
        base = {k: v for k, v in super().key_response().items() if k != "signatures"}
        if self.mode == "unsigned":
            return base
        if self.mode == "signed by another key":
            return sign_json(base, self.server_name, generate_signing_key(self.signing_key.version))
        if self.mode == "another server_name":
            return sign_json(
                dict(base, server_name="127.0.0.1:1"), self.server_name, self.signing_key
            )
        if self.mode == "signed as another server":
            return sign_json(base, "127.0.0.1:1", self.signing_key)
        raise AssertionError(self.mode)


class KeyFetching(BlackBoxCase):
    """keys_server.yaml as fedlib consumes it: a request from a server whose key
    answer does not verify is 401, and the notary returns nothing for it."""

    def test_unverifiable_key_answers(self) -> None:
        for mode in (
            "unsigned",
            "signed by another key",
            "another server_name",
            "signed as another server",
        ):
            remote = _BadKeyServer(mode)
            self.addCleanup(remote.stop)
            r = remote.request(self.fed, "GET", f"{F1}/event/{q('$nope')}")
            self.assertError(r, 401, "M_UNAUTHORIZED")
            notary = raw_request(
                self.fed.port, "GET", f"/_matrix/key/v2/query/{q(remote.server_name)}"
            )
            self.assertEqual((notary.code, notary.json()), (200, {"server_keys": []}), mode)
