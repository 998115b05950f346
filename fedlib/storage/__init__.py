"""Pluggable storage: :class:`IFederationStore` and its implementations."""

from __future__ import annotations

from fedlib.storage.factory import open_store
from fedlib.storage.interface import (
    DestinationRetry,
    EventStatus,
    IFederationStore,
    OutboundBatch,
    OwnKey,
    PersistItem,
    QueuedEdu,
    QueuedPdu,
    RoomInfo,
    SchemaTooNewError,
    ServerKey,
    StateKey,
    StateMap,
    StateRef,
    StorageError,
    StoredEvent,
    StrippedKind,
    StrippedRoom,
    TxnClaim,
    TxnClaimStatus,
)
from fedlib.storage.memory import MemoryStore

__all__ = [
    "DestinationRetry",
    "EventStatus",
    "IFederationStore",
    "MemoryStore",
    "OutboundBatch",
    "OwnKey",
    "PersistItem",
    "QueuedEdu",
    "QueuedPdu",
    "RoomInfo",
    "SchemaTooNewError",
    "ServerKey",
    "StateKey",
    "StateMap",
    "StateRef",
    "StorageError",
    "StoredEvent",
    "StrippedKind",
    "StrippedRoom",
    "TxnClaim",
    "TxnClaimStatus",
    "open_store",
]
