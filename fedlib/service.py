"""The embedding API: one Twisted service that is a federating Matrix server.

:class:`FederationService` is built from a :class:`fedlib.config.FederationConfig`
and owns everything else: the keyring, the inbound Resource tree, the outbound
client and transaction sender, and local event creation. An embedder either
mounts :attr:`FederationService.resource` in its own web server or lists
endpoints in ``config.listen`` for the service to open itself::

    config = FederationConfig(server_name, signing_key, store, hooks=MyHooks())
    fed = FederationService(config)
    fed.setServiceParent(application)
    room_id = await fed.create_room("@alice:" + server_name, name="Hi")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Site

from fedlib.client.gaps import GapConfig, GapFiller
from fedlib.client.handshakes import Handshakes, KnockResult
from fedlib.client.sender import ClientTransactionTransport, SenderConfig, TransactionSender
from fedlib.client.transport import FederationClient
from fedlib.config import FederationConfig
from fedlib.crypto.keys import (
    decode_verify_key_base64,
    encode_verify_key_base64,
    get_verify_key,
    key_id,
    split_key_id,
)
from fedlib.keyring import FetchedKey, Keyring, Notary
from fedlib.rooms.builder import Preset, StateTemplate
from fedlib.rooms.local import LocalRooms
from fedlib.server.config import OldVerifyKey, ServerConfig
from fedlib.server.resource import build_resource, build_site
from fedlib.storage.interface import OwnKey

__all__ = ["FederationService"]

log = Logger()


class FederationService(service.Service):
    """A federating Matrix server as a Twisted service.

    ``reactor`` defaults to the global reactor. ``keyring``, ``client`` and
    ``sender`` may be injected (tests, custom transports); otherwise they are built
    from ``config``. The store is closed by :meth:`stopService`.
    """

    def __init__(
        self,
        config: FederationConfig,
        *,
        reactor: Any = None,
        keyring: Any = None,
        client: Any = None,
        sender: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.config = config
        self.reactor = reactor
        self.store = config.store
        self.hooks = config.hooks
        self.client = client if client is not None else self._make_client()
        self.keyring = keyring if keyring is not None else self._make_keyring()
        self.sender = sender if sender is not None else self._make_sender()
        self.gaps = self._make_gaps()
        self.resource: IResource = self._make_resource()
        self.rooms = LocalRooms(
            server_name=config.server_name,
            signing_key=config.signing_key,
            store=self.store,
            clock=reactor,
            sender=self.sender,
            hooks=self.hooks,
            remote_inviter=self._remote_invite,
            room_versions=config.room_versions,
            default_room_version=config.default_room_version,
            default_server_acl=config.default_server_acl,
        )
        #: Join, knock, leave and invite with rooms this server is not in.
        self.handshakes = Handshakes(
            server_name=config.server_name,
            signing_key=config.signing_key,
            client=self.client,
            store=self.store,
            keyring=self.keyring,
            clock=reactor,
            hooks=self.hooks,
            gaps=self.gaps,
            local_rooms=self.rooms,
            room_versions=config.room_versions,
        )
        self._ports: list[Any] = []
        #: Endpoints actually listened on, in ``config.listen`` order (IListeningPort).
        self.ports: list[Any] = self._ports

    # -- construction ------------------------------------------------------------

    def _make_client(self) -> FederationClient:
        c = self.config
        return FederationClient(
            c.server_name,
            c.signing_key,
            self.reactor,
            verify_tls=c.tls.verify,
            ca_bundle=c.tls.ca_bundle,
            store=self.store,
            default_timeout=c.limits.request_timeout,
        )

    def _make_keyring(self) -> Keyring:
        notaries = [
            Notary(
                n.server_name,
                {
                    kid: decode_verify_key_base64(*split_key_id(kid), b64)
                    for kid, b64 in n.verify_keys.items()
                },
            )
            for n in self.config.notaries
        ]
        key = self.config.signing_key
        # Our own keys never need a request: valid as long as we run with them.
        local = {key_id(key): FetchedKey(key_id(key), get_verify_key(key), 2**62)}
        for old in self.config.old_signing_keys:
            local[old.key_id] = FetchedKey(
                old.key_id, old.verify_key, old.expired_ts, expired_ts=old.expired_ts
            )
        return Keyring(
            self.client,
            self.reactor,
            notaries=notaries,
            local_server_name=self.config.server_name,
            local_keys=local,
            store=self.store,
        )

    def _make_sender(self) -> TransactionSender:
        return TransactionSender(
            self.config.server_name,
            self.store,
            ClientTransactionTransport(self.client),
            self.reactor,
            SenderConfig(instance_name=self.config.instance_name),
        )

    def _make_gaps(self) -> GapFiller:
        limits = self.config.limits
        gap_config = GapConfig(
            timeout=limits.gap_fill_timeout, max_missing_events=limits.max_missing_events
        )
        return GapFiller(self.client, self.store, self.keyring, self.reactor, gap_config)

    def server_config(self) -> ServerConfig:
        """The :class:`fedlib.server.config.ServerConfig` derived from ``config``."""
        c = self.config
        return ServerConfig(
            server_name=c.server_name,
            signing_key=c.signing_key,
            old_verify_keys={
                k.key_id: OldVerifyKey(k.verify_key, k.expired_ts) for k in c.old_signing_keys
            },
            max_body_bytes=c.limits.max_request_body,
            rate_per_second=c.limits.requests_per_second,
            rate_burst=c.limits.request_burst,
            pdu_timeout_seconds=c.limits.gap_fill_timeout * 2,
            key_validity_period_ms=c.limits.key_validity_ms,
            supported_room_versions=c.room_versions,
        )

    def _make_resource(self) -> IResource:
        def origin_seen(origin: str) -> None:
            d = defer.maybeDeferred(self.sender.reset_backoff, origin)
            d.addErrback(lambda f: log.failure("Resetting backoff of {o}", f, o=origin))

        return build_resource(
            self.server_config(),
            self.keyring,
            self.store,
            self.hooks,
            clock=self.reactor,
            gaps=self.gaps,
            on_origin_authenticated=origin_seen,
            send_pdu=self.sender.send_pdu,
        )

    def site(self, **kwargs: Any) -> Site:
        """A :class:`~twisted.web.server.Site` serving :attr:`resource` with the
        request body limit enforced while reading."""
        return build_site(self.resource, self.config.limits.max_request_body, **kwargs)

    # -- lifecycle ------------------------------------------------------------------

    @defer.inlineCallbacks
    def _start(self) -> Any:
        yield self._record_own_keys()
        site = self.site()
        for description in self.config.listen:
            endpoint = serverFromString(self.reactor, description)  # type: ignore[no-untyped-call]
            port = yield endpoint.listen(site)
            self._ports.append(port)
            log.info("Federation listener on {desc}", desc=description)
        yield defer.maybeDeferred(self.sender.start)

    def _record_own_keys(self) -> Any:
        # Published in the store so that every process sharing it (and the
        # notary code) sees the same keys.
        key = self.config.signing_key
        own = OwnKey(
            key_id(key),
            encode_verify_key_base64(get_verify_key(key)),
            None,
        )
        return defer.maybeDeferred(self.store.store_own_key, own)

    def startService(self) -> defer.Deferred[None]:  # type: ignore[override]
        """Record our keys, open the listeners in ``config.listen`` and resume the
        sender. The Deferred fails (and the service stays stopped) when a listener
        cannot be opened."""
        super().startService()  # type: ignore[no-untyped-call]
        d: defer.Deferred[None] = self._start()

        def failed(f: Any) -> Any:
            self.running = False
            return f

        d.addErrback(failed)
        self.started = d
        return d

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop accepting connections, stop scheduling sends (queued events stay in
        the store for the next start) and close the store."""
        super().stopService()  # type: ignore[no-untyped-call]
        ports, self._ports[:] = list(self._ports), []
        for port in ports:
            yield defer.maybeDeferred(port.stopListening)
        self.sender.stop()
        # Let transactions already on the wire finish (their PDUs stay queued in
        # the store until acknowledged, so waiting is only about not cutting a
        # delivery short), but never longer than one request may take.
        wait_idle = getattr(self.sender, "wait_idle", None)  # optional on injected senders
        if wait_idle is not None:
            yield defer.maybeDeferred(wait_idle, self.config.limits.request_timeout)
        close_connections = getattr(self.client, "close_connections", None)
        if close_connections is not None:  # optional on injected clients
            # Idle keep-alive connections would otherwise outlive the service.
            yield close_connections()
        yield defer.maybeDeferred(self.store.close)

    # -- the embedder's calls -------------------------------------------------------

    def create_room(
        self,
        creator: str,
        room_version: str | None = None,
        *,
        preset: Preset | str = Preset.PRIVATE_CHAT,
        initial_state: Sequence[StateTemplate | Mapping[str, Any]] = (),
        name: str | None = None,
        topic: str | None = None,
        invite: Sequence[str] = (),
        power_level_content_override: Mapping[str, Any] | None = None,
        additional_creators: Sequence[str] = (),
        creation_content: Mapping[str, Any] | None = None,
    ) -> defer.Deferred[str]:
        """Create a room hosted here; Deferred[room_id]. See
        :meth:`fedlib.rooms.local.LocalRooms.create_room`."""
        d: defer.Deferred[str] = self.rooms.create_room(
            creator,
            room_version,
            preset=preset,
            initial_state=initial_state,
            name=name,
            topic=topic,
            invite=invite,
            power_level_content_override=power_level_content_override,
            additional_creators=additional_creators,
            creation_content=creation_content,
        )
        return d

    def send_event(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        *,
        redacts: str | None = None,
    ) -> defer.Deferred[str]:
        """Send an event as a local user; Deferred[event_id]."""
        return self.rooms.send_event(
            room_id, sender, event_type, content, state_key, redacts=redacts
        )

    def invite(
        self, room_id: str, sender: str, target: str, reason: str | None = None
    ) -> defer.Deferred[str]:
        """Invite ``target`` (local or remote) into a room this server is in."""
        return self.rooms.invite(room_id, sender, target, reason)

    def kick(
        self, room_id: str, sender: str, target: str, reason: str | None = None
    ) -> defer.Deferred[str]:
        return self.rooms.kick(room_id, sender, target, reason)

    def ban(
        self, room_id: str, sender: str, target: str, reason: str | None = None
    ) -> defer.Deferred[str]:
        return self.rooms.ban(room_id, sender, target, reason)

    def unban(
        self, room_id: str, sender: str, target: str, reason: str | None = None
    ) -> defer.Deferred[str]:
        return self.rooms.unban(room_id, sender, target, reason)

    @defer.inlineCallbacks
    def join_room(
        self,
        room_id_or_alias: str,
        user_id: str,
        servers: Sequence[str] = (),
        omit_members: bool = False,
    ) -> Any:
        """Join ``user_id`` to a room: a local membership event when this server is
        already in the room, else the ``make_join``/``send_join`` handshake through
        ``servers`` (``omit_members`` asks for a partial-state join).
        Deferred[event_id]."""
        if not room_id_or_alias.startswith("#") and (yield self._in_room(room_id_or_alias)):
            return (yield self.rooms.join_local(room_id_or_alias, user_id))
        result = yield self.handshakes.join_room(
            room_id_or_alias, user_id, list(servers), omit_members
        )
        return result.event_id

    def knock_room(
        self, room_id: str, user_id: str, servers: Sequence[str] = (), reason: str | None = None
    ) -> defer.Deferred[Any]:
        """Knock on a remote room (``make_knock``/``send_knock``);
        Deferred[:class:`fedlib.client.handshakes.KnockResult`]."""
        d: defer.Deferred[KnockResult] = self.handshakes.knock_room(
            room_id, user_id, list(servers), reason
        )
        return d

    @defer.inlineCallbacks
    def leave(
        self,
        room_id: str,
        user_id: str,
        reason: str | None = None,
        servers: Sequence[str] = (),
    ) -> Any:
        """Leave a room, or reject an invite / rescind a knock for a room this
        server is not in (``make_leave``/``send_leave`` through ``servers`` and the
        inviting server). Deferred[event_id]."""
        if (yield self._in_room(room_id)):
            return (yield self.rooms.leave(room_id, user_id, reason))
        return (yield self.handshakes.reject_invite(room_id, user_id, list(servers), reason))

    @defer.inlineCallbacks
    def _in_room(self, room_id: str) -> Any:
        info = yield self.store.get_room(room_id)
        if info is None:
            return False
        servers = yield self.store.get_joined_servers(room_id)
        return self.config.server_name in servers

    def _remote_invite(
        self,
        destination: str,
        room_version: str,
        event: Mapping[str, Any],
        invite_room_state: Sequence[Mapping[str, Any]],
    ) -> Any:
        # The handshake checks the invitee's signature and that nothing else changed.
        return self.handshakes.remote_invite(destination, room_version, event, invite_room_state)
