"""Black-box checks of the Client-Server API that ``twistd fedlib --client-listen``
serves, where it feeds federation: transaction-ID idempotency of sends."""

from __future__ import annotations

import os

from twisted.trial import unittest

from tests.blackbox_helpers import FedlibProcess, q, shared


class SendTransactionIds(unittest.TestCase):
    timeout = 60
    fed: FedlibProcess

    def setUp(self) -> None:
        self.fed = shared()[0]
        self.token = self.fed.register("t" + os.urandom(4).hex())

    def room(self) -> str:
        r = self.fed.client("POST", "/createRoom", {"preset": "public_chat"}, self.token)
        self.assertEqual(r.code, 200, r)
        return str(r.json()["room_id"])

    def send(self, room: str, txn: str, body: str, event_type: str = "m.room.message") -> str:
        r = self.fed.client(
            "PUT",
            f"/rooms/{q(room)}/send/{event_type}/{txn}",
            {"msgtype": "m.text", "body": body},
            self.token,
        )
        self.assertEqual(r.code, 200, r)
        return str(r.json()["event_id"])

    def bodies(self, room: str) -> list[str]:
        r = self.fed.client("GET", f"/rooms/{q(room)}/messages?dir=b&limit=50", None, self.token)
        self.assertEqual(r.code, 200, r)
        return [e.get("content", {}).get("body") for e in r.json()["chunk"]]

    def test_retry_is_idempotent(self) -> None:
        room = self.room()
        first = self.send(room, "same", "once")
        self.assertEqual(self.send(room, "same", "once"), first)
        self.assertEqual(self.bodies(room).count("once"), 1)

    def test_same_txn_id_in_another_room_is_another_request(self) -> None:
        room_a, room_b = self.room(), self.room()
        in_a = self.send(room_a, "shared-txn", "to a")
        in_b = self.send(room_b, "shared-txn", "to b")
        self.assertNotEqual(in_a, in_b)
        self.assertIn("to b", self.bodies(room_b))

    def test_same_txn_id_other_event_type_is_another_request(self) -> None:
        room = self.room()
        first = self.send(room, "typed-txn", "message")
        other = self.send(room, "typed-txn", "custom", event_type="org.example.custom")
        self.assertNotEqual(first, other)


class PublicRooms(unittest.TestCase):
    timeout = 60

    def test_public_room_in_federation_and_client_directory(self) -> None:
        fed, remote, _ = shared()
        token = fed.register("p" + os.urandom(4).hex())
        name = "Directory " + os.urandom(4).hex()
        r = fed.client("POST", "/createRoom", {"visibility": "public", "name": name}, token)
        self.assertEqual(r.code, 200, r)
        public = r.json()["room_id"]
        r = fed.client("POST", "/createRoom", {"name": name + " private"}, token)
        self.assertEqual(r.code, 200, r)
        private = r.json()["room_id"]

        r = remote.request(fed, "GET", "/_matrix/federation/v1/publicRooms?limit=500")
        self.assertEqual(r.code, 200, r)
        rooms = {e["room_id"]: e for e in r.json()["chunk"]}
        self.assertIn(public, rooms)
        self.assertNotIn(private, rooms)
        self.assertEqual(rooms[public].get("name"), name)
        self.assertEqual(rooms[public]["num_joined_members"], 1)

        search = {"filter": {"generic_search_term": name}}
        r = remote.request(fed, "POST", "/_matrix/federation/v1/publicRooms", search)
        self.assertEqual(r.code, 200, r)
        self.assertEqual([e["room_id"] for e in r.json()["chunk"]], [public])

        r = fed.client("GET", "/publicRooms?limit=500")
        self.assertEqual(r.code, 200, r)
        self.assertIn(public, [e["room_id"] for e in r.json()["chunk"]])
        self.assertNotIn(private, [e["room_id"] for e in r.json()["chunk"]])
