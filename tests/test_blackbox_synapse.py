"""Black-box interoperability: a real Synapse and a running ``twistd -n fedlib``
process federating on 127.0.0.1, each driven only through its Client-Server API.

Rooms hosted by fedlib (Synapse joins, knocks, is invited) and rooms hosted by
Synapse (fedlib joins, knocks, is invited), in room versions 10 and 12, with
messages both ways. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from twisted.trial import unittest

from tests.blackbox_helpers import FedlibProcess, Response, q, raw_request, shared
from tests.interop.synapse import SynapseServer, shared_synapse

WAIT = 30.0


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


class SynapseAndFedlib(unittest.TestCase):
    timeout = 120
    fed: FedlibProcess
    synapse: SynapseServer

    def setUp(self) -> None:
        self.synapse = shared_synapse()
        if self.synapse.proc is None or self.synapse.proc.poll() is not None:
            self.synapse.start_blocking()
        self.fed = shared()[0]
        suffix = os.urandom(3).hex()
        sam = self.synapse.register_blocking("sam" + suffix)
        self.sam, self.sam_token = sam.user_id, sam.token
        self.alice_token = self.fed.register("alice" + suffix)
        self.alice = self.fed.user("alice" + suffix)

    def syn(self, method: str, path: str, body: Any = None) -> Response:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.sam_token}"}
        data = None if body is None else json.dumps(body).encode()
        return raw_request(
            self.synapse.client_port,
            method,
            "/_matrix/client/v3" + path,
            data,
            headers,
            tls=False,
        )

    def fedc(self, method: str, path: str, body: Any = None) -> Response:
        return self.fed.client(method, path, body, self.alice_token)

    def ok(self, resp: Response) -> Any:
        self.assertEqual(resp.code, 200, resp)
        return resp.json()

    def sees(self, client: Callable[..., Response], room: str, body: str) -> Callable[[], bool]:
        def check() -> bool:
            r = client("GET", f"/rooms/{q(room)}/messages?dir=b&limit=30")
            return r.code == 200 and any(
                e.get("content", {}).get("body") == body for e in r.json().get("chunk", [])
            )

        return check

    def knock_rules(self) -> list[dict[str, Any]]:
        return [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]

    # -- rooms hosted by fedlib --

    def check_fedlib_hosted(self, version: str) -> None:
        body = {"preset": "public_chat", "room_version": version}
        room = self.ok(self.fedc("POST", "/createRoom", body))["room_id"]
        # History from before Synapse joined: it backfills from fedlib.
        for i in range(3):
            message = {"msgtype": "m.text", "body": f"before join {i}"}
            self.ok(self.fedc("PUT", f"/rooms/{q(room)}/send/m.room.message/b{i}", message))
        self.ok(self.syn("POST", f"/join/{q(room)}?server_name={q(self.fed.server_name)}", {}))
        for i in range(3):
            self.assertTrue(
                wait_for(self.sees(self.syn, room, f"before join {i}")), "no backfilled history"
            )
        text = f"from fedlib v{version}"
        self.ok(
            self.fedc(
                "PUT",
                f"/rooms/{q(room)}/send/m.room.message/f1",
                {"msgtype": "m.text", "body": text},
            )
        )
        self.assertTrue(wait_for(self.sees(self.syn, room, text)), "Synapse never got it")
        text = f"from synapse v{version}"
        self.ok(
            self.syn(
                "PUT",
                f"/rooms/{q(room)}/send/m.room.message/s1",
                {"msgtype": "m.text", "body": text},
            )
        )
        self.assertTrue(wait_for(self.sees(self.fedc, room, text)), "fedlib never got it")

        # Synapse knocks; fedlib's room state shows the knock.
        body = {**body, "initial_state": self.knock_rules()}
        knock_room = self.ok(self.fedc("POST", "/createRoom", body))["room_id"]
        self.ok(
            self.syn("POST", f"/knock/{q(knock_room)}?server_name={q(self.fed.server_name)}", {})
        )
        member = self.fedc("GET", f"/rooms/{q(knock_room)}/state/m.room.member/{q(self.sam)}")
        self.assertEqual(self.ok(member).get("membership"), "knock")

        # fedlib invites Synapse's user, who accepts.
        body = {"preset": "private_chat", "room_version": version}
        private = self.ok(self.fedc("POST", "/createRoom", body))["room_id"]
        self.ok(self.fedc("POST", f"/rooms/{q(private)}/invite", {"user_id": self.sam}))
        self.ok(self.syn("POST", f"/join/{q(private)}?server_name={q(self.fed.server_name)}", {}))

    def test_fedlib_hosted_v10(self) -> None:
        self.check_fedlib_hosted("10")

    def test_fedlib_hosted_v12(self) -> None:
        self.check_fedlib_hosted("12")

    # -- rooms hosted by Synapse --

    def check_synapse_hosted(self, version: str) -> None:
        via = f"?server_name={q(self.synapse.server_name)}"
        body = {"preset": "public_chat", "room_version": version}
        room = self.ok(self.syn("POST", "/createRoom", body))["room_id"]
        self.ok(self.fedc("POST", f"/join/{q(room)}{via}", {}))
        text = f"hosted by synapse v{version}"
        self.ok(
            self.syn(
                "PUT",
                f"/rooms/{q(room)}/send/m.room.message/h1",
                {"msgtype": "m.text", "body": text},
            )
        )
        self.assertTrue(wait_for(self.sees(self.fedc, room, text)), "fedlib never got it")
        text = f"fedlib in synapse room v{version}"
        self.ok(
            self.fedc(
                "PUT",
                f"/rooms/{q(room)}/send/m.room.message/h2",
                {"msgtype": "m.text", "body": text},
            )
        )
        self.assertTrue(wait_for(self.sees(self.syn, room, text)), "Synapse never got it")

        body = {"preset": "private_chat", "room_version": version}
        private = self.ok(self.syn("POST", "/createRoom", body))["room_id"]
        self.ok(self.syn("POST", f"/rooms/{q(private)}/invite", {"user_id": self.alice}))
        self.ok(self.fedc("POST", f"/join/{q(private)}{via}", {}))

        body = {
            "preset": "public_chat",
            "room_version": version,
            "initial_state": self.knock_rules(),
        }
        knock_room = self.ok(self.syn("POST", "/createRoom", body))["room_id"]
        self.ok(self.fedc("POST", f"/knock/{q(knock_room)}{via}", {}))

        def knocked() -> bool:
            r = self.syn("GET", f"/rooms/{q(knock_room)}/state/m.room.member/{q(self.alice)}")
            return r.code == 200 and r.json().get("membership") == "knock"

        self.assertTrue(wait_for(knocked), "Synapse never saw the knock")

    def test_synapse_hosted_v10(self) -> None:
        self.check_synapse_hosted("10")

    def test_synapse_hosted_v12(self) -> None:
        self.check_synapse_hosted("12")
