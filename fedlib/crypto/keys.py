"""ed25519 signing keys: generate, load and save in Synapse's key-file format.

The file format is one key per line, ``ed25519 <key_version> <unpadded base64 seed>``,
so an existing homeserver's ``signing.key`` works unchanged. The heavy lifting is
``signedjson.key``; this module fixes the names fedlib exposes and turns its
failures into :class:`~fedlib.errors.SignatureError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import signedjson.key as _sk
from nacl.signing import SigningKey, VerifyKey

from fedlib.errors import SignatureError

__all__ = [
    "SigningKey",
    "VerifyKey",
    "decode_signing_key_base64",
    "decode_verify_key_base64",
    "encode_verify_key_base64",
    "generate_signing_key",
    "get_verify_key",
    "key_id",
    "load_signing_keys",
    "read_signing_keys",
    "save_signing_keys",
]

_KEY_VERSION_RE = re.compile(r"^[a-zA-Z0-9_]+$")


def generate_signing_key(version: str = "a_fedl") -> Any:
    """A new random ed25519 signing key carrying ``alg`` and ``version`` attributes."""
    if not _KEY_VERSION_RE.match(version):
        raise ValueError(f"Key version must match [a-zA-Z0-9_]+: {version!r}")
    return _sk.generate_signing_key(version)


def decode_signing_key_base64(algorithm: str, version: str, seed_b64: str) -> Any:
    """A signing key from its algorithm, version and unpadded base64 seed."""
    if algorithm != "ed25519":
        raise SignatureError(f"Unsupported signing algorithm {algorithm!r}")
    try:
        return _sk.decode_signing_key_base64(algorithm, version, seed_b64)
    except Exception as e:
        raise SignatureError(f"Invalid signing key: {e}") from None


def get_verify_key(signing_key: Any) -> Any:
    """The verify (public) key of ``signing_key``, with the same ``alg``/``version``."""
    return _sk.get_verify_key(signing_key)


def decode_verify_key_base64(algorithm: str, version: str, key_b64: str) -> Any:
    """A verify key from its algorithm, version and unpadded base64 bytes."""
    if algorithm != "ed25519":
        raise SignatureError(f"Unsupported key algorithm {algorithm!r}")
    try:
        return _sk.decode_verify_key_base64(algorithm, version, key_b64)
    except Exception as e:
        raise SignatureError(f"Invalid verify key: {e}") from None


def encode_verify_key_base64(verify_key: Any) -> str:
    return _sk.encode_verify_key_base64(verify_key)


def encode_signing_key_base64(signing_key: Any) -> str:
    return _sk.encode_signing_key_base64(signing_key)


def key_id(key: Any) -> str:
    """``"<alg>:<version>"``, e.g. ``ed25519:a_fedl``."""
    return f"{key.alg}:{key.version}"


def split_key_id(kid: str) -> tuple[str, str]:
    """Split ``ed25519:abc`` into ``("ed25519", "abc")``; :class:`SignatureError` if malformed."""
    alg, sep, version = kid.partition(":")
    if not sep or not alg or not version or not _KEY_VERSION_RE.match(version):
        raise SignatureError(f"Malformed key ID {kid!r}")
    return alg, version


def read_signing_keys(lines: Iterable[str]) -> list[Any]:
    """Parse key-file lines; blank lines are skipped, a malformed line is an error."""
    keys = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise SignatureError(f"Key file line {number}: expected '<alg> <version> <seed>'")
        keys.append(decode_signing_key_base64(*parts))
    return keys


def load_signing_keys(path: str | os.PathLike[str]) -> list[Any]:
    """Read every key in a Synapse-format key file (the first is the one to sign with)."""
    keys = read_signing_keys(Path(path).read_text(encoding="ascii").splitlines())
    if not keys:
        raise SignatureError(f"No signing key in {os.fspath(path)}")
    return keys


def save_signing_keys(path: str | os.PathLike[str], keys: Iterable[Any]) -> None:
    """Write keys in Synapse's format, readable by the owner only, atomically."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    text = "".join(f"{k.alg} {k.version} {encode_signing_key_base64(k)}\n" for k in keys)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def load_or_create_signing_key(path: str | os.PathLike[str]) -> Any:
    """The first key of ``path``, creating the file with a new key when it does not exist."""
    if not Path(path).exists():
        save_signing_keys(path, [generate_signing_key()])
    return load_signing_keys(path)[0]
