"""Signing and verifying JSON objects and events (spec: "Signing JSON", "Signing events")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nacl.exceptions import BadSignatureError
from unpaddedbase64 import decode_base64, encode_base64

from fedlib.canonical import encode_canonical_json
from fedlib.errors import SignatureError
from fedlib.events.hashing import _content_hash_bytes
from fedlib.events.redaction import redact_with
from fedlib.events.room_versions import RoomVersion, get_room_version


def _signable_bytes(obj: Mapping[str, Any]) -> bytes:
    return encode_canonical_json(
        {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    )


def _key_id(key: Any) -> str:
    return f"{key.alg}:{key.version}"


def sign_json(obj: Mapping[str, Any], server_name: str, key: Any) -> dict[str, Any]:
    """A copy of ``obj`` with ``key``'s signature added under ``signatures[server_name]``."""
    signature = key.sign(_signable_bytes(obj)).signature
    signed = dict(obj)
    signatures = {s: dict(v) for s, v in obj.get("signatures", {}).items()}
    signatures.setdefault(server_name, {})[_key_id(key)] = encode_base64(signature)
    signed["signatures"] = signatures
    return signed


def _verify_signature(
    message: bytes,
    obj: Mapping[str, Any],
    server_name: str,
    verify_key: Any,
    kid: str | None = None,
) -> None:
    if kid is None:
        kid = _key_id(verify_key)
    signatures = obj.get("signatures")
    if not isinstance(signatures, dict):
        raise SignatureError("No signatures on object")
    server_sigs = signatures.get(server_name)
    if not isinstance(server_sigs, dict) or kid not in server_sigs:
        raise SignatureError(f"Missing signature for {server_name} with key {kid}")
    sig_b64 = server_sigs[kid]
    try:
        if not isinstance(sig_b64, str):
            raise ValueError("signature is not a string")
        signature = decode_base64(sig_b64)
    except Exception:
        raise SignatureError(f"Malformed signature for {server_name} with key {kid}") from None
    try:
        verify_key.verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise SignatureError(f"Bad signature for {server_name} with key {kid}") from None


def verify_json(obj: Mapping[str, Any], server_name: str, verify_key: Any) -> None:
    """Raise :class:`SignatureError` unless ``obj`` carries a valid signature of
    ``server_name`` by ``verify_key``."""
    _verify_signature(_signable_bytes(obj), obj, server_name, verify_key)


def sign_event(
    room_version: str, event: Mapping[str, Any], server_name: str, key: Any
) -> dict[str, Any]:
    """A copy of ``event`` with its content hash set and ``server_name``'s signature added.

    The signature covers the redacted event, so it survives redaction.
    """
    version = get_room_version(room_version)
    hashed = dict(event)
    hashed["hashes"] = {"sha256": encode_base64(_content_hash_bytes(hashed))}
    redacted = redact_with(version, hashed)
    signature = key.sign(_signable_bytes(redacted)).signature
    signatures = {s: dict(v) for s, v in event.get("signatures", {}).items()}
    signatures.setdefault(server_name, {})[_key_id(key)] = encode_base64(signature)
    hashed["signatures"] = signatures
    return hashed


def _server_of(user_id: object) -> str | None:
    if not isinstance(user_id, str):
        return None
    _, sep, server = user_id.partition(":")
    return server if sep and server else None


def required_signers(version: RoomVersion, event: Mapping[str, Any]) -> set[str]:
    """The servers whose signatures an event must carry (spec "Validating hashes and signatures").

    The sender's server; in v1/v2 also the event ID's server; for a v8+ restricted
    join also the server of ``join_authorised_via_users_server``. (The invitee's
    server for third-party-less invites is checked by the invite handler, which
    knows whether it is receiving or sending.)
    """
    signers: set[str] = set()
    sender_server = _server_of(event.get("sender"))
    if sender_server is None:
        raise SignatureError("Event has no valid sender")
    signers.add(sender_server)
    if version.event_id_in_event:
        event_id_server = _server_of(event.get("event_id"))
        if event_id_server is not None:
            signers.add(event_id_server)
    if version.restricted_join_rule and event.get("type") == "m.room.member":
        content = event.get("content")
        if isinstance(content, dict) and content.get("membership") == "join":
            authoriser = _server_of(content.get("join_authorised_via_users_server"))
            if authoriser is not None:
                signers.add(authoriser)
    return signers


def verify_event_signatures(
    room_version: str,
    event: Mapping[str, Any],
    verify_keys: Mapping[str, Mapping[str, Any]],
) -> None:
    """Check that every required server signed ``event`` (over its redacted form).

    ``verify_keys`` maps server name to ``{key_id: verify_key}``: the keys of that
    server usable for this event (a caller enforcing v5+ key validity passes only
    keys valid at the event's ``origin_server_ts``). For each required server, at
    least one of its signatures must verify with a key given for it.
    """
    version = get_room_version(room_version)
    redacted = redact_with(version, dict(event))
    message = _signable_bytes(redacted)
    signatures = event.get("signatures")
    if not isinstance(signatures, dict):
        raise SignatureError("Event has no signatures")
    for server in sorted(required_signers(version, event)):
        server_sigs = signatures.get(server)
        if not isinstance(server_sigs, dict) or not server_sigs:
            raise SignatureError(f"Event is not signed by {server}")
        keys = verify_keys.get(server, {})
        usable = [kid for kid in server_sigs if kid in keys]
        if not usable:
            raise SignatureError(
                f"No known key of {server} for its signature(s) {sorted(server_sigs)}"
            )
        last: SignatureError | None = None
        for kid in usable:
            try:
                _verify_signature(message, redacted, server, keys[kid], kid)
                last = None
                break
            except SignatureError as e:
                last = e
        if last is not None:
            raise last
