"""The storage interface the server, client and sender depend on.

Handlers never touch a database: they call :class:`IFederationStore`. Every method
returns a :class:`twisted.internet.defer.Deferred` (never a coroutine) so that
implementations may answer synchronously (``defer.succeed``) or from a thread pool.
Arguments and results are plain dicts, strings and the frozen records below; a
store never mutates what it is given and callers must not mutate what they get.

State is exchanged as :data:`StateMap`: ``{(event_type, state_key): event_id}``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from zope.interface import Interface

#: ``(event_type, state_key) -> event_id``
StateKey = tuple[str, str]
StateMap = Mapping[StateKey, str]


class StorageError(Exception):
    """A store cannot do what was asked for a reason that is not the caller's fault
    (schema too new, database unreachable, corrupted data)."""


class SchemaTooNewError(StorageError):
    """The database was written by a newer fedlib than this one; refuse to touch it."""


class EventStatus(enum.Enum):
    #: Passed all checks; takes part in state and forward extremities.
    ACCEPTED = "accepted"
    #: Failed the auth rules against its auth events or its state before.
    REJECTED = "rejected"
    #: Passed against its own state but failed against the room's current state:
    #: stored with state, but never a forward extremity nor part of current state.
    SOFT_FAILED = "soft_failed"
    #: Fetched for its own sake (auth chain, /event): no state, not in the DAG front.
    OUTLIER = "outlier"


@attrs.frozen(slots=True)
class StateRef:
    """ "The state at ``event_id``": the state after it (``after=True``) or before it.

    Passing a reference instead of a map lets the store reuse the stored state
    group directly instead of diffing a full map.
    """

    event_id: str
    after: bool = True


@attrs.frozen(slots=True)
class PersistItem:
    """One event to persist with what the caller concluded about it.

    ``state_before`` is required for every non-outlier event; it is a full map or a
    :class:`StateRef`. ``state_after`` is normally left ``None``: the store derives it
    as ``state_before`` plus the event itself when the event is an accepted or
    soft-failed state event, and as ``state_before`` otherwise. Give it explicitly
    only when it differs from that rule.
    """

    event: Mapping[str, Any]
    event_id: str
    status: EventStatus = EventStatus.ACCEPTED
    rejection_reason: str | None = None
    state_before: StateMap | StateRef | None = None
    state_after: StateMap | StateRef | None = None


@attrs.frozen(slots=True)
class StoredEvent:
    """An event as stored; ``stream_ordering`` grows with every persisted event
    across the whole store (gaps are possible, reuse is not)."""

    event_id: str
    room_id: str
    event: Mapping[str, Any]
    status: EventStatus
    rejection_reason: str | None
    room_version: str
    stream_ordering: int
    depth: int
    origin_server_ts: int

    @property
    def rejected(self) -> bool:
        return self.status is EventStatus.REJECTED

    @property
    def outlier(self) -> bool:
        return self.status is EventStatus.OUTLIER


@attrs.frozen(slots=True)
class RoomInfo:
    room_id: str
    room_version: str
    partial_state: bool


class StrippedKind(enum.Enum):
    INVITE = "invite"
    KNOCK = "knock"


@attrs.frozen(slots=True)
class StrippedRoom:
    """An invite or knock of a local user into a room we are not (yet) in, with the
    stripped state the remote side shared."""

    kind: StrippedKind
    room_id: str
    user_id: str
    room_version: str
    event: Mapping[str, Any]
    stripped_state: tuple[Mapping[str, Any], ...]


class TxnClaimStatus(enum.Enum):
    #: The caller now owns the transaction and must process it, then call
    #: ``store_received_transaction`` (or ``release_received_transaction``).
    CLAIMED = "claimed"
    #: Already processed: answer ``response`` again.
    DONE = "done"
    #: Another worker is processing it right now: answer a retryable error.
    IN_PROGRESS = "in_progress"


@attrs.frozen(slots=True)
class TxnClaim:
    status: TxnClaimStatus
    response: Mapping[str, Any] | None = None


@attrs.frozen(slots=True)
class QueuedPdu:
    position: int
    event_id: str
    room_id: str


@attrs.frozen(slots=True)
class QueuedEdu:
    position: int
    edu: Mapping[str, Any]


@attrs.frozen(slots=True)
class OutboundBatch:
    """Items claimed for one transaction to ``destination``.

    ``pdus`` are in stream order; ``max_stream_ordering`` is the highest stream
    ordering among them (``None`` without PDUs), recorded on ``ack_batch`` as the
    destination's last successful position.
    """

    destination: str
    claimer: str
    pdus: tuple[QueuedPdu, ...]
    edus: tuple[QueuedEdu, ...]
    max_stream_ordering: int | None = None

    @property
    def event_ids(self) -> list[str]:
        return [p.event_id for p in self.pdus]


@attrs.frozen(slots=True)
class DestinationRetry:
    failure_ts: int
    retry_interval_ms: int


@attrs.frozen(slots=True)
class OwnKey:
    """One of our signing keys. ``expired_ts`` is set for old keys (still published
    under ``old_verify_keys``). ``secret_seed_b64`` may be ``None`` when the embedder
    keeps secrets elsewhere."""

    key_id: str
    verify_key_b64: str
    secret_seed_b64: str | None
    expired_ts: int | None = None


@attrs.frozen(slots=True)
class ServerKey:
    """A remote server's verify key. Old keys carry ``expired_ts`` and are valid for
    events up to that time; current keys are valid until ``valid_until_ts``."""

    server_name: str
    key_id: str
    verify_key_b64: str
    valid_until_ts: int
    expired_ts: int | None = None


class IFederationStore(Interface):
    """Everything the federation handlers persist. All methods return Deferreds."""

    # -- lifecycle -------------------------------------------------------------

    def close() -> Any:
        """Deferred[None]: finish in-flight work and release connections."""

    # -- rooms -----------------------------------------------------------------

    def store_room(room_id: str, room_version: str, partial_state: bool = False) -> Any:
        """Deferred[None]: record a room (idempotent; the version never changes)."""

    def get_room_version(room_id: str) -> Any:
        """Deferred[str | None]."""

    def get_room(room_id: str) -> Any:
        """Deferred[RoomInfo | None]."""

    def list_rooms() -> Any:
        """Deferred[list[str]]: every room we store, in no particular order."""

    def set_partial_state(room_id: str, partial: bool) -> Any:
        """Deferred[None]: mark a room as joined with partial state (faster joins)."""

    def is_partial_state(room_id: str) -> Any:
        """Deferred[bool]."""

    def store_stripped_room(item: StrippedRoom) -> Any:
        """Deferred[None]: record an invite or knock for a local user (replaces any
        earlier one of the same kind for that user and room)."""

    def get_stripped_room(kind: StrippedKind, room_id: str, user_id: str) -> Any:
        """Deferred[StrippedRoom | None]."""

    def delete_stripped_room(kind: StrippedKind, room_id: str, user_id: str) -> Any:
        """Deferred[None]."""

    # -- events ----------------------------------------------------------------

    def persist_events(
        room_id: str,
        items: Iterable[PersistItem],
        current_state: StateMap | StateRef | None = None,
    ) -> Any:
        """Deferred[dict[event_id, int]] (stream orderings): store the batch in one
        atomic step. Already-stored events are skipped, except that an outlier may be
        de-outliered by persisting it again with a non-outlier status and state.

        For accepted non-outlier events the forward extremities become
        ``old - prev_events(new) + new events that no stored event references`` and the
        current state becomes the state after the batch's last accepted event that is
        an extremity, unless ``current_state`` is given (the caller resolved the state
        across several extremities). A ``StateRef`` may point at an event earlier in
        the same batch.
        Fails with ``ValueError`` for an unknown room, a missing ``state_before`` or
        a ``StateRef`` to an event without state.
        """

    def get_events(event_ids: Iterable[str]) -> Any:
        """Deferred[dict[event_id, StoredEvent]]: the known ones among ``event_ids``."""

    def have_seen(event_ids: Iterable[str]) -> Any:
        """Deferred[set[str]]: the ones among ``event_ids`` stored (in any status)."""

    def get_rejected(event_ids: Iterable[str]) -> Any:
        """Deferred[dict[event_id, reason]]: the rejected ones among ``event_ids``."""

    def get_forward_extremities(room_id: str) -> Any:
        """Deferred[set[str]]."""

    def get_max_depth(room_id: str) -> Any:
        """Deferred[int]: the greatest depth among the room's non-outlier events
        (0 for an empty room)."""

    def get_max_stream_ordering() -> Any:
        """Deferred[int]: the highest stream ordering handed out (0 when none)."""

    # -- state -----------------------------------------------------------------

    def get_state_before(event_id: str) -> Any:
        """Deferred[dict[StateKey, str] | None] (None for unknown/outlier events)."""

    def get_state_after(event_id: str) -> Any:
        """Deferred[dict[StateKey, str] | None]."""

    def get_state_after_events(event_ids: Iterable[str]) -> Any:
        """Deferred[dict[event_id, dict[StateKey, str]]] for those that have state."""

    def get_current_state(room_id: str) -> Any:
        """Deferred[dict[StateKey, str]] (empty for an unknown room)."""

    def get_current_state_events(room_id: str, types: Iterable[str] | None = None) -> Any:
        """Deferred[dict[StateKey, StoredEvent]], optionally only of the given types."""

    def get_joined_members(room_id: str) -> Any:
        """Deferred[set[str]]: user IDs whose current membership is ``join``."""

    def get_joined_servers(room_id: str) -> Any:
        """Deferred[set[str]]: servers with at least one joined member now."""

    # -- auth chains -----------------------------------------------------------

    def get_auth_chain(event_ids: Iterable[str]) -> Any:
        """Deferred[set[str]]: the union of the auth chains of ``event_ids`` (the
        transitive ``auth_events``), not including ``event_ids`` themselves unless one
        is in another's chain. Only stored events are followed."""

    def get_auth_chain_difference(state_sets: Iterable[Iterable[str]]) -> Any:
        """Deferred[set[str]]: the union of the full auth chains (each set's events
        included) minus their intersection, as state resolution v2 needs."""

    # -- history ---------------------------------------------------------------

    def backfill(room_id: str, from_event_ids: Iterable[str], limit: int) -> Any:
        """Deferred[list[StoredEvent]]: ``from_event_ids`` and events reached from them
        through ``prev_events``, greatest depth first, at most ``limit``."""

    def get_missing_events(
        room_id: str,
        earliest_events: Iterable[str],
        latest_events: Iterable[str],
        limit: int,
        min_depth: int = 0,
    ) -> Any:
        """Deferred[list[StoredEvent]]: events reached from ``latest_events`` through
        prev_events (excluding them), not walking past ``earliest_events`` or below
        ``min_depth``; at most ``limit``, oldest first (as /get_missing_events)."""

    def get_event_at_timestamp(room_id: str, ts: int, direction: str) -> Any:
        """Deferred[tuple[str, int] | None]: the non-outlier, non-rejected event with
        the closest ``origin_server_ts`` at or after ``ts`` (direction ``"f"``) or at or
        before it (``"b"``) as ``(event_id, origin_server_ts)``."""

    # -- received transactions -------------------------------------------------

    def claim_received_transaction(
        origin: str, txn_id: str, claimer: str, lease_ms: int = 60_000
    ) -> Any:
        """Deferred[TxnClaim]: atomically claim an incoming transaction so that no two
        workers (even in different processes) process it. A claim older than
        ``lease_ms`` is considered abandoned and may be taken over."""

    def store_received_transaction(origin: str, txn_id: str, response: Mapping[str, Any]) -> Any:
        """Deferred[None]: mark the transaction processed with the answer to repeat."""

    def release_received_transaction(origin: str, txn_id: str, claimer: str) -> Any:
        """Deferred[None]: give up a claim without a response (processing failed)."""

    def get_received_transaction(origin: str, txn_id: str) -> Any:
        """Deferred[Mapping | None]: the stored response of a processed transaction."""

    # -- outbound queues -------------------------------------------------------

    def enqueue_pdus(destinations: Iterable[str], event_ids: Iterable[str]) -> Any:
        """Deferred[None]: queue the stored events for every destination."""

    def enqueue_edu(destination: str, edu: Mapping[str, Any]) -> Any:
        """Deferred[None]."""

    def claim_next_batch(
        destination: str,
        claimer: str,
        max_pdus: int = 50,
        max_edus: int = 100,
        lease_ms: int = 120_000,
    ) -> Any:
        """Deferred[OutboundBatch | None]: take the destination's sending lease and
        the oldest queued items. ``None`` when nothing is queued or another claimer
        holds an unexpired lease. Claiming again with the same ``claimer`` while the
        lease is held returns the same oldest items (a retry)."""

    def ack_batch(destination: str, batch: OutboundBatch) -> Any:
        """Deferred[None]: the transaction was delivered: drop its items, record its
        ``max_stream_ordering`` as the last successful position and free the lease."""

    def release_batch(destination: str, batch: OutboundBatch) -> Any:
        """Deferred[None]: free the lease keeping the items queued (send failed)."""

    def get_destinations_with_pending() -> Any:
        """Deferred[set[str]]."""

    def collapse_pdu_queue(destination: str) -> Any:
        """Deferred[int]: for catch-up after a long outage, drop every queued PDU for
        ``destination`` except the latest per room; returns how many were dropped."""

    def get_last_successful_stream_ordering(destination: str) -> Any:
        """Deferred[int | None]."""

    def get_destination_retry(destination: str) -> Any:
        """Deferred[DestinationRetry | None]."""

    def set_destination_retry(destination: str, failure_ts: int, retry_interval_ms: int) -> Any:
        """Deferred[None]."""

    def reset_destination_retry(destination: str) -> Any:
        """Deferred[None]."""

    # -- keys ------------------------------------------------------------------

    def store_own_key(key: OwnKey) -> Any:
        """Deferred[None]: add or replace one of our keys (by key ID)."""

    def get_own_keys() -> Any:
        """Deferred[list[OwnKey]]: current keys first, then old ones."""

    def store_server_keys(
        server_name: str, keys: Iterable[ServerKey], raw_json: Mapping[str, Any] | None = None
    ) -> Any:
        """Deferred[None]: record verified keys of ``server_name``; ``raw_json`` is the
        signed ``/_matrix/key/v2/server`` response they came from, kept (per key) for
        answering notary queries. A key is replaced only by one with a later
        ``valid_until_ts`` or an ``expired_ts``."""

    def get_server_keys(server_name: str, key_ids: Iterable[str] | None = None) -> Any:
        """Deferred[dict[key_id, ServerKey]]: all known keys, or only ``key_ids``."""

    def get_server_keys_json(server_name: str, key_ids: Iterable[str] | None = None) -> Any:
        """Deferred[list[Mapping]]: the distinct raw signed responses holding those
        keys (all of the server's when ``key_ids`` is None), for notary answers."""
