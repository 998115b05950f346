"""Checking the ``X-Matrix`` Authorization of inbound requests (spec "Request Authentication")."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime

from fedlib.crypto.keys import split_key_id
from fedlib.crypto.request_auth import XMatrixAuth, parse_authorization, verify_request
from fedlib.errors import MatrixError, SignatureError
from fedlib.keyring import IKeyring

__all__ = ["authenticate_request", "is_valid_server_name"]

# Spec appendix "Server Name": a DNS name, IPv4 literal or bracketed IPv6
# literal, with an optional port. Checked before the name reaches the keyring so
# no garbage turns into an outbound lookup.
_SERVER_NAME_RE = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?$", re.ASCII
)


def is_valid_server_name(name: str) -> bool:
    return len(name) <= 255 + 6 and _SERVER_NAME_RE.fullmatch(name) is not None


def _unauthorized(msg: str) -> SignatureError:
    return SignatureError(msg, code=401, errcode="M_UNAUTHORIZED")


async def _check_one(
    keyring: IKeyring,
    our_name: str,
    auth: XMatrixAuth,
    method: str,
    uri: str,
    content: Any,
    now_ms: int,
) -> str:
    if auth.destination is not None and auth.destination != our_name:
        raise _unauthorized("Request is addressed to another server")
    if not is_valid_server_name(auth.origin):
        raise _unauthorized("Invalid origin server name")
    split_key_id(auth.key_id)
    try:
        keys = await keyring.get_verify_keys(auth.origin, [auth.key_id], now_ms)
    except SignatureError as e:
        raise _unauthorized(f"Unable to verify the request's key: {e.msg}") from None
    except MatrixError as e:
        raise _unauthorized(f"Unable to fetch {auth.origin}'s keys: {e.msg}") from None
    key = keys.get(auth.key_id) if isinstance(keys, dict) else None
    if key is None:
        raise _unauthorized(f"{auth.origin} does not publish key {auth.key_id}")
    verify_request(auth, method, uri, our_name, key, content)
    return auth.origin


async def authenticate_request(
    keyring: IKeyring,
    clock: IReactorTime,
    our_name: str,
    method: str,
    uri: str,
    headers: Sequence[bytes],
    content: Any,
) -> str:
    """The origin of a request carrying a valid ``X-Matrix`` signature.

    ``uri`` is the path and query exactly as received and ``content`` the parsed
    body (``None`` when there is none). Several Authorization headers may be
    present; the request is authentic when one of them verifies. Anything else
    is :class:`SignatureError` (401 ``M_UNAUTHORIZED``).
    """
    candidates: list[XMatrixAuth] = []
    for raw in headers[:8]:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            continue
        try:
            candidates.append(parse_authorization(text))
        except SignatureError:
            continue
    if not candidates:
        raise _unauthorized("Missing or malformed X-Matrix Authorization header")
    # A request normally has one header; several come from proxies or key
    # rotation. All must name the same origin or the request is ambiguous.
    if len({a.origin for a in candidates}) != 1:
        raise _unauthorized("Authorization headers name different origins")
    now_ms = int(clock.seconds() * 1000)
    last: SignatureError | None = None
    for auth in candidates:
        try:
            return await _check_one(keyring, our_name, auth, method, uri, content, now_ms)
        except SignatureError as e:
            last = _unauthorized(e.msg)
    assert last is not None
    raise last
