"""Fakes shared by the handshake, gap-filling, sender and PDU-verification tests."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer

from fedlib.crypto.keys import generate_signing_key, get_verify_key, key_id
from fedlib.crypto.signing import (
    required_signers,
    sign_event,
    verify_event_signatures,
    verify_json,
)
from fedlib.errors import SignatureError
from fedlib.events.hashing import compute_event_id
from fedlib.events.room_versions import get_room_version


class Server:
    """A named server with a signing key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = generate_signing_key("k1")

    def sign(self, room_version: str, event: Mapping[str, Any]) -> dict[str, Any]:
        return sign_event(room_version, event, self.name, self.key)


class FakeKeyring:
    """IKeyring over a fixed set of servers' keys."""

    def __init__(self, *servers: Server) -> None:
        self.keys = {s.name: {key_id(s.key): get_verify_key(s.key)} for s in servers}
        self.calls = 0

    def add(self, server: Server) -> None:
        self.keys[server.name] = {key_id(server.key): get_verify_key(server.key)}

    def verify_event(self, room_version: str, event: Mapping[str, Any]) -> defer.Deferred[None]:
        self.calls += 1
        try:
            version = get_room_version(room_version)
            needed = required_signers(version, event)
            verify_event_signatures(room_version, event, {s: self.keys.get(s, {}) for s in needed})
        except SignatureError:
            return defer.fail()
        return defer.succeed(None)

    def verify_json_for_server(self, server_name: str, obj: Any, valid_at_ts: Any = None) -> Any:
        keys = self.keys.get(server_name, {})
        sigs = obj.get("signatures", {}).get(server_name, {})
        for kid, key in keys.items():
            if kid in sigs:
                try:
                    verify_json(obj, server_name, key)
                except SignatureError:
                    return defer.fail()
                return defer.succeed(None)
        return defer.fail(SignatureError(f"No known signature of {server_name}"))

    def get_verify_keys(self, server_name: str, key_ids: Any, valid_at_ts: Any = None) -> Any:
        raise NotImplementedError


_counter = itertools.count(1)

#: A well-formed room ID for room versions whose room IDs are create-event hashes.
V12_ROOM = "!" + "A" * 43


def make_event(
    room_version: str,
    server: Server,
    *,
    type: str,
    sender: str,
    room_id: str | None = None,
    content: dict[str, Any] | None = None,
    state_key: str | None = None,
    prev_events: list[str] | None = None,
    auth_events: list[str] | None = None,
    depth: int = 1,
    ts: int = 1_000_000,
    **extra: Any,
) -> tuple[str, dict[str, Any]]:
    """A signed event of ``server`` and its ID."""
    version = get_room_version(room_version)
    if room_id is None:
        room_id = V12_ROOM if version.room_id_is_create_hash else "!room:hs1"
    event: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "room_id": room_id,
        "content": content or {},
        "depth": depth,
        "origin_server_ts": ts,
        "prev_events": list(prev_events or []),
        "auth_events": list(auth_events or []),
        "origin": server.name,
    }
    if version.event_id_in_event:
        event["event_id"] = f"$e{next(_counter)}:{server.name}"
        event["prev_events"] = [[e, {}] for e in event["prev_events"]]
        event["auth_events"] = [[e, {}] for e in event["auth_events"]]
    if state_key is not None:
        event["state_key"] = state_key
    event.update(extra)
    signed = server.sign(room_version, event)
    return compute_event_id(room_version, signed), signed
