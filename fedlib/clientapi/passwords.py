"""Password hashing with bcrypt, always off the reactor thread.

bcrypt looks at no more than 72 bytes (and bcrypt 5 refuses longer input), so
the password is first reduced to ``base64(sha256(password))`` (44 bytes): long
passphrases keep all their entropy and never fail. Stored hashes carry a
``fedlib-bcrypt-sha256$`` prefix so that another scheme can be added later.
"""

from __future__ import annotations

import base64
import hashlib

import bcrypt
from twisted.internet import defer, threads

__all__ = ["DEFAULT_ROUNDS", "PasswordHasher"]

_PREFIX = "fedlib-bcrypt-sha256$"
#: bcrypt's work factor: a few tenths of a second per hash on a small machine.
DEFAULT_ROUNDS = 12


def _prehash(password: str) -> bytes:
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


class PasswordHasher:
    """Hashes and checks passwords; the ``*_sync`` methods block (threads only)."""

    def __init__(self, rounds: int = DEFAULT_ROUNDS) -> None:
        self.rounds = rounds
        self._dummy: bytes | None = None

    def hash_sync(self, password: str) -> str:
        hashed = bcrypt.hashpw(_prehash(password), bcrypt.gensalt(self.rounds))
        return _PREFIX + hashed.decode("ascii")

    def check_sync(self, password: str, stored: str | None) -> bool:
        """Whether ``password`` matches ``stored``. Without a usable ``stored`` a
        dummy hash is still checked, so that unknown users answer as slowly as
        known ones (no user enumeration by timing)."""
        usable = stored is not None and stored.startswith(_PREFIX)
        if stored is not None and usable:
            target = stored[len(_PREFIX) :].encode("ascii")
        else:
            if self._dummy is None:
                self._dummy = bcrypt.hashpw(b"-", bcrypt.gensalt(self.rounds))
            target = self._dummy
        try:
            ok = bcrypt.checkpw(_prehash(password), target)
        except ValueError:
            return False
        return ok and usable

    def hash(self, password: str) -> defer.Deferred[str]:
        """Deferred[str]: the stored form of ``password``, computed in a thread."""
        return threads.deferToThread(self.hash_sync, password)

    def check(self, password: str, stored: str | None) -> defer.Deferred[bool]:
        """Deferred[bool], computed in a thread."""
        return threads.deferToThread(self.check_sync, password, stored)
