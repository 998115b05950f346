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

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from unpaddedbase64 import encode_base64

from fedlib.canonical import encode_canonical_json
from fedlib.crypto.signing import required_signers, verify_signers
from fedlib.errors import BadJsonError, MatrixError, SignatureError
from fedlib.events.hashing import check_content_hash, event_id_with
from fedlib.events.redaction import redact_with, signable_redacted
from fedlib.events.room_versions import EventFormat, RoomVersion, get_room_version
from fedlib.events.validation import validate_pdu_content_json

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_CONCURRENCY",
    "PduCheckResult",
    "check_pdu_format",
    "verify_pdus",
]

#: PDUs whose signatures are checked at once; the keyring batches key fetches, so
#: more in flight buys little and costs memory.
DEFAULT_CONCURRENCY = 32

#: PDUs checked between two returns to the reactor (when :func:`verify_pdus` is
#: given a clock): some 30-60 ms of work.
DEFAULT_CHUNK = 256


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
    return _check_format(get_room_version(room_version), pdu)[0]


def _check_format(version: RoomVersion, pdu: object) -> tuple[dict[str, Any], bytes | None]:
    """:func:`check_pdu_format`, also returning the canonical JSON the content hash
    covers when the format check encoded it (else ``None``)."""
    if not isinstance(pdu, dict):
        raise BadJsonError("PDU is not a JSON object")
    try:
        content_json = validate_pdu_content_json(version, pdu)
    except MatrixError:
        raise
    except Exception as e:  # a validator bug must not escape as a non-Matrix error
        raise BadJsonError(f"Invalid PDU: {e!r}"[:300]) from None
    return pdu, content_json


def _to_matrix_error(failure: Any) -> MatrixError:
    value = getattr(failure, "value", failure)
    if isinstance(value, MatrixError):
        return value
    return SignatureError(f"Signature check failed: {value!r}"[:300])


@attrs.define(slots=True)
class _Prepared:
    """A PDU that passed the format and room checks, ready for its signatures."""

    index: int
    event_id: str
    event: dict[str, Any]
    #: Canonical JSON of the signable redaction: hashed into the event ID and
    #: covered by the signatures, so encoded once for both.
    message: bytes
    #: Canonical JSON the content hash covers, from the format check (which needs
    #: it for the size limit); ``None`` when not computed there.
    content_json: bytes | None
    #: (server, key IDs) per required signer; ``None`` when the event's
    #: signatures are malformed (the keyring's own path then says how).
    groups: list[tuple[str, tuple[str, ...]]] | None
    valid_at: int | None


def _prepare(
    version: RoomVersion, index: int, pdu: object, room_id: str | None
) -> _Prepared | PduCheckResult:
    event_id: str | None = None
    try:
        event, content_json = _check_format(version, pdu)
        message = encode_canonical_json(signable_redacted(version, event))
        fmt = version.event_format
        if fmt is EventFormat.V1:
            event_id = event_id_with(version, event)
        else:
            # event_id_with over the same bytes.
            digest = hashlib.sha256(message).digest()
            event_id = "$" + encode_base64(digest, urlsafe=fmt is EventFormat.V4)
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
    return _Prepared(index, event_id, event, message, content_json, *_signers(version, event))


def _signers(
    version: RoomVersion, event: dict[str, Any]
) -> tuple[list[tuple[str, tuple[str, ...]]] | None, int | None]:
    """The key lookups the keyring's ``verify_event`` would make for ``event`` (same
    servers, key IDs and validity time), or ``None`` when it would fail before."""
    valid_at: int | None = None
    if version.enforce_key_validity:
        ts = event.get("origin_server_ts")
        if not isinstance(ts, int) or isinstance(ts, bool):
            return None, None
        valid_at = ts
    signatures = event.get("signatures")
    if not isinstance(signatures, dict):
        return None, None
    try:
        servers = required_signers(version, event)
    except MatrixError:
        return None, None
    groups = []
    for server in sorted(servers):
        sigs = signatures.get(server)
        if not isinstance(sigs, dict) or not sigs:
            return None, None
        groups.append((server, tuple(k for k in sigs if isinstance(k, str))))
    return groups, valid_at


def _finish(prepared: _Prepared, version: RoomVersion) -> PduCheckResult:
    """The result of a PDU whose signatures verified."""
    event = prepared.event
    if check_content_hash(event, prepared.content_json):
        return PduCheckResult(index=prepared.index, event_id=prepared.event_id, event=event)
    # The spec assumes a hash mismatch means we were sent a redacted copy, and
    # tells us to use our own redaction so no unverified content survives.
    return PduCheckResult(
        index=prepared.index,
        event_id=prepared.event_id,
        event=redact_with(version, event),
        redacted=True,
    )


class _KeyCache:
    """Verify keys for one :func:`verify_pdus` call, looked up once per (server, key
    IDs) instead of once per PDU.

    A key valid at a time is valid at every earlier time (``valid_until_ts`` and
    ``expired_ts`` are upper bounds), so keys looked up at the latest timestamp of
    a batch serve every PDU of the batch; when the keyring returns fewer keys than
    asked for, the PDUs concerned go through ``keyring.verify_event`` one by one,
    which may pick an older key or refetch, exactly as before.
    """

    def __init__(self, keyring: Any, concurrency: int) -> None:
        self._lookup = getattr(keyring, "get_verify_keys", None)
        self._sem = defer.DeferredSemaphore(max(1, concurrency))
        #: (server, key IDs) -> (valid at ts or None, keys) when all keys were found.
        self._found: dict[tuple[str, tuple[str, ...]], tuple[int | None, dict[str, Any]]] = {}
        #: Lookups that failed or came back short: not tried again in this call.
        self._short: set[tuple[str, tuple[str, ...]]] = set()

    def keys(
        self, group: tuple[str, tuple[str, ...]], valid_at: int | None
    ) -> dict[str, Any] | None:
        found = self._found.get(group)
        if found is None:
            return None
        ts, keys = found
        if valid_at is not None and (ts is None or ts < valid_at):
            return None
        return keys

    @defer.inlineCallbacks
    def fill(self, wanted: dict[tuple[str, tuple[str, ...]], int | None]) -> Any:
        """Look up the ``wanted`` groups (each needed valid at the given time)."""
        if self._lookup is None:
            return
        todo = [
            (g, ts) for g, ts in wanted.items() if g not in self._short and self.keys(g, ts) is None
        ]
        if todo:
            yield defer.gatherResults([self._sem.run(self._one, g, ts) for g, ts in todo])

    @defer.inlineCallbacks
    def _one(self, group: tuple[str, tuple[str, ...]], valid_at: int | None) -> Any:
        server, kids = group
        try:
            assert self._lookup is not None
            keys = yield self._lookup(server, kids, valid_at)
        except Exception:
            keys = None
        if isinstance(keys, dict) and keys and set(keys) >= set(kids):
            self._found[group] = (valid_at, dict(keys))
        else:
            self._short.add(group)


def verify_pdus(
    keyring: Any,
    room_version: str,
    pdus: Sequence[object],
    *,
    room_id: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    clock: IReactorTime | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> defer.Deferred[list[PduCheckResult]]:
    """Check format, signatures and content hashes of ``pdus``, concurrently.

    ``keyring`` provides :class:`fedlib.keyring.IKeyring`. When ``room_id`` is given,
    a PDU of another room is an error. The Deferred fires with one
    :class:`PduCheckResult` per PDU, in input order; it never fails for a bad PDU
    (each result says what was wrong) and fails only with
    ``UnsupportedRoomVersionError`` for an unknown ``room_version``. At most
    ``concurrency`` key lookups or signature checks are outstanding at any time.

    PDUs are checked ``chunk`` at a time: the keys of a chunk's signers are looked
    up once per server (``get_verify_keys``) and its signatures checked without a
    Deferred per PDU; PDUs whose keys this does not find go through
    ``keyring.verify_event``. With a ``clock`` the reactor gets a turn between
    chunks, so a big batch (a ``send_join`` answer) does not stall it; without
    one, a batch whose keys are cached is checked synchronously.
    """
    try:
        version = get_room_version(room_version)
    except MatrixError:
        return defer.fail()
    return _verify(keyring, version, pdus, room_id, concurrency, clock, max(1, chunk))


@defer.inlineCallbacks
def _verify(
    keyring: Any,
    version: RoomVersion,
    pdus: Sequence[object],
    room_id: str | None,
    concurrency: int,
    clock: IReactorTime | None,
    chunk: int,
) -> Any:
    results: list[PduCheckResult | None] = [None] * len(pdus)
    cache = _KeyCache(keyring, concurrency)
    slow: list[_Prepared] = []
    for start in range(0, len(pdus), chunk):
        if start and clock is not None:
            yield task.deferLater(clock, 0, lambda: None)
        prepared: list[_Prepared] = []
        wanted: dict[tuple[str, tuple[str, ...]], int | None] = {}
        for index in range(start, min(start + chunk, len(pdus))):
            p = _prepare(version, index, pdus[index], room_id)
            if isinstance(p, PduCheckResult):
                results[index] = p
                continue
            if p.groups is None:
                slow.append(p)
                continue
            prepared.append(p)
            for group in p.groups:
                if group in wanted:
                    old = wanted[group]
                    wanted[group] = (
                        None if old is None or p.valid_at is None else max(old, p.valid_at)
                    )
                else:
                    wanted[group] = p.valid_at
        yield cache.fill(wanted)
        for p in prepared:
            assert p.groups is not None
            keys: dict[str, dict[str, Any]] = {}
            for group in p.groups:
                found = cache.keys(group, p.valid_at)
                if found is None:
                    break
                keys[group[0]] = found
            else:
                try:
                    # verify_event_signatures, without finding again what _signers
                    # found: the signatures are a dict, and ``keys`` has the required
                    # signers, in sorted order.
                    verify_signers(version, p.event, p.event["signatures"], keys, keys, p.message)
                except Exception as e:  # a non-Matrix error is a bad signature all the same
                    results[p.index] = PduCheckResult(
                        index=p.index, event_id=p.event_id, error=_to_matrix_error(e)
                    )
                else:
                    results[p.index] = _finish(p, version)
                continue
            slow.append(p)
    if slow:
        yield _verify_slow(keyring, version, slow, results, concurrency)
    return [r for r in results if r is not None]


def _verify_slow(
    keyring: Any,
    version: RoomVersion,
    slow: list[_Prepared],
    results: list[PduCheckResult | None],
    concurrency: int,
) -> defer.Deferred[Any]:
    """``keyring.verify_event`` per PDU, at most ``concurrency`` at once."""
    work: Iterator[_Prepared] = iter(slow)

    @defer.inlineCallbacks
    def worker() -> Any:
        # Workers share one iterator: each takes the next PDU when it is free, so
        # memory and outstanding key lookups stay bounded by ``concurrency``.
        for p in work:
            try:
                yield keyring.verify_event(version.identifier, p.event)
            except Exception as e:
                results[p.index] = PduCheckResult(
                    index=p.index, event_id=p.event_id, error=_to_matrix_error(e)
                )
            else:
                results[p.index] = _finish(p, version)

    workers = [worker() for _ in range(max(1, min(concurrency, len(slow))))]
    done: defer.Deferred[Any] = defer.gatherResults(workers, consumeErrors=True)
    return done
