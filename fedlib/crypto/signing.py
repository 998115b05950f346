"""Signing and verifying JSON objects and events (spec: "Signing JSON", "Signing events").

Keys are PyNaCl ``SigningKey``/``VerifyKey`` objects carrying ``alg`` and ``version``
attributes, as :mod:`fedlib.crypto.keys` (and ``signedjson``) make them.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Mapping
from typing import Any

from nacl.exceptions import BadSignatureError
from unpaddedbase64 import decode_base64, encode_base64

from fedlib.canonical import encode_canonical_json
from fedlib.errors import SignatureError
from fedlib.events.hashing import content_hash_bytes
from fedlib.events.redaction import signable_redacted
from fedlib.events.room_versions import RoomVersion, get_room_version

__all__ = [
    "required_signers",
    "sign_event",
    "sign_json",
    "verify_event_signatures",
    "verify_json",
]

_NOT_SIGNED = frozenset(("signatures", "unsigned"))


def _signable_bytes(obj: Mapping[str, Any]) -> bytes:
    return encode_canonical_json({k: v for k, v in obj.items() if k not in _NOT_SIGNED})


def _key_id(key: Any) -> str:
    return f"{key.alg}:{key.version}"


def _with_signature(
    obj: Mapping[str, Any], server_name: str, kid: str, signature: bytes
) -> dict[str, Any]:
    signed = dict(obj)
    existing = obj.get("signatures")
    signatures = (
        {s: dict(v) for s, v in existing.items() if isinstance(v, dict)}
        if isinstance(existing, dict)
        else {}
    )
    signatures.setdefault(server_name, {})[kid] = encode_base64(signature)
    signed["signatures"] = signatures
    return signed


def sign_json(obj: Mapping[str, Any], server_name: str, key: Any) -> dict[str, Any]:
    """A copy of ``obj`` with ``key``'s signature added under ``signatures[server_name]``.

    The signature covers the canonical JSON of ``obj`` without ``signatures`` and
    ``unsigned``; existing signatures are kept.
    """
    signature = key.sign(_signable_bytes(obj)).signature
    return _with_signature(obj, server_name, _key_id(key), signature)


def _decode_signature(sig_b64: object, server_name: str, kid: str) -> bytes:
    if isinstance(sig_b64, str):
        try:
            signature = decode_base64(sig_b64)
        except (binascii.Error, ValueError):
            pass
        else:
            if len(signature) == 64:
                return signature
    raise SignatureError(f"Malformed signature for {server_name} with key {kid}")


def _check(message: bytes, signature: bytes, verify_key: Any, server_name: str, kid: str) -> None:
    try:
        verify_key.verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise SignatureError(f"Bad signature for {server_name} with key {kid}") from None


def verify_json(obj: Mapping[str, Any], server_name: str, verify_key: Any) -> None:
    """Raise :class:`SignatureError` unless ``obj`` carries a valid signature of
    ``server_name`` under ``verify_key``'s key ID (``alg:version``)."""
    verify_json_with_key_id(obj, server_name, _key_id(verify_key), verify_key)


def verify_json_with_key_id(
    obj: Mapping[str, Any], server_name: str, kid: str, verify_key: Any
) -> None:
    """:func:`verify_json` with the key ID given explicitly (for keys fetched by ID)."""
    signatures = obj.get("signatures")
    if not isinstance(signatures, dict):
        raise SignatureError("No signatures on object")
    server_sigs = signatures.get(server_name)
    if not isinstance(server_sigs, dict) or kid not in server_sigs:
        raise SignatureError(f"Missing signature for {server_name} with key {kid}")
    signature = _decode_signature(server_sigs[kid], server_name, kid)
    _check(_signable_bytes(obj), signature, verify_key, server_name, kid)


def sign_event(
    room_version: str, event: Mapping[str, Any], server_name: str, key: Any
) -> dict[str, Any]:
    """A copy of ``event`` with ``hashes.sha256`` set and ``server_name``'s signature added.

    The signature covers the redacted event (so it survives redaction); the content
    hash covers everything else. Other hash algorithms and existing signatures are
    kept.
    """
    version = get_room_version(room_version)
    hashed = dict(event)
    existing = event.get("hashes")
    hashes = dict(existing) if isinstance(existing, dict) else {}
    hashes["sha256"] = encode_base64(content_hash_bytes(event))
    hashed["hashes"] = hashes
    message = encode_canonical_json(signable_redacted(version, hashed))
    return _with_signature(hashed, server_name, _key_id(key), key.sign(message).signature)


def _server_of(identifier: object) -> str | None:
    # Lenient on purpose: this only routes to the server whose keys are needed; the
    # IDs themselves are validated by fedlib.events.validation.
    if not isinstance(identifier, str):
        return None
    _, sep, server = identifier.partition(":")
    return server if sep and server else None


def required_signers(version: RoomVersion, event: Mapping[str, Any]) -> set[str]:
    """The servers whose signatures an event must carry (spec "Validating hashes and
    signatures on received events").

    The sender's server, except for an invite made through a third-party invite (which
    any server may send: the invite's own signed token is checked by the auth
    rules); in v1/v2 also the event ID's server; for a v8+ join carrying
    ``join_authorised_via_users_server`` also that user's server.
    """
    signers: set[str] = set()
    content = event.get("content")
    if not isinstance(content, dict):
        content = {}
    is_member = event.get("type") == "m.room.member"
    membership = content.get("membership") if is_member else None
    if not (membership == "invite" and "third_party_invite" in content):
        sender_server = _server_of(event.get("sender"))
        if sender_server is None:
            raise SignatureError("Event has no valid sender")
        signers.add(sender_server)
    if version.event_id_in_event:
        event_id_server = _server_of(event.get("event_id"))
        if event_id_server is not None:
            signers.add(event_id_server)
    if (
        version.restricted_join_rule
        and membership == "join"
        and "join_authorised_via_users_server" in content
    ):
        authoriser_server = _server_of(content["join_authorised_via_users_server"])
        if authoriser_server is None:
            raise SignatureError("Malformed join_authorised_via_users_server")
        signers.add(authoriser_server)
    return signers


def verify_event_signatures(
    room_version: str,
    event: Mapping[str, Any],
    verify_keys: Mapping[str, Mapping[str, Any]],
    message: bytes | None = None,
) -> None:
    """Check the signatures of every server that must sign ``event`` (over its redacted form).

    ``verify_keys`` maps server name to ``{key_id: verify_key}``: the keys of that
    server usable for this event (a caller enforcing v5+ key validity passes only
    keys valid at the event's ``origin_server_ts``). Signatures under key IDs not
    given are skipped, as the spec says; every signature under a given key must
    verify, and each required server needs at least one. Raises
    :class:`SignatureError` naming the first server that fails.

    This does not check the content hash: see
    :func:`fedlib.events.hashing.check_content_hash`.

    ``message``, when given, must be the canonical JSON of
    ``signable_redacted(version, event)`` (a caller that already encoded it for
    the event ID saves encoding it again).
    """
    version = get_room_version(room_version)
    signatures = event.get("signatures")
    if not isinstance(signatures, dict):
        raise SignatureError("Event has no signatures")
    signers = required_signers(version, event)
    servers = sorted(signers) if len(signers) > 1 else signers
    verify_signers(version, event, signatures, servers, verify_keys, message)


def verify_signers(
    version: RoomVersion,
    event: Mapping[str, Any],
    signatures: Mapping[str, Any],
    servers: Iterable[str],
    verify_keys: Mapping[str, Mapping[str, Any]],
    message: bytes | None = None,
) -> None:
    """:func:`verify_event_signatures` once ``event``'s ``signatures`` member (a dict)
    and its required signers (``servers``, sorted) are known: for a caller that
    has them already. ``message`` as there."""
    for server in servers:
        server_sigs = signatures.get(server)
        if not isinstance(server_sigs, dict) or not server_sigs:
            raise SignatureError(f"Event is not signed by {server}")
        keys = verify_keys.get(server) or {}
        verified = False
        for kid, sig_b64 in server_sigs.items():
            verify_key = keys.get(kid)
            if verify_key is None:
                continue
            signature = _decode_signature(sig_b64, server, kid)
            if message is None:
                message = encode_canonical_json(signable_redacted(version, event))
            _check(message, signature, verify_key, server, kid)
            verified = True
        if not verified:
            raise SignatureError(
                f"No known key of {server} for its signature(s) {sorted(server_sigs)}"
            )
