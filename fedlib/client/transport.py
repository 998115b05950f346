"""The federation client: signed requests and one typed method per remote call.

:class:`FederationClient` signs every federation request with X-Matrix (including
``destination``), sends canonical JSON, parses answers only with
:func:`fedlib.canonical.decode_json`, bounds every wait and every response size,
retries idempotent GETs with jittered backoff, and backs off destinations that keep
failing. Whatever a remote server does, callers see only a
:class:`~fedlib.errors.MatrixError`: :class:`RemoteError` when the remote answered
with an error, :class:`FederationRequestError` (and subclasses) when no usable
answer came back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import Interface, implementer

from fedlib.canonical import decode_json, encode_canonical_json
from fedlib.client.agent import (
    BlockedAddressError,
    HttpsWellKnownFetcher,
    IPBlocklist,
    MatrixFederationAgent,
    ResponseTooLargeError,
    TLSOptions,
    TruncatedResponseError,
    read_body_bounded,
)
from fedlib.client.discovery import DiscoveryError, IWellKnownFetcher, ServerResolver
from fedlib.crypto.request_auth import sign_request
from fedlib.errors import MatrixError
from fedlib.events.room_versions import KNOWN_ROOM_VERSIONS
from fedlib.storage.interface import DestinationRetry

log = Logger()

#: Response size limit of ordinary calls.
DEFAULT_MAX_RESPONSE_SIZE = 8 * 1024 * 1024
#: Response size limit of calls that return whole room states (send_join, state...).
LARGE_MAX_RESPONSE_SIZE = 50 * 1024 * 1024
#: Seconds a request (connect, send, whole response) may take.
DEFAULT_TIMEOUT = 60.0
#: Seconds for calls that return whole room states.
LARGE_TIMEOUT = 300.0
#: Extra attempts for idempotent GETs after a transport failure or 5xx.
DEFAULT_GET_RETRIES = 2
#: First delay between those attempts, seconds (doubling, +-25 % jitter).
RETRY_BASE_DELAY = 0.5

#: Longest ``retry_after_ms`` of a 429 answer that a retried call waits for.
MAX_RATE_LIMIT_WAIT_MS = 5_000

#: Destination backoff: first interval, growth factor and cap, milliseconds.
BACKOFF_MIN_MS = 30_000
BACKOFF_MULTIPLIER = 2
BACKOFF_MAX_MS = 3_600_000


# -- errors ---------------------------------------------------------------------------


class FederationRequestError(MatrixError):
    """No usable answer from ``destination`` (unreachable, TLS, timeout, bad body)."""

    def __init__(
        self, destination: str, msg: str, code: int = 502, errcode: str = "M_UNKNOWN"
    ) -> None:
        super().__init__(code, errcode, f"{destination}: {msg}")
        self.destination = destination


class RequestTimeoutError(FederationRequestError):
    """The request to ``destination`` did not complete in time."""

    def __init__(self, destination: str, msg: str = "request timed out") -> None:
        super().__init__(destination, msg, code=504)


class InvalidResponseError(FederationRequestError):
    """``destination`` answered with a body that is too large, truncated, not JSON,
    or not of the shape the endpoint specifies."""


class NotRetryingDestinationError(FederationRequestError):
    """``destination`` has been failing; no request is sent before ``retry_at_ms``."""

    def __init__(self, destination: str, retry_at_ms: int) -> None:
        super().__init__(
            destination, f"not retrying until {retry_at_ms} (destination is failing)", code=503
        )
        self.retry_at_ms = retry_at_ms


class RemoteError(MatrixError):
    """``destination`` answered with an HTTP error; ``code`` and ``errcode`` are its own
    (``M_UNKNOWN`` when its body had none)."""

    def __init__(
        self,
        code: int,
        errcode: str,
        msg: str,
        destination: str,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(code, errcode, msg)
        self.destination = destination
        self.body = dict(body) if body is not None else {}

    def __repr__(self) -> str:
        return f"RemoteError({self.code}, {self.errcode!r}, {self.msg!r}, {self.destination!r})"


# -- destination backoff ----------------------------------------------------------------


class IDestinationBackoff(Interface):
    """Where per-destination backoff state lives: the same three methods as
    :class:`fedlib.storage.interface.IFederationStore`, so a store can be used as is.

    The destination is not contacted before ``failure_ts + retry_interval_ms``
    (milliseconds since the epoch).
    """

    def get_destination_retry(destination: str) -> Any:
        """Deferred :class:`~fedlib.storage.interface.DestinationRetry` or ``None``."""

    def set_destination_retry(destination: str, failure_ts: int, retry_interval_ms: int) -> Any:
        """Deferred ``None``."""

    def reset_destination_retry(destination: str) -> Any:
        """Deferred ``None``."""


@implementer(IDestinationBackoff)
class InMemoryDestinationBackoff:
    """Backoff state in a dict (lost on restart; bounded to ``max_entries``)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._state: dict[str, DestinationRetry] = {}
        self._max = max_entries

    def get_destination_retry(self, destination: str) -> defer.Deferred[DestinationRetry | None]:
        return defer.succeed(self._state.get(destination))

    def set_destination_retry(
        self, destination: str, failure_ts: int, retry_interval_ms: int
    ) -> defer.Deferred[None]:
        self._state.pop(destination, None)
        while len(self._state) >= self._max:
            del self._state[next(iter(self._state))]
        self._state[destination] = DestinationRetry(failure_ts, retry_interval_ms)
        return defer.succeed(None)

    def reset_destination_retry(self, destination: str) -> defer.Deferred[None]:
        self._state.pop(destination, None)
        return defer.succeed(None)


@implementer(IDestinationBackoff)
class NoBackoff:
    """Never backs off (for one-shot tools such as ``fedlib.check``)."""

    def get_destination_retry(self, destination: str) -> defer.Deferred[None]:
        return defer.succeed(None)

    def set_destination_retry(
        self, destination: str, failure_ts: int, retry_interval_ms: int
    ) -> defer.Deferred[None]:
        return defer.succeed(None)

    def reset_destination_retry(self, destination: str) -> defer.Deferred[None]:
        return defer.succeed(None)


# -- response records -------------------------------------------------------------------


@attrs.frozen(slots=True)
class MakeMembershipResponse:
    """The answer of make_join / make_knock / make_leave: an event template."""

    event: dict[str, Any]
    room_version: str


@attrs.frozen(slots=True)
class SendJoinResponse:
    """The answer of send_join (v2, or v1 unwrapped)."""

    origin: str
    state: tuple[dict[str, Any], ...]
    auth_chain: tuple[dict[str, Any], ...]
    #: The join event as signed by the resident server (restricted joins), if sent.
    event: dict[str, Any] | None = None
    members_omitted: bool = False
    servers_in_room: tuple[str, ...] | None = None


@attrs.frozen(slots=True)
class StateResponse:
    pdus: tuple[dict[str, Any], ...]
    auth_chain: tuple[dict[str, Any], ...]


@attrs.frozen(slots=True)
class StateIdsResponse:
    pdu_ids: tuple[str, ...]
    auth_chain_ids: tuple[str, ...]


@attrs.frozen(slots=True)
class TimestampToEventResponse:
    event_id: str
    origin_server_ts: int


@attrs.frozen(slots=True)
class DirectoryResponse:
    room_id: str
    servers: tuple[str, ...]


# -- shape checks -----------------------------------------------------------------------


def _bad(destination: str, what: str) -> InvalidResponseError:
    return InvalidResponseError(destination, f"malformed response: {what}", errcode="M_BAD_JSON")


def _dict(destination: str, value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(destination, f"{what} is not an object")
    return value


def _str(destination: str, value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(destination, f"{what} is not a string")
    return value


def _int(destination: str, value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(destination, f"{what} is not an integer")
    return value


def _dicts(destination: str, value: Any, what: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _bad(destination, f"{what} is not a list of objects")
    return tuple(value)


def _strs(destination: str, value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(destination, f"{what} is not a list of strings")
    return tuple(value)


def _unwrap_v1(destination: str, body: Any, what: str) -> dict[str, Any]:
    """v1 membership endpoints answer ``[200, {...}]``."""
    if not isinstance(body, list) or len(body) != 2 or not isinstance(body[1], dict):
        raise _bad(destination, f"{what} v1 answer is not [200, {{...}}]")
    return body[1]


def _should_fall_back(e: RemoteError) -> bool:
    """Whether a v2 endpoint's error means "this server only knows v1"."""
    if e.errcode == "M_UNRECOGNIZED":
        return e.code in (400, 404, 405)
    # Old servers answer unknown paths with a bare 404 (no Matrix error body).
    return e.code == 404 and not e.body


def _transport_error(e: Exception, destination: str, what: str, timed_out: bool) -> MatrixError:
    """The MatrixError a caller sees for a request that got no usable answer."""
    if timed_out:
        return RequestTimeoutError(destination, f"{what} timed out")
    if isinstance(e, ResponseTooLargeError):
        return InvalidResponseError(destination, str(e))
    if isinstance(e, TruncatedResponseError):
        return InvalidResponseError(destination, str(e)[:200])
    if isinstance(e, BlockedAddressError):
        return FederationRequestError(destination, str(e), code=403, errcode="M_FORBIDDEN")
    if isinstance(e, DiscoveryError):
        return FederationRequestError(destination, f"cannot resolve: {e.msg}")
    if isinstance(e, MatrixError):
        return e
    return FederationRequestError(destination, f"{what} failed: {type(e).__name__}: {e}"[:300])


def _rate_limit_wait_ms(e: MatrixError) -> int | None:
    """The ``retry_after_ms`` of a 429 answer when it is short enough to wait for."""
    if not isinstance(e, RemoteError) or e.code != 429:
        return None
    wait = e.body.get("retry_after_ms")
    if isinstance(wait, int) and not isinstance(wait, bool) and 0 <= wait <= MAX_RATE_LIMIT_WAIT_MS:
        return wait
    return None


def _q(segment: str) -> str:
    return quote(segment, safe="")


# -- the client -------------------------------------------------------------------------


class FederationClient:
    """Talks to other homeservers as ``server_name``.

    :param server_name: our server name (the X-Matrix ``origin``).
    :param signing_key: our signing key (``fedlib.crypto.keys``).
    :param reactor: the Twisted reactor (TCP, TLS, time).
    :param agent: an IAgent for ``matrix-federation://`` URIs; by default a
        :class:`~fedlib.client.agent.MatrixFederationAgent` built from the options below.
    :param resolver: server-name resolver (default: ``dns_resolver`` or the system's
        DNS, and ``well_known_fetcher`` or HTTPS well-known).
    :param verify_tls: check certificates (on by default; ``False`` only for loopback tests).
    :param ca_bundle: PEM file of trusted CAs instead of the platform's.
    :param host_overrides: host name to IP address map applied when connecting.
    :param ip_blocklist: addresses never connected to (e.g. ``IPBlocklist()`` for
        private and loopback ranges, so remote input cannot aim us at internal
        services); ``None``, the default, allows all.
    :param backoff: where per-destination backoff is kept; defaults to ``store`` when it
        provides ``get_destination_retry``/``set_destination_retry``, else memory.
    :param clock: time source for timeouts, retries and backoff (default: ``reactor``).
    """

    def __init__(
        self,
        server_name: str,
        signing_key: Any,
        reactor: Any,
        *,
        agent: IAgent | None = None,
        resolver: ServerResolver | None = None,
        well_known_fetcher: IWellKnownFetcher | None = None,
        dns_resolver: IResolver | None = None,
        verify_tls: bool = True,
        ca_bundle: str | None = None,
        host_overrides: Mapping[str, str] | None = None,
        ip_blocklist: IPBlocklist | None = None,
        backoff: IDestinationBackoff | None = None,
        store: Any = None,
        clock: IReactorTime | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        get_retries: int = DEFAULT_GET_RETRIES,
        rng: Callable[[], float] = random.random,
        user_agent: str = "fedlib",
    ) -> None:
        self.server_name = server_name
        self.signing_key = signing_key
        self._clock: IReactorTime = clock if clock is not None else reactor
        if agent is None:
            tls = TLSOptions(verify_tls=verify_tls, ca_bundle=ca_bundle)
            if resolver is None:
                fetcher = well_known_fetcher or HttpsWellKnownFetcher(
                    reactor, tls=tls, host_overrides=host_overrides, ip_blocklist=ip_blocklist
                )
                resolver = ServerResolver(dns_resolver, fetcher, self._clock)
            agent = MatrixFederationAgent(
                reactor,
                resolver,
                tls=tls,
                host_overrides=host_overrides,
                ip_blocklist=ip_blocklist,
            )
        self.agent = agent
        if backoff is None:
            if store is not None and hasattr(store, "get_destination_retry"):
                backoff = store
            else:
                backoff = InMemoryDestinationBackoff()
        self.backoff: IDestinationBackoff = backoff  # type: ignore[assignment]
        self.default_timeout = default_timeout
        self.max_response_size = max_response_size
        self.get_retries = get_retries
        self._rng = rng
        self._user_agent = user_agent.encode("ascii")

    def close_connections(self) -> defer.Deferred[None]:
        """Close the idle keep-alive connections of the agent's pool (call on
        shutdown: they would outlive their user). Nothing to do for an injected
        agent without a pool."""
        pool = getattr(self.agent, "pool", None)
        if pool is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = pool.closeCachedConnections()
        return d

    # -- plumbing ----------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def request(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        query: Mapping[str, str | int | Sequence[str]] | None = None,
        content: Any = None,
        timeout: float | None = None,
        max_size: int | None = None,
        retries: int | None = None,
        sign: bool = True,
        ignore_backoff: bool = False,
        room_version: str | None = None,
    ) -> defer.Deferred[Any]:
        """Deferred parsed JSON body of one request (the typed methods are built on
        this; use it for endpoints they do not cover).

        ``path`` is already percent-encoded. GETs are retried ``retries`` times
        (default :attr:`get_retries`) after transport failures and 5xx answers;
        other methods are not retried unless ``retries`` says so. With
        ``ignore_backoff`` the destination's backoff state is neither checked nor
        updated (for callers that manage it themselves, like the transaction sender).
        """
        return defer.ensureDeferred(
            self._request(
                method,
                destination,
                path,
                query=query,
                content=content,
                timeout=timeout,
                max_size=max_size,
                retries=retries,
                sign=sign,
                ignore_backoff=ignore_backoff,
                room_version=room_version,
            )
        )

    async def _request(
        self,
        method: str,
        destination: str,
        path: str,
        *,
        query: Mapping[str, str | int | Sequence[str]] | None,
        content: Any,
        timeout: float | None,
        max_size: int | None,
        retries: int | None,
        sign: bool,
        ignore_backoff: bool,
        room_version: str | None,
    ) -> Any:
        if not ignore_backoff:
            state = await self.backoff.get_destination_retry(destination)
            if state is not None:
                retry_at = state.failure_ts + state.retry_interval_ms
                if self._now_ms() < retry_at:
                    raise NotRetryingDestinationError(destination, retry_at)
        if retries is None:
            retries = self.get_retries if method == "GET" else 0
        uri = path
        if query:
            uri += "?" + urlencode(
                {k: (v if isinstance(v, str | int) else list(v)) for k, v in query.items()},
                doseq=True,
            )
        body = encode_canonical_json(content) if content is not None else None
        attempt = 0
        while True:
            try:
                result = await self._attempt(
                    method,
                    destination,
                    uri,
                    content,
                    body,
                    timeout if timeout is not None else self.default_timeout,
                    max_size if max_size is not None else self.max_response_size,
                    sign,
                    room_version,
                )
            except (FederationRequestError, RemoteError) as e:
                # A malformed body will be malformed again: only unreachable servers,
                # timeouts and 5xx answers are worth another try and count as failing.
                transient = (
                    e.code >= 500 and e.code != 501
                    if isinstance(e, RemoteError)
                    else not isinstance(e, InvalidResponseError)
                )
                if transient and attempt < retries:
                    delay = RETRY_BASE_DELAY * (2**attempt) * (0.75 + 0.5 * self._rng())
                    attempt += 1
                    await task.deferLater(self._clock, delay, lambda: None)
                    continue
                wait_ms = _rate_limit_wait_ms(e)
                if wait_ms is not None and attempt < retries:
                    # Rate limited with a short, explicit wait: honour it and try again.
                    attempt += 1
                    await task.deferLater(self._clock, wait_ms / 1000, lambda: None)
                    continue
                if not ignore_backoff:
                    if transient:
                        await self._record_failure(destination)
                    else:
                        await self._record_success(destination)
                raise
            if not ignore_backoff:
                await self._record_success(destination)
            return result

    async def _attempt(
        self,
        method: str,
        destination: str,
        uri: str,
        content: Any,
        body: bytes | None,
        timeout: float,
        max_size: int,
        sign: bool,
        room_version: str | None,
    ) -> Any:
        headers = Headers({b"User-Agent": [self._user_agent]})
        if sign:
            auth = sign_request(
                method, uri, self.server_name, destination, self.signing_key, content
            )
            headers.addRawHeader(b"Authorization", auth.encode("utf-8"))
        producer = None
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")
            producer = _BytesProducer(body)
        full = b"matrix-federation://" + destination.encode("utf-8") + uri.encode("ascii")

        async def go() -> tuple[int, bytes]:
            response = await self.agent.request(method.encode("ascii"), full, headers, producer)
            data = await read_body_bounded(response, max_size)
            return response.code, data

        d = defer.ensureDeferred(go())
        # addTimeout only recognises a bare CancelledError, but a cancelled agent
        # request fails with its own wrappers, so remember that the timer fired.
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            d.cancel()

        timer = self._clock.callLater(timeout, expire)
        started = time.monotonic()
        try:
            try:
                code, data = await d
            finally:
                if timer.active():
                    timer.cancel()
        except Exception as e:
            raise _transport_error(
                e, destination, f"{method} {uri[:80]}", bool(timed_out)
            ) from None
        log.debug(
            "{method} {destination}{uri} -> {code} in {secs:.3f}s",
            method=method,
            destination=destination,
            uri=uri[:80],
            code=code,
            secs=time.monotonic() - started,
        )
        if 200 <= code < 300:
            try:
                return decode_json(data, room_version=room_version)
            except MatrixError as e:
                raise InvalidResponseError(
                    destination, f"{code} body is not acceptable JSON: {e.msg}", errcode=e.errcode
                ) from None
        errbody: dict[str, Any] = {}
        try:
            parsed = decode_json(data)
            if isinstance(parsed, dict):
                errbody = parsed
        except MatrixError:
            pass
        errcode = errbody.get("errcode")
        message = errbody.get("error")
        raise RemoteError(
            code,
            errcode[:100] if isinstance(errcode, str) and errcode else "M_UNKNOWN",
            (message if isinstance(message, str) else f"HTTP {code}")[:500],
            destination,
            errbody,
        )

    async def _record_failure(self, destination: str) -> None:
        state = await self.backoff.get_destination_retry(destination)
        if state is None:
            interval = BACKOFF_MIN_MS
        else:
            interval = min(state.retry_interval_ms * BACKOFF_MULTIPLIER, BACKOFF_MAX_MS)
        jittered = max(int(interval * (0.8 + 0.4 * self._rng())), 1)
        await self.backoff.set_destination_retry(destination, self._now_ms(), jittered)

    async def _record_success(self, destination: str) -> None:
        state = await self.backoff.get_destination_retry(destination)
        if state is not None:
            await self.backoff.reset_destination_retry(destination)

    def reset_backoff(self, destination: str) -> defer.Deferred[None]:
        """Forget that ``destination`` was failing (e.g. it just sent us a valid request)."""
        return defer.ensureDeferred(self._record_success(destination))

    def _call(self, coro: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(coro)

    # -- keys and version -------------------------------------------------------------

    def get_server_keys(self, destination: str) -> defer.Deferred[dict[str, Any]]:
        """``GET /_matrix/key/v2/server``: the raw (unverified) key object."""

        async def run() -> dict[str, Any]:
            body = await self.request(
                "GET", destination, "/_matrix/key/v2/server", sign=False, timeout=30.0
            )
            return _dict(destination, body, "key response")

        return self._call(run())

    def query_keys_via_notary(
        self,
        notary: str,
        server_keys: Mapping[str, Mapping[str, Mapping[str, Any]]],
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """``POST /_matrix/key/v2/query``: the notary's raw ``server_keys`` list.

        ``server_keys`` is ``{server: {key_id: {"minimum_valid_until_ts": ...}}}``
        (an empty inner mapping asks for every key).
        """

        async def run() -> list[dict[str, Any]]:
            body = await self.request(
                "POST",
                notary,
                "/_matrix/key/v2/query",
                content={"server_keys": {s: dict(k) for s, k in server_keys.items()}},
                retries=self.get_retries,  # a query changes nothing: safe to repeat
                timeout=30.0,
            )
            body = _dict(notary, body, "notary response")
            return list(_dicts(notary, body.get("server_keys"), "server_keys"))

        return self._call(run())

    def version(self, destination: str) -> defer.Deferred[dict[str, Any]]:
        """``GET /_matrix/federation/v1/version``: ``{"name": ..., "version": ...}``."""

        async def run() -> dict[str, Any]:
            body = await self.request(
                "GET", destination, "/_matrix/federation/v1/version", sign=False
            )
            server = _dict(destination, _dict(destination, body, "body").get("server"), "server")
            return server

        return self._call(run())

    # -- membership handshakes --------------------------------------------------------

    async def _make(
        self,
        kind: str,
        destination: str,
        room_id: str,
        user_id: str,
        supported_versions: Iterable[str] | None,
    ) -> MakeMembershipResponse:
        query: dict[str, Sequence[str]] | None = None
        if supported_versions is not None or kind != "leave":
            versions = list(
                supported_versions if supported_versions is not None else KNOWN_ROOM_VERSIONS
            )
            query = {"ver": versions}
        body = await self.request(
            "GET",
            destination,
            f"/_matrix/federation/v1/make_{kind}/{_q(room_id)}/{_q(user_id)}",
            query=query,
        )
        body = _dict(destination, body, f"make_{kind} response")
        event = _dict(destination, body.get("event"), "event")
        room_version = body.get("room_version", "1")  # spec: absent means v1 or v2
        return MakeMembershipResponse(
            event=event, room_version=_str(destination, room_version, "room_version")
        )

    async def _put_v2_or_v1(
        self,
        destination: str,
        tail: str,
        what: str,
        content: Any,
        *,
        v1_content: Any = None,
        v2_query: Mapping[str, str] | None = None,
        room_version: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The answer of ``PUT /v2/{tail}``, or when the remote only knows v1, of
        ``PUT /v1/{tail}`` (with ``v1_content`` when that differs) unwrapped from
        its ``[200, {...}]``."""
        try:
            body = await self.request(
                "PUT",
                destination,
                f"/_matrix/federation/v2/{tail}",
                query=v2_query,
                content=content,
                room_version=room_version,
                **kwargs,
            )
            return _dict(destination, body, f"{what} response")
        except RemoteError as e:
            if not _should_fall_back(e):
                raise
        body = await self.request(
            "PUT",
            destination,
            f"/_matrix/federation/v1/{tail}",
            content=content if v1_content is None else v1_content,
            room_version=room_version,
            **kwargs,
        )
        return _unwrap_v1(destination, body, what)

    def make_join(
        self,
        destination: str,
        room_id: str,
        user_id: str,
        supported_versions: Iterable[str] | None = None,
    ) -> defer.Deferred[MakeMembershipResponse]:
        """``GET /make_join``; ``supported_versions`` defaults to every version fedlib knows."""
        return self._call(self._make("join", destination, room_id, user_id, supported_versions))

    def make_knock(
        self,
        destination: str,
        room_id: str,
        user_id: str,
        supported_versions: Iterable[str] | None = None,
    ) -> defer.Deferred[MakeMembershipResponse]:
        return self._call(self._make("knock", destination, room_id, user_id, supported_versions))

    def make_leave(
        self, destination: str, room_id: str, user_id: str
    ) -> defer.Deferred[MakeMembershipResponse]:
        return self._call(self._make("leave", destination, room_id, user_id, None))

    def send_join(
        self,
        destination: str,
        room_id: str,
        event_id: str,
        event: Mapping[str, Any],
        *,
        room_version: str | None = None,
        omit_members: bool = False,
    ) -> defer.Deferred[SendJoinResponse]:
        """``PUT /v2/send_join`` (``omit_members`` for a partial-state join), falling
        back to v1 when the remote does not know v2."""

        async def run() -> SendJoinResponse:
            body = await self._put_v2_or_v1(
                destination,
                f"send_join/{_q(room_id)}/{_q(event_id)}",
                "send_join",
                dict(event),
                v2_query={"omit_members": "true"} if omit_members else None,
                room_version=room_version,
                timeout=LARGE_TIMEOUT,
                max_size=LARGE_MAX_RESPONSE_SIZE,
            )
            members_omitted = body.get("members_omitted", False)
            if not isinstance(members_omitted, bool):
                raise _bad(destination, "members_omitted is not a boolean")
            servers = body.get("servers_in_room")
            returned_event = body.get("event")
            return SendJoinResponse(
                origin=_str(destination, body.get("origin", destination), "origin"),
                state=_dicts(destination, body.get("state"), "state"),
                auth_chain=_dicts(destination, body.get("auth_chain"), "auth_chain"),
                event=None
                if returned_event is None
                else _dict(destination, returned_event, "event"),
                members_omitted=members_omitted,
                servers_in_room=None
                if servers is None
                else _strs(destination, servers, "servers_in_room"),
            )

        return self._call(run())

    # Alias under the name the issue uses.
    send_join_v2 = send_join

    def send_knock(
        self, destination: str, room_id: str, event_id: str, event: Mapping[str, Any]
    ) -> defer.Deferred[tuple[dict[str, Any], ...]]:
        """``PUT /v1/send_knock``: the ``knock_room_state`` stripped events."""

        async def run() -> tuple[dict[str, Any], ...]:
            body = await self.request(
                "PUT",
                destination,
                f"/_matrix/federation/v1/send_knock/{_q(room_id)}/{_q(event_id)}",
                content=dict(event),
            )
            body = _dict(destination, body, "send_knock response")
            return _dicts(destination, body.get("knock_room_state", []), "knock_room_state")

        return self._call(run())

    def send_leave(
        self, destination: str, room_id: str, event_id: str, event: Mapping[str, Any]
    ) -> defer.Deferred[None]:
        """``PUT /v2/send_leave``, falling back to v1."""

        async def run() -> None:
            await self._put_v2_or_v1(
                destination, f"send_leave/{_q(room_id)}/{_q(event_id)}", "send_leave", dict(event)
            )

        return self._call(run())

    def invite(
        self,
        destination: str,
        room_id: str,
        event_id: str,
        event: Mapping[str, Any],
        room_version: str,
        invite_room_state: Sequence[Mapping[str, Any]] = (),
    ) -> defer.Deferred[dict[str, Any]]:
        """``PUT /v2/invite`` (v1 fallback): the invite event as signed by the invitee's
        server (not yet verified: the caller checks it)."""

        async def run() -> dict[str, Any]:
            stripped = [dict(s) for s in invite_room_state]
            # v1 carries the stripped state in the event's unsigned section.
            v1_event = dict(event)
            v1_event["unsigned"] = {
                **(v1_event.get("unsigned") or {}),
                "invite_room_state": stripped,
            }
            body = await self._put_v2_or_v1(
                destination,
                f"invite/{_q(room_id)}/{_q(event_id)}",
                "invite",
                {"event": dict(event), "room_version": room_version, "invite_room_state": stripped},
                v1_content=v1_event,
                room_version=room_version,
            )
            return _dict(destination, body.get("event"), "event")

        return self._call(run())

    invite_v2 = invite

    # -- events and state ---------------------------------------------------------------

    def get_event(
        self, destination: str, event_id: str, *, room_version: str | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        """``GET /event/{eventId}``: the (unverified) PDU."""

        async def run() -> dict[str, Any]:
            body = await self.request(
                "GET",
                destination,
                f"/_matrix/federation/v1/event/{_q(event_id)}",
                room_version=room_version,
            )
            pdus = _dicts(destination, _dict(destination, body, "body").get("pdus"), "pdus")
            if len(pdus) != 1:
                raise _bad(destination, f"expected one PDU, got {len(pdus)}")
            return pdus[0]

        return self._call(run())

    def get_state(
        self, destination: str, room_id: str, event_id: str, *, room_version: str | None = None
    ) -> defer.Deferred[StateResponse]:
        """``GET /state/{roomId}?event_id=``: the state before ``event_id`` and its auth chain."""

        async def run() -> StateResponse:
            body = await self.request(
                "GET",
                destination,
                f"/_matrix/federation/v1/state/{_q(room_id)}",
                query={"event_id": event_id},
                timeout=LARGE_TIMEOUT,
                max_size=LARGE_MAX_RESPONSE_SIZE,
                room_version=room_version,
            )
            body = _dict(destination, body, "body")
            return StateResponse(
                pdus=_dicts(destination, body.get("pdus"), "pdus"),
                auth_chain=_dicts(destination, body.get("auth_chain"), "auth_chain"),
            )

        return self._call(run())

    def get_state_ids(
        self, destination: str, room_id: str, event_id: str
    ) -> defer.Deferred[StateIdsResponse]:
        """``GET /state_ids/{roomId}?event_id=``."""

        async def run() -> StateIdsResponse:
            body = await self.request(
                "GET",
                destination,
                f"/_matrix/federation/v1/state_ids/{_q(room_id)}",
                query={"event_id": event_id},
                timeout=LARGE_TIMEOUT,
                max_size=LARGE_MAX_RESPONSE_SIZE,
            )
            body = _dict(destination, body, "body")
            return StateIdsResponse(
                pdu_ids=_strs(destination, body.get("pdu_ids"), "pdu_ids"),
                auth_chain_ids=_strs(destination, body.get("auth_chain_ids"), "auth_chain_ids"),
            )

        return self._call(run())

    def get_event_auth(
        self, destination: str, room_id: str, event_id: str, *, room_version: str | None = None
    ) -> defer.Deferred[tuple[dict[str, Any], ...]]:
        """``GET /event_auth/{roomId}/{eventId}``: the auth chain."""

        async def run() -> tuple[dict[str, Any], ...]:
            body = await self.request(
                "GET",
                destination,
                f"/_matrix/federation/v1/event_auth/{_q(room_id)}/{_q(event_id)}",
                timeout=LARGE_TIMEOUT,
                max_size=LARGE_MAX_RESPONSE_SIZE,
                room_version=room_version,
            )
            return _dicts(
                destination, _dict(destination, body, "body").get("auth_chain"), "auth_chain"
            )

        return self._call(run())

    def backfill(
        self,
        destination: str,
        room_id: str,
        event_ids: Iterable[str],
        limit: int,
        *,
        room_version: str | None = None,
    ) -> defer.Deferred[tuple[dict[str, Any], ...]]:
        """``GET /backfill/{roomId}?v=...&limit=``: up to ``limit`` earlier PDUs."""

        async def run() -> tuple[dict[str, Any], ...]:
            body = await self.request(
                "GET",
                destination,
                f"/_matrix/federation/v1/backfill/{_q(room_id)}",
                query={"v": list(event_ids), "limit": str(limit)},
                room_version=room_version,
            )
            pdus = _dicts(destination, _dict(destination, body, "body").get("pdus"), "pdus")
            return pdus[: max(limit, 0)]

        return self._call(run())

    def get_missing_events(
        self,
        destination: str,
        room_id: str,
        earliest_events: Iterable[str],
        latest_events: Iterable[str],
        limit: int = 10,
        min_depth: int = 0,
        *,
        room_version: str | None = None,
    ) -> defer.Deferred[tuple[dict[str, Any], ...]]:
        """``POST /get_missing_events/{roomId}``."""

        async def run() -> tuple[dict[str, Any], ...]:
            body = await self.request(
                "POST",
                destination,
                f"/_matrix/federation/v1/get_missing_events/{_q(room_id)}",
                content={
                    "earliest_events": list(earliest_events),
                    "latest_events": list(latest_events),
                    "limit": limit,
                    "min_depth": min_depth,
                },
                retries=self.get_retries,  # a read despite the POST
                room_version=room_version,
            )
            events = _dicts(destination, _dict(destination, body, "body").get("events"), "events")
            return events[: max(limit, 0)]

        return self._call(run())

    def timestamp_to_event(
        self, destination: str, room_id: str, ts: int, direction: str = "f"
    ) -> defer.Deferred[TimestampToEventResponse]:
        """``GET /timestamp_to_event/{roomId}?ts=&dir=`` (``direction`` is ``f`` or ``b``)."""
        if direction not in ("f", "b"):
            raise ValueError("direction must be 'f' or 'b'")

        async def run() -> TimestampToEventResponse:
            body = await self.request(
                "GET",
                destination,
                f"/_matrix/federation/v1/timestamp_to_event/{_q(room_id)}",
                query={"ts": str(ts), "dir": direction},
            )
            body = _dict(destination, body, "body")
            return TimestampToEventResponse(
                event_id=_str(destination, body.get("event_id"), "event_id"),
                origin_server_ts=_int(
                    destination, body.get("origin_server_ts"), "origin_server_ts"
                ),
            )

        return self._call(run())

    # -- queries, transactions, directory ----------------------------------------------------

    def query_directory(
        self, destination: str, room_alias: str
    ) -> defer.Deferred[DirectoryResponse]:
        """``GET /query/directory?room_alias=``."""

        async def run() -> DirectoryResponse:
            body = await self.request(
                "GET",
                destination,
                "/_matrix/federation/v1/query/directory",
                query={"room_alias": room_alias},
            )
            body = _dict(destination, body, "body")
            return DirectoryResponse(
                room_id=_str(destination, body.get("room_id"), "room_id"),
                servers=_strs(destination, body.get("servers"), "servers"),
            )

        return self._call(run())

    def query_profile(
        self, destination: str, user_id: str, field: str | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        """``GET /query/profile?user_id=[&field=]``."""

        async def run() -> dict[str, Any]:
            query = {"user_id": user_id}
            if field is not None:
                query["field"] = field
            body = await self.request(
                "GET", destination, "/_matrix/federation/v1/query/profile", query=query
            )
            return _dict(destination, body, "profile")

        return self._call(run())

    def send_transaction(
        self,
        destination: str,
        txn_id: str,
        pdus: Sequence[Mapping[str, Any]],
        edus: Sequence[Mapping[str, Any]] = (),
        origin_server_ts: int | None = None,
    ) -> defer.Deferred[dict[str, Any]]:
        """``PUT /send/{txnId}``: the per-PDU results (``{event_id: {} or {"error": ...}}``).

        Not retried here, and the destination backoff is left alone: the
        transaction sender owns retries, ordering and that destination's backoff.
        """

        async def run() -> dict[str, Any]:
            body = await self.request(
                "PUT",
                destination,
                f"/_matrix/federation/v1/send/{_q(txn_id)}",
                ignore_backoff=True,
                content={
                    "origin": self.server_name,
                    "origin_server_ts": origin_server_ts
                    if origin_server_ts is not None
                    else self._now_ms(),
                    "pdus": [dict(p) for p in pdus],
                    "edus": [dict(e) for e in edus],
                },
            )
            body = _dict(destination, body, "body")
            return _dict(destination, body.get("pdus", {}), "pdus")

        return self._call(run())

    def get_public_rooms(
        self,
        destination: str,
        *,
        limit: int | None = None,
        since: str | None = None,
        include_all_networks: bool = False,
        third_party_instance_id: str | None = None,
        search_filter: Mapping[str, Any] | None = None,
    ) -> defer.Deferred[dict[str, Any]]:
        """``GET`` (or, with a filter, ``POST``) ``/publicRooms``."""

        async def run() -> dict[str, Any]:
            path = "/_matrix/federation/v1/publicRooms"
            if search_filter is None:
                query: dict[str, str] = {}
                if limit is not None:
                    query["limit"] = str(limit)
                if since is not None:
                    query["since"] = since
                if include_all_networks:
                    query["include_all_networks"] = "true"
                if third_party_instance_id is not None:
                    query["third_party_instance_id"] = third_party_instance_id
                body = await self.request("GET", destination, path, query=query)
            else:
                content: dict[str, Any] = {
                    "filter": dict(search_filter),
                    "include_all_networks": include_all_networks,
                }
                if limit is not None:
                    content["limit"] = limit
                if since is not None:
                    content["since"] = since
                if third_party_instance_id is not None:
                    content["third_party_instance_id"] = third_party_instance_id
                body = await self.request(
                    "POST", destination, path, content=content, retries=self.get_retries
                )
            body = _dict(destination, body, "body")
            _dicts(destination, body.get("chunk"), "chunk")
            return body

        return self._call(run())

    def get_hierarchy(
        self, destination: str, room_id: str, suggested_only: bool = False
    ) -> defer.Deferred[dict[str, Any]]:
        """``GET /hierarchy/{roomId}``: ``room``, ``children``, ``inaccessible_children``."""

        async def run() -> dict[str, Any]:
            body = await self.request(
                "GET",
                destination,
                f"/_matrix/federation/v1/hierarchy/{_q(room_id)}",
                query={"suggested_only": "true" if suggested_only else "false"},
                max_size=LARGE_MAX_RESPONSE_SIZE,
            )
            body = _dict(destination, body, "body")
            _dict(destination, body.get("room"), "room")
            _dicts(destination, body.get("children", []), "children")
            return body

        return self._call(run())


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body already in memory."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self._body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
