"""The storage suite against MemoryStore."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from fedlib.storage import MemoryStore
from tests.storage_suite import FakeClock, StoreTestsMixin


class MemoryStoreTests(StoreTestsMixin, unittest.TestCase):
    def make_store(self, clock: FakeClock) -> defer.Deferred[Any]:
        return defer.succeed(MemoryStore(clock=clock))
