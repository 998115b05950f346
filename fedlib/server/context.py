"""Everything handlers share: configuration, dependencies and per-server state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedlib.crypto.signing import sign_json
from fedlib.errors import MatrixError
from fedlib.server.acl import server_allowed_by_acl
from fedlib.server.config import ServerConfig
from fedlib.server.errors import forbidden, not_found
from fedlib.server.ratelimit import RateLimiter

__all__ = ["ServerContext"]

log = Logger()

_ACL_KEY = ("m.room.server_acl", "")


@attrs.define(slots=True, eq=False)
class ServerContext:
    """Shared by the Resource tree and every handler (one per served homeserver)."""

    config: ServerConfig
    keyring: Any
    store: Any
    hooks: Any
    clock: IReactorTime
    rate_limiter: RateLimiter
    gaps: Any = None
    notary: Any = None
    on_origin_authenticated: Callable[[str], object] | None = None
    #: ``send_pdu(event_id, destinations)`` of the transaction sender; without it
    #: events are only queued in the store (the sender's sweep finds them).
    send_pdu: Callable[[str, list[str]], object] | None = None
    #: Created lazily by the transaction handler (it owns the room pipeline).
    extras: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def create(
        cls,
        config: ServerConfig,
        keyring: Any,
        store: Any,
        hooks: Any = None,
        *,
        clock: IReactorTime | None = None,
        gaps: Any = None,
        notary: Any = None,
        on_origin_authenticated: Callable[[str], object] | None = None,
        send_pdu: Callable[[str, list[str]], object] | None = None,
    ) -> ServerContext:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor  # type: ignore[assignment]
        assert clock is not None
        return cls(
            config=config,
            keyring=keyring,
            store=store,
            hooks=hooks,
            clock=clock,
            rate_limiter=RateLimiter(clock, config.rate_per_second, config.rate_burst),
            gaps=gaps,
            notary=notary,
            on_origin_authenticated=on_origin_authenticated,
            send_pdu=send_pdu,
        )

    @property
    def server_name(self) -> str:
        return self.config.server_name

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        return sign_json(obj, self.config.server_name, self.config.signing_key)

    def origin_seen(self, origin: str) -> None:
        """A correctly signed request arrived from ``origin``: it is up."""
        if self.on_origin_authenticated is None:
            return
        try:
            self.on_origin_authenticated(origin)
        except Exception:
            log.failure("on_origin_authenticated failed for {origin}", origin=origin)

    async def call_hook(self, name: str, *args: Any, default: Any = None) -> Any:
        """Call an embedder hook; a missing hook or a failing one gives ``default``."""
        method = getattr(self.hooks, name, None) if self.hooks is not None else None
        if method is None:
            return default
        try:
            return await defer.maybeDeferred(method, *args)
        except MatrixError:
            raise
        except Exception:
            log.failure("Hook {name} failed", name=name)
            return default

    async def room_version(self, room_id: str) -> str:
        """The version of a room we know, else 404 ``M_NOT_FOUND``."""
        version = await self.store.get_room_version(room_id)
        if version is None:
            raise not_found("Unknown room")
        return str(version)

    async def acl_content(self, room_id: str) -> dict[str, Any] | None:
        events = await self.store.get_current_state_events(room_id, ["m.room.server_acl"])
        stored = events.get(_ACL_KEY)
        if stored is None:
            return None
        content = stored.event.get("content")
        return content if isinstance(content, dict) else None

    async def check_acl(self, room_id: str, origin: str) -> None:
        """403 ``M_FORBIDDEN`` when the room's server ACL bans ``origin``."""
        if not server_allowed_by_acl(origin, await self.acl_content(room_id)):
            raise forbidden("Server is banned from this room by its server ACL")
