"""The Twisted Resource tree remote homeservers talk to.

:func:`build_resource` returns one resource to mount at the web root (it serves
``/_matrix/federation/...``, ``/_matrix/key/v2/...`` and optionally
``/.well-known/matrix/server``); :func:`build_site` wraps it in a
:class:`~twisted.web.server.Site` that also enforces the body limit while the body
is still arriving. Every request goes through :meth:`FederationResource.render`:
routing, body limit, JSON parsing, ``X-Matrix`` authentication, rate limiting,
then the handler, and every failure is rendered as the spec's JSON error.
"""

from __future__ import annotations

import io
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from fedlib.canonical import decode_json, encode_canonical_json
from fedlib.errors import MatrixError, SignatureError
from fedlib.server.auth import authenticate_request
from fedlib.server.config import ServerConfig
from fedlib.server.context import ServerContext
from fedlib.server.errors import too_large, unrecognized
from fedlib.server.request import FederationRequest

__all__ = ["FederationResource", "Route", "build_resource", "build_site"]

log = Logger()

Handler = Callable[[FederationRequest], Awaitable[tuple[int, Any]]]


@attrs.frozen(slots=True)
class Route:
    """``method`` on a path of literal segments and ``{name}`` placeholders."""

    method: str
    path: str
    handler: Handler
    #: Whether an ``X-Matrix`` signature is required (all of /_matrix/federation).
    authenticated: bool = True
    #: Name of the path parameter holding a room ID: the endpoint is room-scoped
    #: and subject to the room's server ACL.
    room_param: str | None = None
    #: Whether the body parser enforces the canonical integer range. A handler
    #: that turns this off checks the parts of the body that need it itself.
    strict_ints: bool = True

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.strip("/").split("/"))


_PLACEHOLDER = re.compile(r"^\{([A-Za-z_]+)\}$")


class _Router:
    """Segment-wise matching; unknown path vs. known path with another method."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes: dict[int, list[tuple[tuple[str | None, ...], tuple[str, ...], Route]]] = {}
        for route in routes:
            literals: list[str | None] = []
            names: list[str] = []
            for seg in route.segments:
                m = _PLACEHOLDER.match(seg)
                literals.append(None if m else seg)
                if m:
                    names.append(m.group(1))
            self._routes.setdefault(len(literals), []).append(
                (tuple(literals), tuple(names), route)
            )

    def match(self, method: str, segments: Sequence[str]) -> tuple[Route, dict[str, str]]:
        path_known = False
        for literals, names, route in self._routes.get(len(segments), []):
            values: list[str] = []
            for lit, seg in zip(literals, segments, strict=True):
                if lit is None:
                    values.append(seg)
                elif lit != seg:
                    break
            else:
                path_known = True
                if route.method == method or (method == "HEAD" and route.method == "GET"):
                    return route, dict(zip(names, values, strict=True))
        if path_known:
            raise MatrixError(405, "M_UNRECOGNIZED", "Method not allowed for this endpoint")
        raise unrecognized()


class LimitedRequest(Request):
    """A request that stops buffering its body once it exceeds the limit.

    Without this the whole body of a hostile client would be buffered before
    any resource sees it; with it the resource answers 413 having kept nothing.
    """

    max_body_bytes = 10 * 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.fedlib_body_too_large = False
        self._fedlib_received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body_bytes:
            self.fedlib_body_too_large = True
            self.content = io.BytesIO()
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        self._fedlib_received += len(data)
        if self.fedlib_body_too_large or self._fedlib_received > self.max_body_bytes:
            if not self.fedlib_body_too_large:
                self.fedlib_body_too_large = True
                self.content = io.BytesIO()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]


def _decode_segment(raw: bytes) -> str:
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise MatrixError(400, "M_INVALID_PARAM", "Path is not valid UTF-8") from None


class FederationResource(Resource):
    """The leaf resource that dispatches every path it is given to a :class:`Route`."""

    isLeaf = True

    def __init__(self, ctx: ServerContext, routes: Iterable[Route]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ctx = ctx
        self._router = _Router(routes)

    def render(self, request: Request) -> Any:  # type: ignore[override]
        d = defer.ensureDeferred(self._handle(request))
        d.addErrback(self._unexpected, request)
        d.addCallback(self._respond, request)
        d.addErrback(lambda f: log.failure("Failed to write a response", f))
        return NOT_DONE_YET

    # -- the pipeline ----------------------------------------------------------

    async def _handle(self, request: Request) -> tuple[int, Any]:
        try:
            return await self._dispatch(request)
        except MatrixError as e:
            return e.code, e.to_dict()

    async def _dispatch(self, request: Request) -> tuple[int, Any]:
        ctx = self.ctx
        method = request.method.decode("ascii", "replace")
        raw_path = request.path
        segments = [_decode_segment(s) for s in raw_path.strip(b"/").split(b"/")]
        route, params = self._router.match(method, segments)
        auth_headers = request.requestHeaders.getRawHeaders(b"authorization") or []
        if route.authenticated and not any(h[:9].lower() == b"x-matrix " for h in auth_headers):
            # Refuse before reading the body: nothing of an unauthenticated
            # request is processed.
            raise SignatureError("Missing X-Matrix Authorization header")
        body = self._read_body(request)
        content: Any = None
        if body:
            content = decode_json(body, strict_ints=route.strict_ints)
        elif method in ("PUT", "POST") and route.authenticated:
            content = None
        query = _parse_query(request.uri)
        origin: str | None = None
        if route.authenticated:
            uri = request.uri.decode("ascii", "replace")
            origin = await authenticate_request(
                ctx.keyring, ctx.clock, ctx.config.server_name, method, uri, auth_headers, content
            )
            # Rate limiting after authentication: an unauthenticated peer must not
            # be able to spend another server's allowance.
            ctx.rate_limiter.check(origin)
            ctx.origin_seen(origin)
        fed_request = FederationRequest(
            method=method,
            path_params=params,
            query=query,
            content=content,
            origin=origin,
            raw_body=body,
        )
        if route.room_param is not None and origin is not None:
            await ctx.check_acl(params[route.room_param], origin)
        return await route.handler(fed_request)

    def _read_body(self, request: Request) -> bytes:
        limit = self.ctx.config.max_body_bytes
        if getattr(request, "fedlib_body_too_large", False):
            raise too_large(limit)
        length = request.getHeader(b"content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    raise too_large(limit)
            except ValueError:
                raise MatrixError(400, "M_BAD_JSON", "Invalid Content-Length") from None
        content = request.content
        if content is None:
            return b""
        content.seek(0)
        data: bytes = content.read(limit + 1)
        if len(data) > limit:
            raise too_large(limit)
        return data

    # -- rendering -------------------------------------------------------------

    def _unexpected(self, failure: Failure, request: Request) -> tuple[int, Any]:
        log.failure(
            "Unhandled error answering {method} {path}",
            failure,
            method=request.method,
            path=request.path[:200],
        )
        return 500, {"errcode": "M_UNKNOWN", "error": "Internal server error"}

    def _respond(self, result: tuple[int, Any], req: Request) -> None:
        request: Any = req  # twisted.web.server.Request is untyped
        if request.finished or getattr(request, "_disconnected", False):
            return
        code, body = result
        try:
            data = encode_canonical_json(body)
        except Exception:
            log.failure("Response is not encodable as canonical JSON")
            code, data = 500, b'{"errcode":"M_UNKNOWN","error":"Internal server error"}'
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", str(len(data)).encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
        if request.method != b"HEAD":
            request.write(data)
        request.finish()


def _parse_query(uri: bytes) -> Mapping[str, list[str]]:
    _, _, query = uri.partition(b"?")
    out: dict[str, list[str]] = {}
    if not query:
        return out
    for part in query.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        try:
            key = unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8")
            val = unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise MatrixError(400, "M_INVALID_PARAM", "Query string is not valid UTF-8") from None
        out.setdefault(key, []).append(val)
    return out


def _all_routes(ctx: ServerContext) -> list[Route]:
    from fedlib.server.handlers import all_routes

    return all_routes(ctx)


def build_resource(
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
) -> IResource:
    """The federation Resource tree, to be mounted at the web root.

    ``keyring`` provides :class:`fedlib.keyring.IKeyring`, ``store``
    :class:`fedlib.storage.interface.IFederationStore`, ``hooks`` the embedder's
    :class:`fedlib.hooks.IFederationHooks` (``None`` answers every query 404),
    ``gaps`` a :class:`fedlib.client.gaps.GapFiller`-like object used to fetch
    missing events. ``on_origin_authenticated(origin)`` is called after each
    request with a valid signature (the sender uses it to reset backoff);
    ``send_pdu(event_id, destinations)`` (the sender's) sends out events accepted
    through send_join/send_knock/send_leave, which are otherwise only queued.
    """
    return build_context_resource(
        ServerContext.create(
            config,
            keyring,
            store,
            hooks,
            clock=clock,
            gaps=gaps,
            notary=notary,
            on_origin_authenticated=on_origin_authenticated,
            send_pdu=send_pdu,
        )
    )


def build_context_resource(ctx: ServerContext) -> IResource:
    """The Resource tree for an existing :class:`ServerContext` (tests, benchmarks)."""
    return FederationResource(ctx, _all_routes(ctx))


def build_site(resource: IResource, max_body_bytes: int = 10 * 1024 * 1024, **kwargs: Any) -> Site:
    """A Site serving ``resource`` that refuses oversized bodies while reading them."""

    class _Request(LimitedRequest):
        pass

    _Request.max_body_bytes = max_body_bytes
    site = Site(resource, **kwargs)  # type: ignore[no-untyped-call]
    site.requestFactory = _Request
    site.displayTracebacks = False
    return site


__all__ += ["LimitedRequest", "build_context_resource"]
