"""The checks every PDU received from another server goes through before use.

Spec, server-server API, "Checks performed on receipt of a PDU", steps 1-3, and
"Validating hashes and signatures on received events":

1. the PDU must be a valid event of its room version, else it is dropped;
2. it must carry the required signatures (checked by the keyring, which knows
   which servers must sign and which keys were valid when), else it is dropped;
3. its content hash must match, else it is replaced by its redaction and used
   in that form.

Authorisation (steps 4-6) needs room state and is the caller's business. This
module is shared by the send_join, backfill and gap-filling paths of the client
and by the server's ``/send`` pipeline so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import attrs
from twisted.internet import defer

from fedlib.errors import BadJsonError, MatrixError, SignatureError
from fedlib.events.hashing import check_content_hash, event_id_with
from fedlib.events.redaction import redact_with
from fedlib.events.room_versions import RoomVersion, get_room_version
from fedlib.events.validation import validate_pdu

__all__ = ["DEFAULT_CONCURRENCY", "PduCheckResult", "check_pdu_format", "verify_pdus"]

#: PDUs whose signatures are checked at once; the keyring batches key fetches, so
#: more in flight buys little and costs memory.
DEFAULT_CONCURRENCY = 32


@attrs.frozen(slots=True)
class PduCheckResult:
    """What :func:`verify_pdus` concluded about one PDU.

    Exactly one of ``event`` and ``error`` is set. When ``event`` is set it is the
    form to process further: the PDU as received, or its redaction when the
    content hash did not match (``redacted`` is then true).
    """

    #: Position of the PDU in the list given to :func:`verify_pdus`.
    index: int
    #: The event ID (derived in v3+); ``None`` when it could not be determined.
    event_id: str | None
    event: dict[str, Any] | None = None
    redacted: bool = False
    error: MatrixError | None = None

    @property
    def ok(self) -> bool:
        """The PDU passed format and signature checks and may be used (maybe redacted)."""
        return self.error is None


def check_pdu_format(room_version: str, pdu: object) -> dict[str, Any]:
    """Raise ``BadJsonError`` unless ``pdu`` is a well-formed event of the room version.

    Returns ``pdu`` typed as a dict (``fedlib.events.validation.validate_pdu``).
    """
    if not isinstance(pdu, dict):
        raise BadJsonError("PDU is not a JSON object")
    try:
        validate_pdu(room_version, pdu)
    except MatrixError:
        raise
    except Exception as e:  # a validator bug must not escape as a non-Matrix error
        raise BadJsonError(f"Invalid PDU: {e!r}"[:300]) from None
    return pdu


def _to_matrix_error(failure: Any) -> MatrixError:
    value = getattr(failure, "value", failure)
    if isinstance(value, MatrixError):
        return value
    return SignatureError(f"Signature check failed: {value!r}"[:300])


@defer.inlineCallbacks
def _check_one(
    keyring: Any,
    version: RoomVersion,
    index: int,
    pdu: object,
    room_id: str | None,
) -> Any:
    event_id: str | None = None
    try:
        event = check_pdu_format(version.identifier, pdu)
        event_id = event_id_with(version, event)
        if room_id is not None:
            in_room = event.get("room_id")
            if in_room is None and version.room_id_is_create_hash:
                # v12 create events carry no room_id: the room ID is their hash.
                in_room = "!" + event_id[1:]
            if in_room != room_id:
                raise BadJsonError(f"PDU belongs to room {in_room!r}, not {room_id!r}")
    except MatrixError as e:
        return PduCheckResult(index=index, event_id=event_id, error=e)
    except Exception as e:
        return PduCheckResult(index=index, event_id=event_id, error=BadJsonError(f"{e!r}"[:300]))
    try:
        yield keyring.verify_event(version.identifier, event)
    except Exception as e:
        return PduCheckResult(index=index, event_id=event_id, error=_to_matrix_error(e))
    if check_content_hash(event):
        return PduCheckResult(index=index, event_id=event_id, event=event)
    # The spec assumes a hash mismatch means we were sent a redacted copy, and
    # tells us to use our own redaction so no unverified content survives.
    return PduCheckResult(
        index=index, event_id=event_id, event=redact_with(version, event), redacted=True
    )


def verify_pdus(
    keyring: Any,
    room_version: str,
    pdus: Sequence[object],
    *,
    room_id: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> defer.Deferred[list[PduCheckResult]]:
    """Check format, signatures and content hashes of ``pdus``, concurrently.

    ``keyring`` provides :class:`fedlib.keyring.IKeyring`. When ``room_id`` is given,
    a PDU of another room is an error. The Deferred fires with one
    :class:`PduCheckResult` per PDU, in input order; it never fails for a bad PDU
    (each result says what was wrong) and fails only with
    ``UnsupportedRoomVersionError`` for an unknown ``room_version``. At most
    ``concurrency`` signature checks are outstanding at any time.
    """
    try:
        version = get_room_version(room_version)
    except MatrixError:
        return defer.fail()
    results: list[PduCheckResult | None] = [None] * len(pdus)
    work: Iterator[tuple[int, object]] = iter(enumerate(pdus))

    @defer.inlineCallbacks
    def worker() -> Any:
        # Workers share one iterator: each takes the next PDU when it is free, so
        # memory and outstanding key lookups stay bounded by ``concurrency``.
        for index, pdu in work:
            result = yield _check_one(keyring, version, index, pdu, room_id)
            results[index] = result

    workers = [worker() for _ in range(max(1, min(concurrency, len(pdus))))]
    done: defer.Deferred[Any] = defer.gatherResults(workers, consumeErrors=True)
    return done.addCallback(lambda _: [r for r in results if r is not None])
