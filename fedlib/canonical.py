"""Canonical JSON out, strict JSON in.

Encoding uses the ``canonicaljson`` package (the spec appendix "Canonical JSON").
That package is lenient about what it accepts, so the strictness of
:func:`decode_json` is ours: it is the one parser for everything that comes off
the network.
"""

from __future__ import annotations

import json
import json.encoder
import math
from typing import Any

import canonicaljson

from fedlib.errors import BadJsonError
from fedlib.events.room_versions import KNOWN_ROOM_VERSIONS

#: The integer range of canonical JSON (the range IEEE doubles hold exactly).
MIN_INT = -(2**53) + 1
MAX_INT = (2**53) - 1

#: Deepest nesting of objects and arrays accepted from the network.
MAX_DEPTH = 64


# canonicaljson's encoder is a json.JSONEncoder with these settings, whose
# ``encode`` builds a fresh C encoder and a cycle-check dict on every call. Hashing
# and signing encode every event two or three times, so we keep one C encoder with
# identical settings (and canonicaljson's hook for extra types) and no cycle check:
# a cyclic value still fails, with RecursionError. The output is byte-identical to
# canonicaljson.encode_canonical_json (a property test holds us to it).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode_basestring = getattr(json.encoder, "c_encode_basestring", None)
_iterencode: Any = None
if _c_make_encoder is not None and _c_encode_basestring is not None:
    _iterencode = _c_make_encoder(
        None,  # markers: no cycle check
        canonicaljson._preprocess_for_serialisation,
        _c_encode_basestring,  # ensure_ascii=False
        None,  # indent
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )


def encode_canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON (sorted keys, no insignificant whitespace, UTF-8).

    Raises ``ValueError`` for NaN/Infinity, ``TypeError`` for values JSON cannot
    represent, ``UnicodeEncodeError`` for strings with lone surrogates (none of which
    :func:`decode_json` lets in).
    """
    if _iterencode is None:
        return canonicaljson.encode_canonical_json(obj)
    return "".join(_iterencode(obj, 0)).encode("utf-8")


def _parse_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # more digits than Python converts
        raise BadJsonError(f"Integer out of range: {text[:20]}...") from None
    if not MIN_INT <= value <= MAX_INT:
        raise BadJsonError(f"Integer out of range: {value}")
    return value


def _parse_any_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts
        raise BadJsonError(f"Integer too long: {text[:20]}...") from None


def _reject_constant(name: str) -> Any:
    raise BadJsonError(f"{name} is not valid JSON")


def _reject_float(text: str) -> Any:
    raise BadJsonError(f"Floats are not allowed in this room version: {text}")


def _lenient_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadJsonError(f"Number out of range: {text[:20]}")
    return value


_STRICT_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_constant=_reject_constant, parse_float=_reject_float
)
_LENIENT_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_constant=_reject_constant, parse_float=_lenient_float
)
# Without the integer-range rule: for bodies whose parts are checked one by one.
_STRICT_DECODER_ANY_INT = json.JSONDecoder(
    parse_int=_parse_any_int, parse_constant=_reject_constant, parse_float=_reject_float
)
_LENIENT_DECODER_ANY_INT = json.JSONDecoder(
    parse_int=_parse_any_int, parse_constant=_reject_constant, parse_float=_lenient_float
)


def _depth_exceeds(value: Any, limit: int) -> bool:
    if not isinstance(value, dict | list):
        return False
    # Only containers go on the stack: a send_join answer holds far more leaves.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def decode_json(
    data: bytes | str,
    *,
    room_version: str | None = None,
    max_depth: int = MAX_DEPTH,
    strict_ints: bool = True,
) -> Any:
    """Parse JSON from the network, strictly.

    Rejects, with :class:`~fedlib.errors.BadJsonError` (``M_NOT_JSON`` when the
    bytes are not JSON at all, ``M_BAD_JSON`` when they are JSON fedlib refuses):
    invalid UTF-8, ``NaN``/``Infinity``, integers outside the canonical range,
    lone UTF-16 surrogates, nesting deeper than ``max_depth``, and floats when
    ``room_version`` names a version that requires strict canonical JSON (v6+).

    With ``strict_ints=False`` integers of any size are accepted (up to Python's
    digit limit for int conversion, beyond which the error is ``M_BAD_JSON``):
    for bodies such as a transaction whose parts are checked separately.
    """
    strict_floats = False
    if room_version is not None:
        version = KNOWN_ROOM_VERSIONS.get(room_version)
        strict_floats = version is not None and version.strict_canonical_json
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise BadJsonError("Content is not valid UTF-8", errcode="M_NOT_JSON") from None
    else:
        text = data
        # A str may already hold lone surrogates that no UTF-8 input could.
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise BadJsonError("JSON contains a lone UTF-16 surrogate") from None
    if strict_ints:
        decoder = _STRICT_DECODER if strict_floats else _LENIENT_DECODER
    else:
        decoder = _STRICT_DECODER_ANY_INT if strict_floats else _LENIENT_DECODER_ANY_INT
    try:
        value = decoder.decode(text)
    except BadJsonError:
        raise
    except RecursionError:
        raise BadJsonError("JSON is nested too deeply") from None
    except (ValueError, TypeError) as e:
        raise BadJsonError(f"Content is not JSON: {e}", errcode="M_NOT_JSON") from None
    # Counting brackets is cheap; only walk the value when it could be too deep.
    if text.count("[") + text.count("{") > max_depth and _depth_exceeds(value, max_depth):
        raise BadJsonError(f"JSON is nested deeper than {max_depth}")
    if ("\\ud" in text or "\\uD" in text) and _has_lone_surrogate(value):
        raise BadJsonError("JSON contains a lone UTF-16 surrogate")
    return value
