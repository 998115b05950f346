"""Joins, knocks, leaves and invites: make_*/send_* v1 and v2, invite v1 and v2."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from unpaddedbase64 import encode_base64

from fedlib.auth.power_levels import named_level_with, user_level_with
from fedlib.auth.rules import auth_types_with, check_auth_with
from fedlib.crypto.signing import sign_event
from fedlib.errors import AuthError, MatrixError, SignatureError
from fedlib.events.hashing import check_content_hash, event_id_with, reference_hash_with
from fedlib.events.room_versions import (
    EventFormat,
    RoomVersion,
    get_room_version,
)
from fedlib.ids import is_valid_user_id
from fedlib.rooms.local import INVITE_STATE_TYPES
from fedlib.rooms.verify import verify_pdus
from fedlib.server.context import ServerContext
from fedlib.server.errors import bad_json, forbidden, invalid_param, not_found
from fedlib.server.handlers.transactions import get_pipeline
from fedlib.server.pdu_json import check_pdu_json
from fedlib.server.request import FederationRequest
from fedlib.server.resource import Route
from fedlib.storage.interface import EventStatus, StrippedKind, StrippedRoom

__all__ = ["routes", "stripped_state"]

log = Logger()

StateKey = tuple[str, str]
CREATE: StateKey = ("m.room.create", "")
POWER: StateKey = ("m.room.power_levels", "")
JOIN_RULES: StateKey = ("m.room.join_rules", "")
#: Heroes named in a room summary (client-server API "Calculating the room name").
HEROES = 5


def _server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def _content(event: Mapping[str, Any] | None) -> Mapping[str, Any]:
    c = event.get("content") if event is not None else None
    return c if isinstance(c, Mapping) else {}


def _refs(version: RoomVersion, ids: list[str], events: Mapping[str, Any]) -> list[Any]:
    if version.event_format is not EventFormat.V1:
        return list(ids)
    return [
        [eid, {"sha256": encode_base64(reference_hash_with(version, dict(events[eid])))}]
        for eid in ids
        if eid in events
    ]


async def stripped_state(ctx: ServerContext, room_id: str) -> list[dict[str, Any]]:
    """The room state for knockers (``knock_room_state``): the create, join rules,
    name, avatar, alias, encryption and topic events, as full PDUs formatted per
    the room version (knocks.yaml, Matrix 1.16); ``unsigned`` is left out."""
    events = await ctx.store.get_current_state_events(room_id, list(INVITE_STATE_TYPES))
    out = []
    for (_etype, skey), stored in sorted(events.items()):
        if skey != "":
            continue
        ev = dict(stored.event)
        ev.pop("unsigned", None)
        out.append(ev)
    return out


class _Membership:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    # -- make_* ----------------------------------------------------------------

    async def _current(
        self, room_id: str, keys: list[StateKey] | None = None
    ) -> tuple[dict[StateKey, str], dict[str, Any]]:
        """The current state, and its events (only those of ``keys`` when given)."""
        state = dict(await self.ctx.store.get_current_state(room_id))
        ids = list(state.values()) if keys is None else [state[k] for k in keys if k in state]
        stored = await self.ctx.store.get_events(ids)
        return state, {eid: s.event for eid, s in stored.items()}

    async def _make(self, request: FederationRequest, membership: str) -> tuple[int, Any]:
        ctx = self.ctx
        room_id = request.param("roomId")
        user_id = request.param("userId")
        origin = request.authed_origin
        room_version = await ctx.room_version(room_id)
        version = get_room_version(room_version)
        if membership in ("join", "knock"):
            supported = request.query_strs("ver") or ["1"]
            if room_version not in supported:
                raise MatrixError(
                    400,
                    "M_INCOMPATIBLE_ROOM_VERSION",
                    "Your homeserver does not support the features required to join this room",
                    room_version=room_version,
                )
        if membership == "knock" and not version.knock_join_rule:
            raise forbidden("This room version does not support knocking")
        if not is_valid_user_id(user_id):
            # appendices, "User Identifiers": at most 255 bytes; the event built
            # from the template would be refused at send_* anyway.
            raise invalid_param("Invalid user ID")
        if _server_of(user_id) != origin:
            raise forbidden("User does not belong to the requesting server")
        await self._require_full_state(room_id)
        # Only the events the template and its checks read, not a big room's members.
        state, events = await self._current(
            room_id, [CREATE, POWER, JOIN_RULES, ("m.room.member", user_id)]
        )
        if not state:
            raise not_found("This server is not in the room")
        extremities = sorted(await ctx.store.get_forward_extremities(room_id))[:10]
        prev_events = await ctx.store.get_events(extremities)
        depth = max([s.depth for s in prev_events.values()] or [0]) + 1
        content: dict[str, Any] = {"membership": membership}
        if membership == "join":
            authoriser = await self._restricted_authoriser(version, room_id, user_id, state, events)
            if authoriser is not None:
                content["join_authorised_via_users_server"] = authoriser
        template: dict[str, Any] = {
            "type": "m.room.member",
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": content,
            "origin": ctx.server_name,
            "origin_server_ts": ctx.now_ms(),
            "depth": depth,
            "prev_events": _refs(
                version, extremities, {k: v.event for k, v in prev_events.items()}
            ),
        }
        wanted = sorted(auth_types_with(version, template))
        auth_ids = [state[k] for k in wanted if k in state]
        more = [eid for eid in auth_ids if eid not in events]
        if more:
            events.update({e: s.event for e, s in (await ctx.store.get_events(more)).items()})
        template["auth_events"] = _refs(version, auth_ids, events)
        # Refuse now what the auth rules would refuse at send_join: a template for
        # a banned user or an invite-only room is of no use to anyone.
        probe = dict(template)
        if "join_authorised_via_users_server" in content:
            probe["signatures"] = {ctx.server_name: {"ed25519:probe": "x"}}
        auth_map = {
            k: events[state[k]] for k in wanted + [CREATE] if k in state and state[k] in events
        }
        try:
            check_auth_with(version, probe, auth_map, state.get(CREATE))
        except AuthError as e:
            raise forbidden(f"You are not allowed to {membership} this room: {e.msg}") from None
        return 200, {"event": template, "room_version": room_version}

    async def _restricted_authoriser(
        self,
        version: RoomVersion,
        room_id: str,
        user_id: str,
        state: Mapping[StateKey, str],
        events: Mapping[str, Any],
    ) -> str | None:
        """For a restricted room, a local user who can invite, vouching for the join;
        ``None`` when the join needs no authorisation."""
        if not version.restricted_join_rule:
            return None
        rule = _content(events.get(state.get(JOIN_RULES, ""))).get("join_rule")
        if rule not in ("restricted", "knock_restricted") or (
            rule == "knock_restricted" and not version.knock_restricted_join_rule
        ):
            return None
        member_id = state.get(("m.room.member", user_id))
        if member_id is not None and _content(events.get(member_id)).get("membership") in (
            "join",
            "invite",
        ):
            return None
        allow = _content(events.get(state.get(JOIN_RULES, ""))).get("allow")
        rooms = [
            a.get("room_id")
            for a in (allow if isinstance(allow, list) else [])
            if isinstance(a, Mapping)
            and a.get("type") == "m.room_membership"
            and isinstance(a.get("room_id"), str)
        ]
        known_any = False
        satisfied = False
        for allowed_room in rooms:
            if await self.ctx.store.get_room_version(allowed_room) is None:
                continue
            known_any = True
            if user_id in await self.ctx.store.get_joined_members(allowed_room):
                satisfied = True
                break
        if not satisfied:
            if not known_any:
                raise MatrixError(
                    400,
                    "M_UNABLE_TO_AUTHORISE_JOIN",
                    "This server cannot check the room's join conditions",
                )
            raise forbidden("You do not satisfy the conditions to join this room")
        create = events.get(state.get(CREATE, ""))
        power = events.get(state.get(POWER, ""))
        needed = named_level_with(version, power, "invite")
        members = await self.ctx.store.get_joined_members(room_id)
        for candidate in sorted(members):
            if _server_of(candidate) != self.ctx.server_name:
                continue
            if user_level_with(version, candidate, power, create) >= needed:
                return str(candidate)
        raise MatrixError(
            400, "M_UNABLE_TO_GRANT_JOIN", "No user of this server can authorise the join"
        )

    async def _require_full_state(self, room_id: str) -> None:
        # With partial state (a faster join still syncing) we cannot authorise
        # membership changes or hand out the room's state; the remote tries
        # another resident server.
        if await self.ctx.store.is_partial_state(room_id):
            raise not_found("This server is not fully joined to the room yet")

    # -- send_* ----------------------------------------------------------------

    async def _send(
        self, request: FederationRequest, membership: str
    ) -> tuple[str, str, dict[str, Any], dict[StateKey, str]]:
        """Validate, (for restricted joins) sign, check and persist a membership
        event; returns (room_version, event_id, event as persisted, state before)."""
        ctx = self.ctx
        room_id = request.param("roomId")
        path_event_id = request.param("eventId")
        origin = request.authed_origin
        room_version = await ctx.room_version(room_id)
        version = get_room_version(room_version)
        event = request.json_object()
        check_pdu_json(room_version, event)
        await self._require_full_state(room_id)
        # joins-v2.yaml, leaving-v2.yaml, knocks.yaml: M_INVALID_PARAM for these.
        if event.get("type") != "m.room.member" or _content(event).get("membership") != membership:
            raise invalid_param(f"Event is not a {membership} membership event")
        sender = event.get("sender")
        if not isinstance(sender, str) or _server_of(sender) != origin:
            raise invalid_param("The event's sender does not belong to the requesting server")
        if event.get("state_key") != sender:
            raise invalid_param("state_key must be the sender")
        if event.get("room_id") != room_id:
            raise bad_json("Event is for another room")
        event_id = event_id_with(version, dict(event))
        if event_id != path_event_id:
            raise bad_json("Event ID does not match the path")
        authoriser = _content(event).get("join_authorised_via_users_server")
        if (
            membership == "join"
            and isinstance(authoriser, str)
            and _server_of(authoriser) == ctx.server_name
        ):
            # We vouch for the join, so the allow conditions are ours to re-check;
            # our signature goes on before verification, which demands it.
            state, events = await self._current(room_id)
            await self._restricted_authoriser(version, room_id, sender, state, events)
            # Signing recomputes the content hash: check the sender's first, so
            # that our signature never covers content its sender did not sign.
            if not check_content_hash(event):
                raise bad_json("Event content hash does not match")
            event = sign_event(room_version, event, ctx.server_name, ctx.config.signing_key)
        (checked,) = await verify_pdus(ctx.keyring, room_version, [event], room_id=room_id)
        if checked.error is not None or checked.event is None:
            err = checked.error
            if isinstance(err, SignatureError) or err is None:
                raise invalid_param(f"Event signature check failed: {err.msg if err else ''}")
            raise MatrixError(400, err.errcode, err.msg)
        if checked.redacted:
            raise bad_json("Event content hash does not match")
        event = checked.event
        existing = await ctx.store.get_events([event_id])
        if event_id not in existing or existing[event_id].status is EventStatus.OUTLIER:
            outcomes = await get_pipeline(ctx).process(
                origin, room_id, room_version, [(event_id, event)]
            )
            outcome = outcomes[event_id]
            if outcome.status is not EventStatus.ACCEPTED:
                raise forbidden(outcome.error or f"The {membership} event was not accepted")
            await self._send_out(room_id, event_id, origin)
        else:
            stored = existing[event_id]
            if stored.status is not EventStatus.ACCEPTED:
                raise forbidden(stored.rejection_reason or "Event was not accepted")
        state_before = await ctx.store.get_state_before(event_id)
        return room_version, event_id, dict(event), dict(state_before or {})

    async def _send_out(self, room_id: str, event_id: str, origin: str) -> None:
        servers = set(await self.ctx.store.get_joined_servers(room_id))
        servers.discard(self.ctx.server_name)
        servers.discard(origin)
        if not servers:
            return
        if self.ctx.send_pdu is not None:
            await defer.maybeDeferred(self.ctx.send_pdu, event_id, sorted(servers))
        else:
            await self.ctx.store.enqueue_pdus(sorted(servers), [event_id])

    async def _join_response(
        self,
        request: FederationRequest,
        room_version: str,
        event: dict[str, Any],
        event_id: str,
        state: dict[StateKey, str],
    ) -> dict[str, Any]:
        ctx = self.ctx
        omit = request.query_bool("omit_members")
        body: dict[str, Any] = {"origin": ctx.server_name}
        if omit:
            sender = str(event.get("sender"))
            kept: dict[StateKey, str] = {}
            members: list[tuple[StateKey, str]] = []
            for key, eid in state.items():
                if key[0] == "m.room.member":
                    members.append((key, eid))
                else:
                    kept[key] = eid
            heroes = [m for m in sorted(members) if m[0][1] != sender][:HEROES]
            kept.update(dict(heroes))
            state_ids = set(kept.values())
            chain = set(await ctx.store.get_auth_chain(state_ids | {event_id}))
            # The joining server has the state events themselves; only what they
            # and the join rest on goes into the chain.
            chain -= state_ids
            body["members_omitted"] = True
            joined = set(await ctx.store.get_joined_servers(event["room_id"]))
            body["servers_in_room"] = sorted(joined | {ctx.server_name})
        else:
            state_ids = set(state.values())
            chain = set(await ctx.store.get_auth_chain(state_ids | {event_id}))
            body["members_omitted"] = False
        stored = await ctx.store.get_events(list(state_ids | chain))
        # Stored events go out as they are (only encoded): copying 50,000 of them
        # would cost more than the rest of the handler.
        body["state"] = [stored[e].event for e in sorted(state_ids) if e in stored]
        body["auth_chain"] = [stored[e].event for e in sorted(chain) if e in stored]
        if _content(event).get("join_authorised_via_users_server") is not None:
            body["event"] = event
        return body

    # -- endpoints -------------------------------------------------------------

    async def make_join(self, request: FederationRequest) -> tuple[int, Any]:
        return await self._make(request, "join")

    async def make_knock(self, request: FederationRequest) -> tuple[int, Any]:
        return await self._make(request, "knock")

    async def make_leave(self, request: FederationRequest) -> tuple[int, Any]:
        return await self._make(request, "leave")

    async def send_join_v2(self, request: FederationRequest) -> tuple[int, Any]:
        room_version, event_id, event, state = await self._send(request, "join")
        return 200, await self._join_response(request, room_version, event, event_id, state)

    async def send_join_v1(self, request: FederationRequest) -> tuple[int, Any]:
        room_version, event_id, event, state = await self._send(request, "join")
        body = await self._join_response(request, room_version, event, event_id, state)
        return 200, [200, body]

    async def send_knock(self, request: FederationRequest) -> tuple[int, Any]:
        await self._send(request, "knock")
        return 200, {"knock_room_state": await stripped_state(self.ctx, request.param("roomId"))}

    async def send_leave_v2(self, request: FederationRequest) -> tuple[int, Any]:
        await self._send(request, "leave")
        return 200, {}

    async def send_leave_v1(self, request: FederationRequest) -> tuple[int, Any]:
        await self._send(request, "leave")
        return 200, [200, {}]

    async def _invite(
        self, request: FederationRequest, room_version: str, event: Any, invite_state: Any
    ) -> dict[str, Any]:
        ctx = self.ctx
        room_id = request.param("roomId")
        origin = request.authed_origin
        try:
            if room_version not in ctx.config.supported_room_versions:
                raise MatrixError(400, "M_INCOMPATIBLE_ROOM_VERSION", "Unsupported room version")
            version = get_room_version(room_version, errcode="M_INCOMPATIBLE_ROOM_VERSION")
        except MatrixError as e:
            raise MatrixError(
                400, "M_INCOMPATIBLE_ROOM_VERSION", e.msg, room_version=str(room_version)
            ) from None
        if not isinstance(event, dict):
            raise bad_json("event must be an object")
        if not isinstance(invite_state, list) or not all(isinstance(s, dict) for s in invite_state):
            raise bad_json("invite_room_state must be a list of objects")
        check_pdu_json(room_version, event)
        # invites-v2.yaml: M_INVALID_PARAM for these.
        if event.get("type") != "m.room.member" or _content(event).get("membership") != "invite":
            raise invalid_param("Event is not an invite")
        if event.get("room_id") != room_id:
            raise invalid_param("Event is for another room")
        invitee = event.get("state_key")
        if not isinstance(invitee, str) or _server_of(invitee) != ctx.server_name:
            raise invalid_param("The invited user is not on this server")
        sender = event.get("sender")
        if not isinstance(sender, str) or _server_of(sender) != origin:
            raise invalid_param("The inviter does not belong to the requesting server")
        event_id = event_id_with(version, dict(event))
        if event_id != request.param("eventId"):
            raise bad_json("Event ID does not match the path")
        (checked,) = await verify_pdus(ctx.keyring, room_version, [event], room_id=room_id)
        if checked.error is not None or checked.event is None or checked.redacted:
            raise invalid_param("Invite event failed signature or hash checks")
        if version.room_id_is_create_hash:
            # invites-v2.yaml: MAY for room versions 1 to 11 (whose invites from
            # servers older than Matrix 1.16 carry stripped state), SHOULD after.
            await self._check_invite_room_state(room_version, room_id, invite_state)
        if not await ctx.call_hook("is_local_user_known", invitee, default=True):
            raise not_found("Unknown user")
        accepted = await ctx.call_hook(
            "on_invite", room_version, event, invite_state, default=False
        )
        if not accepted:
            raise forbidden("The invite was refused")
        signed = sign_event(room_version, event, ctx.server_name, ctx.config.signing_key)
        await ctx.store.store_stripped_room(
            StrippedRoom(
                kind=StrippedKind.INVITE,
                room_id=room_id,
                user_id=invitee,
                room_version=room_version,
                event=signed,
                stripped_state=tuple(invite_state),
            )
        )
        return {"event": signed}

    async def _check_invite_room_state(
        self, room_version: str, room_id: str, invite_state: list[dict[str, Any]]
    ) -> None:
        """invites-v2.yaml: ``invite_room_state`` holds the room's create event and
        only validly signed PDUs of the room formatted per its version; else 400
        M_INVALID_PARAM."""
        if not any(
            s.get("type") == "m.room.create" and s.get("state_key") == "" for s in invite_state
        ):
            raise invalid_param("invite_room_state lacks the room's m.room.create event")
        for index, entry in enumerate(invite_state):
            try:
                check_pdu_json(room_version, entry)
            except MatrixError as e:
                raise invalid_param(f"invite_room_state entry {index}: {e.msg}") from None
        checked = await verify_pdus(self.ctx.keyring, room_version, invite_state, room_id=room_id)
        for result in checked:
            if result.error is not None or result.event is None:
                msg = result.error.msg if result.error is not None else "invalid event"
                raise invalid_param(f"invite_room_state entry {result.index}: {msg}")

    async def invite_v2(self, request: FederationRequest) -> tuple[int, Any]:
        body = request.json_object()
        room_version = body.get("room_version")
        if not isinstance(room_version, str):
            raise bad_json("room_version is required")
        return 200, await self._invite(
            request, room_version, body.get("event"), body.get("invite_room_state", [])
        )

    async def invite_v1(self, request: FederationRequest) -> tuple[int, Any]:
        event = request.json_object()
        unsigned = event.get("unsigned")
        invite_state = unsigned.get("invite_room_state", []) if isinstance(unsigned, dict) else []
        # v1 carries no room version: only rooms of the original event format use it.
        return 200, [200, await self._invite(request, "1", event, invite_state)]


def routes(ctx: ServerContext) -> list[Route]:
    m = _Membership(ctx)
    v1 = "/_matrix/federation/v1"
    v2 = "/_matrix/federation/v2"
    r = "roomId"
    return [
        Route("GET", f"{v1}/make_join/{{roomId}}/{{userId}}", m.make_join, room_param=r),
        Route("GET", f"{v1}/make_knock/{{roomId}}/{{userId}}", m.make_knock, room_param=r),
        Route("GET", f"{v1}/make_leave/{{roomId}}/{{userId}}", m.make_leave, room_param=r),
        Route("PUT", f"{v1}/send_join/{{roomId}}/{{eventId}}", m.send_join_v1, room_param=r),
        Route("PUT", f"{v2}/send_join/{{roomId}}/{{eventId}}", m.send_join_v2, room_param=r),
        Route("PUT", f"{v1}/send_knock/{{roomId}}/{{eventId}}", m.send_knock, room_param=r),
        Route("PUT", f"{v1}/send_leave/{{roomId}}/{{eventId}}", m.send_leave_v1, room_param=r),
        Route("PUT", f"{v2}/send_leave/{{roomId}}/{{eventId}}", m.send_leave_v2, room_param=r),
        Route("PUT", f"{v1}/invite/{{roomId}}/{{eventId}}", m.invite_v1, room_param=r),
        Route("PUT", f"{v2}/invite/{{roomId}}/{{eventId}}", m.invite_v2, room_param=r),
    ]
