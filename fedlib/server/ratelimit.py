"""Per-origin rate limiting of inbound federation requests.

A token bucket per remote server: ``rate`` requests per second on average with
bursts of up to ``burst``. Buckets of quiet servers are forgotten so that the
table stays bounded however many origins write to us.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import attrs
from twisted.internet.interfaces import IReactorTime

from fedlib.errors import MatrixError

__all__ = ["LimitExceededError", "RateLimiter"]


class LimitExceededError(MatrixError):
    """429 ``M_LIMIT_EXCEEDED`` with ``retry_after_ms``."""

    def __init__(self, retry_after_ms: int, msg: str = "Too many requests") -> None:
        super().__init__(429, "M_LIMIT_EXCEEDED", msg, retry_after_ms=retry_after_ms)
        self.retry_after_ms = retry_after_ms


@attrs.define(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by origin server name."""

    def __init__(
        self, clock: IReactorTime, rate: float, burst: int, max_tracked: int = 100_000
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._clock = clock
        self._rate = rate
        self._burst = float(burst)
        self._max_tracked = max_tracked
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check(self, key: str) -> None:
        """Take one token for ``key`` or raise :class:`LimitExceededError`."""
        now = self._clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self._burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_tracked:
                # The oldest-touched bucket is the one most likely to be full again.
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self._rate
            raise LimitExceededError(max(1, math.ceil(wait * 1000)))
        bucket.tokens -= 1.0
