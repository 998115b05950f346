"""A token bucket per key (client address), answering ``429 M_LIMIT_EXCEEDED``."""

from __future__ import annotations

from typing import Any

from fedlib.errors import MatrixError

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allows ``burst`` recorded actions per key, refilled at ``rate`` per second.

    :meth:`check` refuses once the bucket is empty; :meth:`record` spends one
    token. Login and registration spend on failures and accounts made, so that
    guessing passwords or mass-registering is slowed, not ordinary use.
    """

    def __init__(self, clock: Any, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def _level(self, key: str) -> float:
        now = float(self.clock.seconds())
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def check(self, key: str) -> None:
        level = self._level(key)
        if level < 1:
            wait_ms = int((1 - level) / self.rate * 1000) + 1
            raise MatrixError(429, "M_LIMIT_EXCEEDED", "Too many requests", retry_after_ms=wait_ms)

    def record(self, key: str) -> None:
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            # Forget full buckets first; they carry no information.
            now = self.clock.seconds()
            self._buckets = {
                k: v
                for k, v in self._buckets.items()
                if v[0] + (now - v[1]) * self.rate < self.burst
            }
        self._buckets[key] = (self._level(key) - 1, self.clock.seconds())
