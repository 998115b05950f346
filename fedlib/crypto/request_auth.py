"""The ``Authorization: X-Matrix ...`` header (spec "Request Authentication")."""

from __future__ import annotations

import re
from typing import Any

import attrs

from fedlib.crypto.signing import sign_json, verify_json
from fedlib.errors import SignatureError

_PARAM_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s"]*)\s*(?:,|$)')


@attrs.frozen(slots=True)
class XMatrixAuth:
    origin: str
    key_id: str
    signature: str
    destination: str | None = None


def _quote(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9._:~+/=\[\]-]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def request_json(
    method: str, uri: str, origin: str, destination: str, content: Any = None
) -> dict[str, Any]:
    """The JSON object a request signature covers."""
    obj: dict[str, Any] = {
        "method": method,
        "uri": uri,
        "origin": origin,
        "destination": destination,
    }
    if content is not None:
        obj["content"] = content
    return obj


def sign_request(
    method: str,
    uri: str,
    origin: str,
    destination: str,
    key: Any,
    content: Any = None,
) -> str:
    """The ``Authorization`` header value for a request from ``origin`` to ``destination``.

    ``uri`` is the path and query string exactly as sent (e.g. ``/_matrix/federation/v1/...``).
    """
    signed = sign_json(request_json(method, uri, origin, destination, content), origin, key)
    kid = f"{key.alg}:{key.version}"
    sig = signed["signatures"][origin][kid]
    return (
        f"X-Matrix origin={_quote(origin)},destination={_quote(destination)},"
        f'key="{kid}",sig="{sig}"'
    )


def parse_authorization(header: str) -> XMatrixAuth:
    """Parse an ``X-Matrix`` header value; :class:`SignatureError` (401) if it is malformed."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "x-matrix":
        raise SignatureError("Authorization scheme is not X-Matrix")
    values: dict[str, str] = {}
    pos = 0
    params = params.strip()
    while pos < len(params):
        m = _PARAM_RE.match(params, pos)
        if m is None or m.end() == pos:
            raise SignatureError("Malformed X-Matrix Authorization header")
        name, raw = m.group(1).lower(), m.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        values.setdefault(name, raw)
        pos = m.end()
    try:
        origin, kid, sig = values["origin"], values["key"], values["sig"]
    except KeyError as e:
        raise SignatureError(f"X-Matrix Authorization header lacks {e.args[0]}") from None
    if not origin or not kid or not sig:
        raise SignatureError("X-Matrix Authorization header has an empty field")
    return XMatrixAuth(
        origin=origin, key_id=kid, signature=sig, destination=values.get("destination")
    )


def verify_request(
    auth: XMatrixAuth,
    method: str,
    uri: str,
    destination: str,
    verify_key: Any,
    content: Any = None,
) -> None:
    """Check the header's signature over the request; :class:`SignatureError` if it fails.

    ``destination`` is our own server name (the caller has already rejected a header
    naming another destination).
    """
    obj = request_json(method, uri, auth.origin, destination, content)
    obj["signatures"] = {auth.origin: {auth.key_id: auth.signature}}
    verify_json(obj, auth.origin, _with_key_id(verify_key, auth.key_id))


class _KeyIdView:
    """A verify key presented under the key ID the request names."""

    __slots__ = ("_key", "alg", "version")

    def __init__(self, key: Any, kid: str) -> None:
        self._key = key
        self.alg, _, self.version = kid.partition(":")

    def verify(self, message: bytes, signature: bytes) -> Any:
        return self._key.verify(message, signature)


def _with_key_id(key: Any, kid: str) -> Any:
    return _KeyIdView(key, kid)
