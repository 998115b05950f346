"""The client-server endpoints, as calls into fedlib's public embedding API.

:class:`ClientAPI` holds one handler per endpoint. Rooms, events and
memberships go through :class:`fedlib.service.FederationService` (its room
calls and handshakes) and are read back from its store
(:class:`fedlib.storage.interface.IFederationStore`); users, sessions, aliases
and the event stream are the client API's own (:class:`IClientStore`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import defer

from fedlib.clientapi.hooks import Notifier, strip_event
from fedlib.clientapi.passwords import PasswordHasher
from fedlib.clientapi.ratelimit import RateLimiter
from fedlib.clientapi.resource import Call
from fedlib.clientapi.store import IClientStore, Membership, Session
from fedlib.errors import InvalidIdError, MatrixError
from fedlib.ids import is_valid_local_user_id, parse_room_alias, parse_user_id
from fedlib.rooms.builder import Preset
from fedlib.rooms.local import INVITE_STATE_TYPES

__all__ = ["ClientAPI", "client_event", "token_hash"]

log = logging.getLogger(__name__)

#: The spec versions whose subset this API serves.
SPEC_VERSIONS = ("v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6")
DEFAULT_TIMELINE_LIMIT = 10
MAX_LIMIT = 100


def token_hash(token: str) -> str:
    """How an access token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def client_event(stored: Any) -> dict[str, Any]:
    """A :class:`~fedlib.storage.interface.StoredEvent` in the client-server
    event format."""
    ev = stored.event
    out: dict[str, Any] = {
        "type": ev.get("type"),
        "content": ev.get("content", {}),
        "sender": ev.get("sender"),
        "origin_server_ts": ev.get("origin_server_ts", 0),
        "event_id": stored.event_id,
        "room_id": stored.room_id,
        "unsigned": {},
    }
    if "state_key" in ev:
        out["state_key"] = ev["state_key"]
    if "redacts" in ev:
        out["redacts"] = ev["redacts"]
    return out


def _forbidden(msg: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", msg)


def _bad(msg: str, errcode: str = "M_BAD_JSON") -> MatrixError:
    return MatrixError(400, errcode, msg)


def _opt_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise _bad(f"{key} must be a string")
    return value


def _int_param(query: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    text = query.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _bad(f"{key} must be an integer", "M_INVALID_PARAM") from None
    if value < low:
        raise _bad(f"{key} must be at least {low}", "M_INVALID_PARAM")
    return min(value, high)


class ClientAPI:
    """The endpoints; ``federation`` is a running
    :class:`~fedlib.service.FederationService` whose hooks are the
    :class:`~fedlib.clientapi.hooks.ClientHooks` sharing ``store`` and ``notifier``."""

    def __init__(
        self,
        federation: Any,
        store: Any,
        notifier: Notifier,
        *,
        enable_registration: bool = False,
        hasher: PasswordHasher | None = None,
        clock: Any = None,
        max_body: int = 1024 * 1024,
    ) -> None:
        if not IClientStore.providedBy(store):
            raise TypeError("store must provide IClientStore")
        self.fed = federation
        self.store = store
        self.notifier = notifier
        self.server_name: str = federation.config.server_name
        self.enable_registration = enable_registration
        self.hasher = hasher or PasswordHasher()
        self.clock = clock if clock is not None else federation.reactor
        self.max_body = max_body
        #: Failed logins and registrations per client address.
        self.login_limiter = RateLimiter(self.clock, rate=0.5, burst=10)
        #: Sends in flight per (token, endpoint, txnId): a retry waits for the
        #: first attempt.
        self._txns_in_flight: dict[tuple[str, str, str], list[defer.Deferred[str]]] = {}

    # -- identity --------------------------------------------------------------------

    def versions(self) -> dict[str, Any]:
        return {"versions": list(SPEC_VERSIONS), "unstable_features": {}}

    async def authenticate(self, token: str) -> tuple[Session, str]:
        hashed = token_hash(token)
        session = await self.store.get_session(hashed)
        if session is None:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown access token", soft_logout=False)
        return session, hashed

    def _local_user_id(self, name: str) -> str:
        user_id = name if name.startswith("@") else f"@{name}:{self.server_name}"
        if not is_valid_local_user_id(user_id) or not user_id.endswith(":" + self.server_name):
            raise _bad(f"Invalid user ID {user_id!r}", "M_INVALID_USERNAME")
        return user_id

    async def _new_session(self, user_id: str, device_id: str | None) -> dict[str, Any]:
        token = "fl_" + secrets.token_urlsafe(32)
        device = device_id or secrets.token_hex(5).upper()
        await self.store.add_session(Session(user_id, device, token_hash(token)))
        return {
            "user_id": user_id,
            "access_token": token,
            "device_id": device,
            "home_server": self.server_name,
        }

    async def login_flows(self, call: Call) -> Any:
        return {"flows": [{"type": "m.login.password"}]}

    async def login(self, call: Call) -> Any:
        self.login_limiter.check(call.client_ip)
        body = call.json()
        if body.get("type") != "m.login.password":
            raise _bad("Only m.login.password is supported", "M_UNKNOWN")
        identifier = body.get("identifier")
        user = None
        if isinstance(identifier, dict):
            if identifier.get("type") != "m.id.user":
                raise _bad("Only m.id.user identifiers are supported", "M_UNKNOWN")
            user = identifier.get("user")
        else:
            user = body.get("user")
        password = body.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            raise _bad("user and password are required", "M_MISSING_PARAM")
        device_id = _opt_str(body, "device_id")
        try:
            user_id = self._local_user_id(user.lower() if not user.startswith("@") else user)
        except MatrixError:
            user_id = None
        account = await self.store.get_account(user_id) if user_id else None
        ok = await self.hasher.check(password, account.password_hash if account else None)
        if not ok or user_id is None:
            self.login_limiter.record(call.client_ip)
            raise _forbidden("Invalid username or password")
        return await self._new_session(user_id, device_id)

    async def register_available(self, call: Call) -> Any:
        name = call.query.get("username")
        if not name:
            raise _bad("username is required", "M_MISSING_PARAM")
        user_id = self._local_user_id(name)
        if await self.store.get_account(user_id) is not None:
            raise _bad("User ID already taken", "M_USER_IN_USE")
        return {"available": True}

    async def register(self, call: Call) -> Any:
        if not self.enable_registration:
            raise _forbidden("Registration is disabled")
        if call.query.get("kind", "user") != "user":
            raise _forbidden("Guest access is disabled")
        self.login_limiter.check(call.client_ip)
        body = call.json()
        auth = body.get("auth")
        if not isinstance(auth, dict) or auth.get("type") != "m.login.dummy":
            # User-interactive authentication: one stage, m.login.dummy.
            raise MatrixError(
                401,
                "M_FORBIDDEN",
                "Authentication required",
                flows=[{"stages": ["m.login.dummy"]}],
                params={},
                session=secrets.token_urlsafe(12),
            )
        username = _opt_str(body, "username")
        password = _opt_str(body, "password")
        device_id = _opt_str(body, "device_id")
        user_id = self._local_user_id(username or secrets.token_hex(6))
        if await self.store.get_account(user_id) is not None:
            raise _bad("User ID already taken", "M_USER_IN_USE")
        hashed = await self.hasher.hash(password) if password else None
        if not await self.store.create_account(user_id, hashed, self._now_ms()):
            raise _bad("User ID already taken", "M_USER_IN_USE")
        self.login_limiter.record(call.client_ip)
        if body.get("inhibit_login") is True:
            return {"user_id": user_id, "home_server": self.server_name}
        return await self._new_session(user_id, device_id)

    async def logout(self, call: Call) -> Any:
        assert call.token_hash is not None
        await self.store.delete_sessions([call.token_hash])
        return {}

    async def logout_all(self, call: Call) -> Any:
        sessions = await self.store.list_sessions(call.user_id)
        await self.store.delete_sessions([s.token_hash for s in sessions])
        return {}

    async def whoami(self, call: Call) -> Any:
        assert call.session is not None
        return {"user_id": call.user_id, "device_id": call.session.device_id, "is_guest": False}

    async def capabilities(self, call: Call) -> Any:
        versions = {v: "stable" for v in self.fed.config.room_versions}
        return {
            "capabilities": {
                "m.room_versions": {
                    "default": self.fed.config.default_room_version,
                    "available": versions,
                },
                "m.change_password": {"enabled": False},
            }
        }

    async def pushrules(self, call: Call) -> Any:
        return {"global": {}}

    async def create_filter(self, call: Call) -> Any:
        if call.params["userId"] != call.user_id:
            raise _forbidden("Cannot create filters for other users")
        return {"filter_id": await self.store.add_filter(call.user_id, call.json())}

    async def get_filter(self, call: Call) -> Any:
        if call.params["userId"] != call.user_id:
            raise _forbidden("Cannot read filters of other users")
        found = await self.store.get_filter(call.user_id, call.params["filterId"])
        if found is None:
            raise MatrixError(404, "M_NOT_FOUND", "No such filter")
        return found

    async def get_profile(self, call: Call) -> Any:
        user_id = call.params["userId"]
        if not user_id.endswith(":" + self.server_name):
            raise MatrixError(404, "M_NOT_FOUND", "Remote profiles are not looked up")
        if await self.store.get_account(user_id) is None:
            raise MatrixError(404, "M_NOT_FOUND", "No such user")
        profile = {"displayname": user_id[1:].split(":", 1)[0]}
        field = call.params.get("field")
        if field is None:
            return profile
        if field not in profile:
            raise MatrixError(404, "M_NOT_FOUND", "No such profile field")
        return {field: profile[field]}

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    # -- rooms ------------------------------------------------------------------------

    async def _membership(self, room_id: str, user_id: str) -> Membership | None:
        return await self.store.get_membership(room_id, user_id)  # type: ignore[no-any-return]

    async def _require_joined(self, room_id: str, user_id: str) -> Membership:
        """The caller's membership, which must be ``join``; an unknown room is
        ``404``, a room the caller is not in ``403`` (both before anything is done)."""
        if not room_id.startswith("!"):
            raise _bad(f"Not a room ID: {room_id!r}", "M_INVALID_PARAM")
        member = await self._membership(room_id, user_id)
        if member is not None and member.membership == "join":
            return member
        if await self.fed.store.get_room(room_id) is None:
            raise MatrixError(404, "M_NOT_FOUND", f"Unknown room {room_id}")
        raise _forbidden(f"{user_id} is not in room {room_id}")

    async def create_room(self, call: Call) -> Any:
        body = call.json()
        visibility = body.get("visibility", "private")
        if visibility not in ("public", "private"):
            raise _bad("visibility must be public or private")
        preset = body.get("preset", "public_chat" if visibility == "public" else "private_chat")
        try:
            preset = Preset(preset)
        except ValueError:
            raise _bad(f"Unknown preset {preset!r}") from None
        room_version = _opt_str(body, "room_version")
        if room_version is not None and room_version not in self.fed.config.room_versions:
            raise _bad(
                f"Room version {room_version} is not supported", "M_UNSUPPORTED_ROOM_VERSION"
            )
        name, topic = _opt_str(body, "name"), _opt_str(body, "topic")
        invite = body.get("invite", [])
        if not isinstance(invite, list) or not all(isinstance(u, str) for u in invite):
            raise _bad("invite must be a list of user IDs")
        for user in invite:
            try:
                parse_user_id(user)
            except InvalidIdError:
                raise _bad(f"Invalid user ID {user!r}", "M_INVALID_PARAM") from None
        initial_state = body.get("initial_state", [])
        if not isinstance(initial_state, list) or not all(
            isinstance(s, dict)
            and isinstance(s.get("type"), str)
            and isinstance(s.get("state_key", ""), str)
            and isinstance(s.get("content"), dict)
            for s in initial_state
        ):
            raise _bad("initial_state must be a list of {type, state_key, content}")
        for key in ("power_level_content_override", "creation_content"):
            if body.get(key) is not None and not isinstance(body[key], dict):
                raise _bad(f"{key} must be an object")
        alias = None
        alias_name = _opt_str(body, "room_alias_name")
        if alias_name is not None:
            alias = f"#{alias_name}:{self.server_name}"
            self._check_alias(alias)
            if await self.store.get_alias(alias) is not None:
                raise _bad(f"{alias} is already in use", "M_ROOM_IN_USE")
        room_id = await self.fed.create_room(
            call.user_id,
            room_version,
            preset=preset,
            initial_state=initial_state,
            name=name,
            topic=topic,
            invite=invite,
            power_level_content_override=body.get("power_level_content_override"),
            creation_content=body.get("creation_content"),
        )
        if alias is not None and await self.store.create_alias(alias, room_id, call.user_id):
            await self.fed.send_event(
                room_id, call.user_id, "m.room.canonical_alias", {"alias": alias}, ""
            )
        if visibility == "public":
            await self.store.set_room_public(room_id, True)
        return {"room_id": room_id}

    async def joined_rooms(self, call: Call) -> Any:
        rows = await self.store.get_memberships(call.user_id)
        return {"joined_rooms": [m.room_id for m in rows if m.membership == "join"]}

    async def _resolve_room(self, room_or_alias: str) -> tuple[str, list[str]]:
        if room_or_alias.startswith("!"):
            return room_or_alias, []
        if room_or_alias.startswith("#"):
            found = await self._lookup_alias(room_or_alias)
            return found["room_id"], list(found["servers"])
        raise _bad(f"Not a room ID or alias: {room_or_alias!r}", "M_INVALID_PARAM")

    def _via(self, call: Call, room_id: str, extra: Sequence[str]) -> list[str]:
        servers = list(call.query_all.get("server_name", ())) + list(call.query_all.get("via", ()))
        servers += list(extra)
        _, sep, domain = room_id.partition(":")
        if room_id.startswith("!") and sep:
            servers.append(domain)
        seen: list[str] = []
        for s in servers:
            if s not in seen and s != self.server_name:
                seen.append(s)
        return seen

    async def _inviter_servers(self, room_id: str, user_id: str) -> list[str]:
        member = await self._membership(room_id, user_id)
        if member is not None and member.event is not None:
            sender = member.event.get("sender")
            if isinstance(sender, str) and ":" in sender:
                return [sender.split(":", 1)[1]]
        return []

    async def join(self, call: Call) -> Any:
        target = call.params.get("roomIdOrAlias") or call.params["roomId"]
        call.json()  # Only checked: third-party signed joins are not supported.
        room_id, servers = await self._resolve_room(target)
        via = self._via(call, room_id, servers + await self._inviter_servers(room_id, call.user_id))
        member = await self._membership(room_id, call.user_id)
        if member is not None and member.membership == "join":
            return {"room_id": room_id}
        if not via and not await self._server_in_room(room_id):
            raise MatrixError(404, "M_NOT_FOUND", f"Unknown room {room_id} and no server to ask")
        event_id = await self.fed.join_room(room_id, call.user_id, via)
        await self._record(room_id, call.user_id, "join", event_id)
        return {"room_id": room_id}

    async def knock(self, call: Call) -> Any:
        body = call.json()
        reason = _opt_str(body, "reason")
        room_id, servers = await self._resolve_room(call.params["roomIdOrAlias"])
        via = self._via(call, room_id, servers)
        if await self._server_in_room(room_id):
            content: dict[str, Any] = {"membership": "knock"}
            if reason is not None:
                content["reason"] = reason
            event_id = await self.fed.send_event(
                room_id, call.user_id, "m.room.member", content, call.user_id
            )
            await self._record(room_id, call.user_id, "knock", event_id)
            return {"room_id": room_id}
        if not via:
            raise MatrixError(404, "M_NOT_FOUND", f"Unknown room {room_id} and no server to ask")
        result = await self.fed.knock_room(room_id, call.user_id, via, reason)
        head = await self.store.set_stripped_membership(
            room_id,
            call.user_id,
            "knock",
            dict(result.event),
            [strip_event(e) for e in result.knock_room_state],
        )
        self.notifier.advance(head)
        return {"room_id": room_id}

    async def _server_in_room(self, room_id: str) -> bool:
        if await self.fed.store.get_room(room_id) is None:
            return False
        return self.server_name in await self.fed.store.get_joined_servers(room_id)

    async def _record(self, room_id: str, user_id: str, membership: str, event_id: str) -> None:
        # Memberships made through handshakes are not always reported by the
        # hooks (a rejected invite of a room we are not in); recording is idempotent.
        head = await self.store.append_events(
            room_id, [event_id], [(user_id, membership, event_id)]
        )
        self.notifier.advance(head)

    def _target(self, body: Mapping[str, Any]) -> str:
        user = body.get("user_id")
        if not isinstance(user, str):
            raise _bad("user_id is required", "M_MISSING_PARAM")
        try:
            parse_user_id(user)
        except InvalidIdError:
            raise _bad(f"Invalid user ID {user!r}", "M_INVALID_PARAM") from None
        return user

    async def _member_action(self, call: Call, action: str) -> Any:
        body = call.json()
        target = self._target(body)
        reason = _opt_str(body, "reason")
        room_id = call.params["roomId"]
        await self._require_joined(room_id, call.user_id)
        await getattr(self.fed, action)(room_id, call.user_id, target, reason)
        return {}

    async def invite(self, call: Call) -> Any:
        return await self._member_action(call, "invite")

    async def kick(self, call: Call) -> Any:
        return await self._member_action(call, "kick")

    async def ban(self, call: Call) -> Any:
        return await self._member_action(call, "ban")

    async def unban(self, call: Call) -> Any:
        return await self._member_action(call, "unban")

    async def leave(self, call: Call) -> Any:
        body = call.json()
        reason = _opt_str(body, "reason")
        room_id = call.params["roomId"]
        member = await self._membership(room_id, call.user_id)
        if member is None or member.membership in ("leave", "ban"):
            if await self.fed.store.get_room(room_id) is None and member is None:
                raise MatrixError(404, "M_NOT_FOUND", f"Unknown room {room_id}")
            raise _forbidden(f"{call.user_id} is not in room {room_id}")
        servers = self._via(call, room_id, await self._inviter_servers(room_id, call.user_id))
        event_id = await self.fed.leave(room_id, call.user_id, reason, servers)
        await self._record(room_id, call.user_id, "leave", event_id)
        return {}

    async def send(self, call: Call) -> Any:
        content = call.json()
        room_id, txn_id = call.params["roomId"], call.params["txnId"]
        event_type = call.params["eventType"]
        token = call.token_hash
        assert token is not None
        # The spec scopes a transaction ID to the device (here its access token)
        # and the endpoint path, which names the room and the event type.
        scope = f"send/{room_id}/{event_type}"
        key = (token, scope, txn_id)
        # Claimed before any await, so that a retry arriving at any moment either
        # waits for this attempt or finds its stored result.
        running = self._txns_in_flight.get(key)
        if running is not None:
            waiter: defer.Deferred[str] = defer.Deferred()
            running.append(waiter)
            return {"event_id": await waiter}
        waiters: list[defer.Deferred[str]] = []
        self._txns_in_flight[key] = waiters
        try:
            earlier = await self.store.get_txn(token, txn_id, scope)
            if earlier is not None:
                event_id: str = earlier
            else:
                await self._require_joined(room_id, call.user_id)
                event_id = await self.fed.send_event(room_id, call.user_id, event_type, content)
                await self.store.store_txn(token, txn_id, event_id, scope)
        except Exception as e:
            for w in waiters:
                w.errback(e)
            raise
        finally:
            self._txns_in_flight.pop(key, None)
        for w in waiters:
            w.callback(event_id)
        return {"event_id": event_id}

    async def put_state(self, call: Call) -> Any:
        content = call.json()
        room_id = call.params["roomId"]
        await self._require_joined(room_id, call.user_id)
        event_id = await self.fed.send_event(
            room_id,
            call.user_id,
            call.params["eventType"],
            content,
            call.params.get("stateKey", ""),
        )
        return {"event_id": event_id}

    async def _state_events(self, room_id: str, types: Sequence[str] | None = None) -> Any:
        return await self.fed.store.get_current_state_events(room_id, types)

    async def get_state(self, call: Call) -> Any:
        room_id = call.params["roomId"]
        await self._require_joined(room_id, call.user_id)
        state = await self._state_events(room_id)
        return [client_event(e) for _, e in sorted(state.items())]

    async def get_state_event(self, call: Call) -> Any:
        room_id = call.params["roomId"]
        await self._require_joined(room_id, call.user_id)
        etype, skey = call.params["eventType"], call.params.get("stateKey", "")
        state = await self._state_events(room_id, [etype])
        found = state.get((etype, skey))
        if found is None:
            raise MatrixError(404, "M_NOT_FOUND", "Event not found")
        return found.event.get("content", {})

    async def members(self, call: Call) -> Any:
        room_id = call.params["roomId"]
        await self._require_joined(room_id, call.user_id)
        state = await self._state_events(room_id, ["m.room.member"])
        wanted = call.query.get("membership")
        chunk = [
            client_event(e)
            for _, e in sorted(state.items())
            if wanted is None or e.event.get("content", {}).get("membership") == wanted
        ]
        return {"chunk": chunk}

    async def joined_members(self, call: Call) -> Any:
        room_id = call.params["roomId"]
        await self._require_joined(room_id, call.user_id)
        state = await self._state_events(room_id, ["m.room.member"])
        joined = {}
        for (_t, user), e in state.items():
            content = e.event.get("content", {})
            if content.get("membership") == "join":
                joined[user] = {
                    "display_name": content.get("displayname"),
                    "avatar_url": content.get("avatar_url"),
                }
        return {"joined": joined}

    async def messages(self, call: Call) -> Any:
        from fedlib.clientapi.sync import paginate

        room_id = call.params["roomId"]
        await self._require_joined(room_id, call.user_id)
        direction = call.query.get("dir", "b")
        if direction not in ("b", "f"):
            raise _bad("dir must be b or f", "M_INVALID_PARAM")
        limit = _int_param(call.query, "limit", 10, 0, MAX_LIMIT)
        return await paginate(self, room_id, call.query.get("from"), direction, limit)

    async def sync(self, call: Call) -> Any:
        from fedlib.clientapi.sync import sync

        return await sync(self, call)

    # -- directory ----------------------------------------------------------------------

    def _check_alias(self, alias: str) -> str:
        try:
            parsed = parse_room_alias(alias)
        except InvalidIdError:
            raise _bad(f"Invalid room alias {alias!r}", "M_INVALID_PARAM") from None
        return parsed.domain

    async def put_alias(self, call: Call) -> Any:
        alias = call.params["roomAlias"]
        body = call.json()
        room_id = body.get("room_id")
        if not isinstance(room_id, str):
            raise _bad("room_id is required", "M_MISSING_PARAM")
        if self._check_alias(alias) != self.server_name:
            raise _bad("Aliases must be on this server", "M_INVALID_PARAM")
        await self._require_joined(room_id, call.user_id)
        if not await self.store.create_alias(alias, room_id, call.user_id):
            raise MatrixError(409, "M_UNKNOWN", f"{alias} already exists")
        return {}

    async def _lookup_alias(self, alias: str) -> dict[str, Any]:
        domain = self._check_alias(alias)
        if domain == self.server_name:
            found = await self.store.get_alias(alias)
            if found is None:
                raise MatrixError(404, "M_NOT_FOUND", f"Room alias {alias} not found")
            servers = {self.server_name} | set(await self.fed.store.get_joined_servers(found[0]))
            return {"room_id": found[0], "servers": sorted(servers)}
        try:
            answer = await self.fed.client.query_directory(domain, alias)
        except MatrixError as e:
            if e.code == 404:
                raise MatrixError(404, "M_NOT_FOUND", f"Room alias {alias} not found") from None
            raise MatrixError(502, "M_UNKNOWN", f"{domain} did not answer: {e.msg}") from None
        except defer.CancelledError:
            raise
        except Exception as e:
            raise MatrixError(502, "M_UNKNOWN", f"{domain} did not answer: {e}") from None
        return {"room_id": answer.room_id, "servers": list(answer.servers)}

    async def get_alias(self, call: Call) -> Any:
        return await self._lookup_alias(call.params["roomAlias"])

    async def delete_alias(self, call: Call) -> Any:
        alias = call.params["roomAlias"]
        self._check_alias(alias)
        found = await self.store.get_alias(alias)
        if found is None:
            raise MatrixError(404, "M_NOT_FOUND", f"Room alias {alias} not found")
        if found[1] != call.user_id:
            raise _forbidden("Only the alias's creator may delete it")
        await self.store.delete_alias(alias)
        return {}

    async def get_room_visibility(self, call: Call) -> Any:
        room_id = call.params["roomId"]
        if await self.fed.store.get_room(room_id) is None:
            raise MatrixError(404, "M_NOT_FOUND", f"Unknown room {room_id}")
        public = await self.store.is_room_public(room_id)
        return {"visibility": "public" if public else "private"}

    async def set_room_visibility(self, call: Call) -> Any:
        from fedlib.auth.power_levels import get_user_power_level

        body = call.json()
        room_id = call.params["roomId"]
        await self._require_joined(room_id, call.user_id)
        visibility = body.get("visibility", "public")
        if visibility not in ("public", "private"):
            raise _bad("visibility must be public or private", "M_INVALID_PARAM")
        # Whoever may set the room's canonical alias may publish it.
        state = await self._state_events(room_id, ["m.room.power_levels", "m.room.create"])
        levels = state.get(("m.room.power_levels", ""))
        create = state.get(("m.room.create", ""))
        version = await self.fed.store.get_room_version(room_id)
        have = get_user_power_level(
            version,
            call.user_id,
            levels.event if levels is not None else None,
            create.event if create is not None else None,
        )
        need: Any = 0
        if levels is not None:
            content = levels.event.get("content", {})
            events = content.get("events", {})
            need = events.get("m.room.canonical_alias", content.get("state_default", 50))
        if not isinstance(need, int) or have < need:
            raise _forbidden("Not allowed to publish this room in the room directory")
        await self.store.set_room_public(room_id, visibility == "public")
        return {}

    async def _public_rooms(
        self, server: str | None, limit: int | None, since: str | None, search: Any
    ) -> Any:
        from fedlib.clientapi.directory import public_rooms

        if server is None or server == self.server_name:
            return await public_rooms(self.store, self.fed.store, limit, since, search)
        try:
            return await self.fed.client.get_public_rooms(
                server, limit=limit, since=since, search_filter=search
            )
        except defer.CancelledError:
            raise
        except Exception as e:
            raise MatrixError(502, "M_UNKNOWN", f"{server} did not answer: {e}") from None

    async def public_rooms_get(self, call: Call) -> Any:
        limit = _int_param(call.query, "limit", 0, 0, 500) or None
        return await self._public_rooms(
            call.query.get("server"), limit, call.query.get("since"), None
        )

    async def public_rooms_post(self, call: Call) -> Any:
        body = call.json()
        limit = body.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise _bad("limit must be an integer", "M_INVALID_PARAM")
        since = _opt_str(body, "since")
        search = body.get("filter")
        if search is not None and not isinstance(search, dict):
            raise _bad("filter must be an object")
        return await self._public_rooms(call.query.get("server"), limit, since, search)

    # -- helpers for sync -----------------------------------------------------------------

    async def stripped_room_state(self, room_id: str) -> list[dict[str, Any]]:
        """Stripped state of a room this server is in, for local invites and knocks."""
        state = await self._state_events(room_id, list(INVITE_STATE_TYPES))
        return [strip_event(e.event) for (_t, key), e in sorted(state.items()) if key == ""]
