"""The ``Authorization: X-Matrix ...`` header (spec "Request Authentication").

Syntax (RFC 9110 section 11.4): the scheme ``X-Matrix`` (any case), one or more
spaces, then comma-separated ``name=value`` parameters. Names are
case-insensitive; values are tokens or quoted strings with backslash escapes;
spaces and tabs around commas are allowed; colons are accepted in unquoted values
for older servers; unknown parameters are ignored. We send every value quoted and
the names in lower case, with no spaces, as the spec asks of senders.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from fedlib.crypto.signing import sign_json, verify_json_with_key_id
from fedlib.errors import SignatureError
from fedlib.ids import is_valid_server_name

__all__ = [
    "XMatrixAuth",
    "parse_authorization",
    "request_json",
    "sign_request",
    "verify_request",
]

# One parameter: name, "=", a quoted string or an unquoted value (a token, plus the
# colons older servers leave unquoted), then optional whitespace and a comma or the end.
_PARAM_RE = re.compile(
    r'[ \t]*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^,\s"]*)[ \t]*(?:,|\Z)',
    re.DOTALL,
)
_EMPTY_ELEMENTS_RE = re.compile(r"[ \t,]*")
_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


@attrs.frozen(slots=True)
class XMatrixAuth:
    """The parameters of an ``X-Matrix`` Authorization header."""

    origin: str
    key_id: str
    signature: str
    #: ``None`` when the sender left it out (allowed for older servers).
    destination: str | None = None


def _quote(value: str) -> str:
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

    ``uri`` is the path and query string exactly as sent (e.g.
    ``/_matrix/federation/v1/...``); ``content`` the JSON body, if any.
    """
    signed = sign_json(request_json(method, uri, origin, destination, content), origin, key)
    kid = f"{key.alg}:{key.version}"
    sig = signed["signatures"][origin][kid]
    return (
        f"X-Matrix origin={_quote(origin)},destination={_quote(destination)},"
        f"key={_quote(kid)},sig={_quote(sig)}"
    )


def parse_authorization(header: str | bytes) -> XMatrixAuth:
    """Parse an ``Authorization`` header value; :class:`SignatureError` (401) if it is
    not a well-formed ``X-Matrix`` header with ``origin``, ``key`` and ``sig``."""
    if isinstance(header, bytes):
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("Authorization header is not ASCII") from None
    if not isinstance(header, str):
        raise SignatureError("Authorization header is not a string")
    scheme, sep, params = header.strip(" \t").partition(" ")
    if scheme.lower() != "x-matrix" or not sep:
        raise SignatureError("Authorization scheme is not X-Matrix")
    values: dict[str, str] = {}
    params = params.strip(" \t")
    pos = 0
    while True:
        # RFC 9110 list rules: recipients accept empty list elements ("a=1, ,b=2").
        pos = _EMPTY_ELEMENTS_RE.match(params, pos).end()  # type: ignore[union-attr]
        if pos >= len(params):
            break
        m = _PARAM_RE.match(params, pos)
        if m is None or m.end() == pos:
            raise SignatureError("Malformed X-Matrix Authorization header")
        name, raw = m.group(1).lower(), m.group(2)
        if raw.startswith('"'):
            raw = _UNESCAPE_RE.sub(r"\1", raw[1:-1])
        # A repeated parameter is ambiguous: refuse rather than guess which one counts.
        if name in values:
            raise SignatureError(f"X-Matrix Authorization header repeats {name}")
        values[name] = raw
        pos = m.end()
    for required in ("origin", "key", "sig"):
        if not values.get(required):
            raise SignatureError(f"X-Matrix Authorization header lacks {required}")
    origin = values["origin"]
    if not is_valid_server_name(origin):
        raise SignatureError("X-Matrix Authorization header has an invalid origin")
    destination = values.get("destination")
    if destination is not None and not is_valid_server_name(destination):
        raise SignatureError("X-Matrix Authorization header has an invalid destination")
    return XMatrixAuth(
        origin=origin, key_id=values["key"], signature=values["sig"], destination=destination
    )


def verify_request(
    auth: XMatrixAuth,
    method: str,
    uri: str,
    destination: str,
    verify_key: Any,
    content: Any = None,
) -> None:
    """Check the header's signature over the request; :class:`SignatureError` (401) if
    it fails or if the header names a destination other than ``destination`` (our
    own server name).

    ``verify_key`` is the origin's key for ``auth.key_id``.
    """
    if auth.destination is not None and auth.destination != destination:
        raise SignatureError(f"Request is for {auth.destination}, not {destination}")
    obj = request_json(method, uri, auth.origin, destination, content)
    obj["signatures"] = {auth.origin: {auth.key_id: auth.signature}}
    verify_json_with_key_id(obj, auth.origin, auth.key_id, verify_key)
