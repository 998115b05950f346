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

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import attrs
from twisted.internet import defer

from fedlib.errors import BadJsonError, MatrixError, SignatureError
from fedlib.events.hashing import check_content_hash, event_id_with
from fedlib.events.redaction import redact_with
from fedlib.events.room_versions import RoomVersion, get_room_version

__all__ = ["DEFAULT_CONCURRENCY", "PduCheckResult", "check_pdu_format", "verify_pdus"]

#: PDUs whose signatures are checked at once; the keyring batches key fetches, so
#: more in flight buys little and costs memory.
DEFAULT_CONCURRENCY = 32

# Spec limits (appendix "Size limits" / room versions "Event format").
_MAX_ID_LENGTH = 255
_MAX_REFS = 100  # prev_events/auth_events; more is never legitimate (spec: 20/10)


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


def _fallback_validate(version: RoomVersion, pdu: Mapping[str, Any]) -> None:
    """Minimal shape checks, used when ``fedlib.events.validation`` is unavailable."""
    for key in ("type", "sender", "room_id"):
        value = pdu.get(key)
        if not isinstance(value, str) or not value:
            raise BadJsonError(f"PDU field {key!r} is missing or not a string")
    if not pdu["sender"].startswith("@") or ":" not in pdu["sender"]:
        raise BadJsonError("PDU sender is not a user ID")
    for key in ("depth", "origin_server_ts"):
        value = pdu.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadJsonError(f"PDU field {key!r} is missing or not an integer")
    if not isinstance(pdu.get("content"), dict):
        raise BadJsonError("PDU content is not an object")
    if "state_key" in pdu and not isinstance(pdu["state_key"], str):
        raise BadJsonError("PDU state_key is not a string")
    for key in ("prev_events", "auth_events"):
        refs = pdu.get(key)
        if not isinstance(refs, list) or len(refs) > _MAX_REFS:
            raise BadJsonError(f"PDU field {key!r} is missing or not a short list")
        for ref in refs:
            ref_id = ref[0] if version.event_id_in_event and isinstance(ref, list) and ref else ref
            if not isinstance(ref_id, str) or len(ref_id) > _MAX_ID_LENGTH:
                raise BadJsonError(f"PDU field {key!r} holds a malformed event reference")
    if version.event_id_in_event:
        event_id = pdu.get("event_id")
        if not isinstance(event_id, str) or not event_id.startswith("$") or ":" not in event_id:
            raise BadJsonError("PDU has no valid event_id")


def _load_validator() -> Callable[[str, dict[str, Any]], object] | None:
    # Imported late and by name: the validation module is optional for this one.
    try:
        validation = importlib.import_module("fedlib.events.validation")
    except ImportError:
        return None
    validator = getattr(validation, "validate_pdu", None)
    return cast("Callable[[str, dict[str, Any]], object] | None", validator)


def check_pdu_format(room_version: str, pdu: object) -> dict[str, Any]:
    """Raise ``BadJsonError`` unless ``pdu`` is a well-formed event of the room version.

    Returns ``pdu`` typed as a dict. Uses ``fedlib.events.validation.validate_pdu``
    where it exists and a minimal shape check otherwise.
    """
    version = get_room_version(room_version)
    if not isinstance(pdu, dict):
        raise BadJsonError("PDU is not a JSON object")
    validator = _load_validator()
    try:
        if validator is not None:
            validator(room_version, pdu)
        else:
            _fallback_validate(version, pdu)
    except MatrixError:
        raise
    except Exception as e:  # a validator bug must not escape as a non-Matrix error
        raise BadJsonError(f"Invalid PDU: {e}") from None
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
        if room_id is not None and event.get("room_id") != room_id:
            raise BadJsonError(f"PDU belongs to room {event.get('room_id')!r}, not {room_id!r}")
        event_id = event_id_with(version, event)
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
