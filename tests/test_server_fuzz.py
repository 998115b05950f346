"""Fuzzing every path of the spec's server-server OpenAPI files with validly signed
requests: no answer may be a 500, every error must be a Matrix error body, and
200 answers must carry the top-level fields the spec's schema requires."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from fedlib.crypto.request_auth import sign_request
from tests.server_helpers import OUR_NAME, Harness, Remote, RoomBuilder

SPEC_DIR = Path(os.environ.get("FEDLIB_SPEC_DIR", "/work/shared/spec/data/api/server-server"))
EXAMPLES = int(os.environ.get("FEDLIB_FUZZ_EXAMPLES", "2000"))

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "boolean": bool,
}


def _load_operations() -> list[dict[str, Any]]:
    ops = []
    if not SPEC_DIR.is_dir():
        return ops
    for path in sorted(SPEC_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        base = (
            doc.get("servers", [{}])[0].get("variables", {}).get("basePath", {}).get("default", "")
        )
        for route, methods in (doc.get("paths") or {}).items():
            for method, op in methods.items():
                if not isinstance(op, dict):
                    continue
                params = [
                    p for p in op.get("parameters", []) if isinstance(p, dict) and "name" in p
                ]
                ok = (op.get("responses") or {}).get("200") or {}
                schema = ((ok.get("content") or {}).get("application/json") or {}).get("schema")
                ops.append(
                    {
                        "file": path,
                        "method": method.upper(),
                        "path": base + route,
                        "params": params,
                        "body": "requestBody" in op,
                        "schema": schema,
                        "signed": bool(op.get("security")),
                    }
                )
    return ops


OPERATIONS = _load_operations()


def _resolve(schema: Any, base: Path, depth: int = 0) -> Any:
    if not isinstance(schema, dict) or depth > 8:
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and "#" not in ref:
        target = (base.parent / ref).resolve()
        if not target.is_file():
            return None  # a schema outside the checked-out spec subset
        return _resolve(yaml.safe_load(target.read_text()), target, depth + 1)
    if "allOf" in schema:
        merged: dict[str, Any] = {"properties": {}, "required": []}
        for part in schema["allOf"]:
            part = _resolve(part, base, depth + 1)
            if not isinstance(part, dict):
                continue
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
            merged.setdefault("type", part.get("type"))
        return merged
    return schema


def check_schema(schema: Any, base: Path, value: Any) -> str | None:
    """A reason ``value`` breaks the top level of ``schema``, or ``None``."""
    schema = _resolve(schema, base)
    if not isinstance(schema, dict):
        return None
    expected = _TYPES.get(schema.get("type", ""))
    if expected is not None and not isinstance(value, expected):
        return f"expected {schema['type']}, got {type(value).__name__}"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                return f"missing required field {name!r}"
        for name, sub in (schema.get("properties") or {}).items():
            sub = _resolve(sub, base)
            if name in value and isinstance(sub, dict):
                t = _TYPES.get(sub.get("type", ""))
                if t is not None and not isinstance(value[name], t):
                    return f"field {name!r} is not {sub['type']}"
    return None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


class FuzzTests(unittest.TestCase):
    requests = 0

    def setUp(self) -> None:
        if not OPERATIONS:
            raise unittest.SkipTest(f"spec not found at {SPEC_DIR}")
        self.remote = Remote("remote.test")
        self.h = Harness(self.remote, rate_per_second=1e9, rate_burst=10**9)
        rb = RoomBuilder("10", {OUR_NAME: self.h.us, "remote.test": self.remote})
        rb.create_room("@alice:us.test", extra_members=["@bob:remote.test"])
        self.msg_id, self.msg = rb.make("m.room.message", "@bob:remote.test", {"body": "x"})
        self.successResultOf(rb.persist_all(self.h.store))
        self.rb = rb
        self.known = [
            rb.room_id,
            *rb.events,
            "@alice:us.test",
            "@bob:remote.test",
            OUR_NAME,
            "remote.test",
        ]

    def _value(self, data: Any) -> str:
        return data.draw(
            st.sampled_from(self.known)
            | st.text(max_size=30)
            | st.sampled_from(
                ["", "%ff", "..", "!x:y", "$", "@", "true", "-1", "99999999999999999999"]
            )
            | st.integers(min_value=-5, max_value=10**15).map(str),
            label="value",
        )

    def _body(self, data: Any, op: dict[str, Any]) -> Any:
        pdu = dict(self.msg)
        mutated = data.draw(st.dictionaries(st.sampled_from(sorted(pdu)), json_values, max_size=2))
        pdu.update(mutated)
        candidates = [
            json_values,
            st.just({"origin": "remote.test", "origin_server_ts": 1, "pdus": [pdu], "edus": []}),
            st.just(pdu),
            st.just(self.msg),
            st.just({"room_version": "10", "event": pdu, "invite_room_state": []}),
            st.just({"server_keys": {"remote.test": {}, OUR_NAME: {"ed25519:x": {}}}}),
            st.just({"earliest_events": [], "latest_events": [self.msg_id], "limit": 5}),
            st.dictionaries(
                st.sampled_from(
                    ["limit", "since", "filter", "device_keys", "one_time_keys", "pdus", "edus"]
                ),
                json_values,
                max_size=3,
            ),
        ]
        return data.draw(st.one_of(*candidates), label="body")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(data=st.data())
    def test_no_500(self, data: Any) -> None:
        op = data.draw(st.sampled_from(OPERATIONS), label="operation")
        path = op["path"]
        query: list[str] = []
        for p in op["params"]:
            if p.get("in") == "path":
                path = path.replace("{" + p["name"] + "}", quote(self._value(data), safe="@:!$"))
            elif p.get("in") == "query" and data.draw(st.booleans(), label="include"):
                for _ in range(data.draw(st.integers(1, 2), label="repeat")):
                    query.append(f"{p['name']}={quote(self._value(data), safe='')}")
        uri = path + ("?" + "&".join(query) if query else "")
        content = self._body(data, op) if op["body"] else None
        method = op["method"]
        body = b"" if content is None else json.dumps(content).encode()
        auth = sign_request(method, uri, "remote.test", OUR_NAME, self.remote.key, content)
        r = self.h.request(method, uri, body=body, auth_header=auth)
        type(self).requests += 1
        self.assertNotEqual(r.code, 500, (method, uri, r.body[:300]))
        self.assertEqual(self.flushLoggedErrors(), [])
        answer = json.loads(r.body)
        if r.code >= 400:
            self.assertIsInstance(answer.get("errcode"), str, (method, uri, answer))
            self.assertIsInstance(answer.get("error"), str, (method, uri, answer))
        elif r.code == 200 and op["schema"] is not None:
            problem = check_schema(op["schema"], op["file"], answer)
            self.assertIsNone(problem, (method, uri, problem, answer))

    def tearDown(self) -> None:
        # The count goes to the test log (for the report): trial keeps stdout.
        print(f"\n[fuzz] {type(self).requests} signed requests, no 500")
