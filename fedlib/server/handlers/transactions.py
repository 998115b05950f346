"""``PUT /_matrix/federation/v1/send/{txnId}``: PDUs and EDUs pushed to us."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from fedlib.canonical import MAX_INT, MIN_INT
from fedlib.errors import BadJsonError, MatrixError
from fedlib.events.hashing import event_id_with
from fedlib.events.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS
from fedlib.rooms.pipeline import IncomingPduPipeline, PduOutcome
from fedlib.rooms.verify import verify_pdus
from fedlib.server.acl import server_allowed_by_acl
from fedlib.server.context import ServerContext
from fedlib.server.errors import bad_json
from fedlib.server.pdu_json import check_pdu_json
from fedlib.server.ratelimit import LimitExceededError
from fedlib.server.request import FederationRequest
from fedlib.server.resource import Route
from fedlib.storage.interface import TxnClaimStatus

__all__ = ["get_pipeline", "routes"]

log = Logger()

_MAX_TXN_ID = 255
_MAX_RECEIPT_ROOMS = 100


def get_pipeline(ctx: ServerContext) -> IncomingPduPipeline:
    """The server's one pipeline (its per-room locks must be shared by all handlers)."""
    pipeline = ctx.extras.get("pipeline")
    if pipeline is None:
        pipeline = IncomingPduPipeline(
            ctx.store,
            ctx.clock,
            ctx.call_hook,
            ctx.gaps,
            pdu_timeout=ctx.config.pdu_timeout_seconds,
        )
        ctx.extras["pipeline"] = pipeline
    else:
        # The gap filler may be attached after the tree was built.
        pipeline.gaps = ctx.gaps
    assert isinstance(pipeline, IncomingPduPipeline)
    return pipeline


def _guess_event_id(pdu: Mapping[str, Any], room_version: str | None) -> str | None:
    """The event ID to report a result under, even for a PDU we will not process."""
    explicit = pdu.get("event_id")
    if isinstance(explicit, str) and len(explicit) <= 255:
        version = KNOWN_ROOM_VERSIONS.get(room_version or "")
        if version is None or version.event_id_in_event:
            return explicit
    version = KNOWN_ROOM_VERSIONS.get(room_version or DEFAULT_ROOM_VERSION)
    if version is None:
        return None
    try:
        return event_id_with(version, dict(pdu))
    except Exception:
        # Whatever is wrong with the PDU is reported elsewhere or not at all: a
        # PDU without a computable ID cannot be named in the response.
        return None


class _TransactionHandler:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.in_flight: dict[str, str] = {}
        self.claimer = f"fedlib-{uuid.uuid4().hex[:12]}"

    async def send(self, request: FederationRequest) -> tuple[int, Any]:
        ctx = self.ctx
        origin = request.authed_origin
        txn_id = request.param("txnId")
        if not txn_id or len(txn_id) > _MAX_TXN_ID:
            raise MatrixError(400, "M_INVALID_PARAM", "Invalid transaction ID")
        body = request.json_object()
        pdus = body.get("pdus")
        edus = body.get("edus", [])
        if not isinstance(pdus, list):
            raise bad_json("pdus must be a list")
        if edus is None:
            edus = []
        if not isinstance(edus, list):
            raise bad_json("edus must be a list")
        if len(pdus) > ctx.config.max_pdus_per_transaction:
            raise bad_json(f"Too many PDUs (at most {ctx.config.max_pdus_per_transaction})")
        if len(edus) > ctx.config.max_edus_per_transaction:
            raise bad_json(f"Too many EDUs (at most {ctx.config.max_edus_per_transaction})")
        body_origin = body.get("origin")
        if body_origin is not None and body_origin != origin:
            raise bad_json("Transaction origin does not match the request's origin")
        ts = body.get("origin_server_ts")
        if ts is not None and (
            not isinstance(ts, int) or isinstance(ts, bool) or not MIN_INT <= ts <= MAX_INT
        ):
            raise bad_json("origin_server_ts must be an integer in the canonical JSON range")

        if origin in self.in_flight:
            # One transaction in flight per origin: a sender that is waiting for
            # our answer does not send another, so this is a retry racing the
            # original or an impatient peer; either way it comes back later.
            raise LimitExceededError(1000, "A transaction from this server is in progress")
        claim = await ctx.store.claim_received_transaction(origin, txn_id, self.claimer)
        if claim.status is TxnClaimStatus.DONE:
            return 200, dict(claim.response or {"pdus": {}})
        if claim.status is TxnClaimStatus.IN_PROGRESS:
            raise LimitExceededError(1000, "Transaction is being processed")
        self.in_flight[origin] = txn_id
        try:
            response = await self._process(origin, pdus, edus)
        except BaseException:
            await ctx.store.release_received_transaction(origin, txn_id, self.claimer)
            raise
        finally:
            self.in_flight.pop(origin, None)
        await ctx.store.store_received_transaction(origin, txn_id, response)
        return 200, response

    async def _process(self, origin: str, pdus: list[Any], edus: list[Any]) -> dict[str, Any]:
        ctx = self.ctx
        results: dict[str, dict[str, Any]] = {}
        by_room: dict[str, list[Any]] = {}
        versions: dict[str, str | None] = {}
        acls: dict[str, bool] = {}
        for pdu in pdus:
            if not isinstance(pdu, dict):
                continue
            room_id = pdu.get("room_id")
            if not isinstance(room_id, str) or len(room_id) > 255:
                continue
            if room_id not in versions:
                versions[room_id] = await ctx.store.get_room_version(room_id)
            version = versions[room_id]
            event_id = _guess_event_id(pdu, version)
            if version is None:
                if event_id is not None:
                    results[event_id] = {"error": "Unknown room"}
                continue
            if room_id not in acls:
                acls[room_id] = server_allowed_by_acl(origin, await ctx.acl_content(room_id))
            if not acls[room_id]:
                if event_id is not None:
                    results[event_id] = {"error": "Server is denied by the room's server ACL"}
                continue
            by_room.setdefault(room_id, []).append(pdu)

        rooms = [
            defer.ensureDeferred(self._room(origin, room_id, str(versions[room_id]), room_pdus))
            for room_id, room_pdus in by_room.items()
        ]
        try:
            gathered = await defer.gatherResults(rooms, consumeErrors=True)
        except defer.FirstError as e:
            # Report the room's own failure, not the wrapper.
            e.subFailure.raiseException()
        for room_results in gathered:
            results.update(room_results)
        await self._edus(origin, edus)
        return {"pdus": results}

    async def _room(
        self, origin: str, room_id: str, room_version: str, pdus: list[Any]
    ) -> dict[str, dict[str, Any]]:
        ctx = self.ctx
        out: dict[str, dict[str, Any]] = {}
        strict: list[Any] = []
        for pdu in pdus:
            try:
                check_pdu_json(room_version, pdu)
            except BadJsonError as e:
                event_id = _guess_event_id(pdu, room_version)
                if event_id is not None:
                    out[event_id] = {"error": e.msg}
                continue
            strict.append(pdu)
        checked = await verify_pdus(ctx.keyring, room_version, strict, room_id=room_id)
        good: list[tuple[str, dict[str, Any]]] = []
        for result in checked:
            if result.event is not None and result.event_id is not None:
                good.append((result.event_id, result.event))
            else:
                event_id = result.event_id or _guess_event_id(strict[result.index], room_version)
                if event_id is not None:
                    msg = result.error.msg if result.error is not None else "Invalid PDU"
                    out[event_id] = {"error": msg}
        outcomes: dict[str, PduOutcome] = await get_pipeline(ctx).process(
            origin, room_id, room_version, good
        )
        for event_id, outcome in outcomes.items():
            if outcome.ok:
                out[event_id] = {}
            else:
                out[event_id] = {"error": outcome.error or "Rejected"}
        for event_id, answer in out.items():
            if "error" in answer:
                log.info(
                    "PDU {event_id} from {origin} in {room_id}: {error}",
                    event_id=event_id,
                    origin=origin,
                    room_id=room_id,
                    error=answer["error"],
                )
        return out

    async def _edus(self, origin: str, edus: list[Any]) -> None:
        ctx = self.ctx
        for edu in edus:
            if not isinstance(edu, dict):
                continue
            edu_type = edu.get("edu_type")
            content = edu.get("content")
            if not isinstance(edu_type, str) or not isinstance(content, dict):
                continue
            content = await self._acl_filter_edu(origin, edu_type, content)
            if content is None:
                continue
            await ctx.call_hook("on_edu", origin, edu_type, content)

    async def _acl_filter_edu(
        self, origin: str, edu_type: str, content: dict[str, Any]
    ) -> dict[str, Any] | None:
        ctx = self.ctx
        if edu_type == "m.typing":
            room_id = content.get("room_id")
            if not isinstance(room_id, str):
                return None
            if not server_allowed_by_acl(origin, await ctx.acl_content(room_id)):
                return None
            return content
        if edu_type == "m.receipt":
            kept = {}
            # Receipts for more rooms than this in one EDU are not a real client's.
            for room_id, receipts in list(content.items())[:_MAX_RECEIPT_ROOMS]:
                if server_allowed_by_acl(origin, await ctx.acl_content(room_id)):
                    kept[room_id] = receipts
            return kept or None
        return content


def routes(ctx: ServerContext) -> list[Route]:
    handler = _TransactionHandler(ctx)
    # Parsed without the integer-range rule: it applies per PDU (in _room), so one
    # bad PDU fails alone, and not at all to EDUs.
    return [Route("PUT", "/_matrix/federation/v1/send/{txnId}", handler.send, strict_ints=False)]
