"""HTTP plumbing of the client API: routing, JSON bodies, access tokens, errors.

One leaf :class:`ClientResource` answers everything under ``/_matrix/client``.
Handlers are coroutines of :class:`fedlib.clientapi.api.ClientAPI` taking a
:class:`Call`; whatever they raise becomes the spec's ``{"errcode", "error"}``
body (:class:`fedlib.errors.MatrixError`), and anything unexpected a logged
``500 M_UNKNOWN`` that reveals nothing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import attrs
from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from fedlib.canonical import decode_json
from fedlib.errors import BadJsonError, MatrixError

if TYPE_CHECKING:
    from fedlib.clientapi.api import ClientAPI
    from fedlib.clientapi.store import Session

__all__ = ["ROUTES", "Call", "ClientResource"]

log = logging.getLogger(__name__)


@attrs.frozen(slots=True)
class Call:
    """One request as a handler sees it."""

    method: str
    #: Path parameters, percent-decoded.
    params: Mapping[str, str]
    #: Query arguments (first value of each), decoded as UTF-8.
    query: Mapping[str, str]
    #: Every value of each query argument (``via`` may repeat).
    query_all: Mapping[str, tuple[str, ...]]
    #: The raw body; :meth:`json` parses it.
    body: bytes
    #: The caller's session (``None`` on endpoints that need no token).
    session: Session | None
    #: The SHA-256 of the access token, for what is kept per token (logout, txn IDs).
    token_hash: str | None
    client_ip: str

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (``M_NOT_JSON`` / ``M_BAD_JSON`` otherwise);
        an empty body counts as ``{}``."""
        if not self.body.strip():
            return {}
        value = decode_json(self.body)
        if not isinstance(value, dict):
            raise BadJsonError("The body must be a JSON object")
        return value

    @property
    def user_id(self) -> str:
        assert self.session is not None
        return self.session.user_id


Handler = Callable[[Call], Awaitable[Any]]

#: ``(method, path under /_matrix/client/v3/, handler name, needs a token)``.
ROUTES: tuple[tuple[str, str, str, bool], ...] = (
    ("GET", "login", "login_flows", False),
    ("POST", "login", "login", False),
    ("POST", "register", "register", False),
    ("GET", "register/available", "register_available", False),
    ("POST", "logout", "logout", True),
    ("POST", "logout/all", "logout_all", True),
    ("GET", "account/whoami", "whoami", True),
    ("GET", "capabilities", "capabilities", True),
    ("GET", "pushrules", "pushrules", True),
    ("GET", "pushrules/", "pushrules", True),
    ("POST", "user/{userId}/filter", "create_filter", True),
    ("GET", "user/{userId}/filter/{filterId}", "get_filter", True),
    ("GET", "profile/{userId}", "get_profile", False),
    ("GET", "profile/{userId}/{field}", "get_profile", False),
    ("POST", "createRoom", "create_room", True),
    ("GET", "joined_rooms", "joined_rooms", True),
    ("POST", "join/{roomIdOrAlias}", "join", True),
    ("POST", "knock/{roomIdOrAlias}", "knock", True),
    ("POST", "rooms/{roomId}/join", "join", True),
    ("POST", "rooms/{roomId}/invite", "invite", True),
    ("POST", "rooms/{roomId}/leave", "leave", True),
    ("POST", "rooms/{roomId}/kick", "kick", True),
    ("POST", "rooms/{roomId}/ban", "ban", True),
    ("POST", "rooms/{roomId}/unban", "unban", True),
    ("PUT", "rooms/{roomId}/send/{eventType}/{txnId}", "send", True),
    ("PUT", "rooms/{roomId}/state/{eventType}", "put_state", True),
    ("PUT", "rooms/{roomId}/state/{eventType}/{stateKey}", "put_state", True),
    ("GET", "rooms/{roomId}/state", "get_state", True),
    ("GET", "rooms/{roomId}/state/{eventType}", "get_state_event", True),
    ("GET", "rooms/{roomId}/state/{eventType}/{stateKey}", "get_state_event", True),
    ("GET", "rooms/{roomId}/members", "members", True),
    ("GET", "rooms/{roomId}/joined_members", "joined_members", True),
    ("GET", "rooms/{roomId}/messages", "messages", True),
    ("GET", "sync", "sync", True),
    ("PUT", "directory/room/{roomAlias}", "put_alias", True),
    ("GET", "directory/room/{roomAlias}", "get_alias", False),
    ("DELETE", "directory/room/{roomAlias}", "delete_alias", True),
    ("GET", "directory/list/room/{roomId}", "get_room_visibility", False),
    ("PUT", "directory/list/room/{roomId}", "set_room_visibility", True),
    ("GET", "publicRooms", "public_rooms_get", False),
    ("POST", "publicRooms", "public_rooms_post", True),
)

_PREFIX = re.compile(rb"^/_matrix/client/(?:v3|r0)/")


def _compile(path: str) -> list[str]:
    return path.split("/")


_COMPILED = [(m, _compile(p), h, a) for m, p, h, a in ROUTES]


def match(method: str, segments: list[str]) -> tuple[str, dict[str, str], bool] | bool | None:
    """``(handler, params, needs_token)``, ``False`` when the path exists for other
    methods only, ``None`` when nothing matches."""
    path_known = False
    for m, pattern, handler, auth in _COMPILED:
        if len(pattern) != len(segments):
            continue
        params: dict[str, str] = {}
        for want, got in zip(pattern, segments, strict=True):
            if want.startswith("{"):
                params[want[1:-1]] = got
            elif want != got:
                break
        else:
            if m == method:
                return handler, params, auth
            path_known = True
    return False if path_known else None


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class ClientResource(Resource):
    """``/_matrix/client``: mount it at ``_matrix/client`` below a root
    :class:`~twisted.web.resource.Resource`, or use :func:`fedlib.clientapi.api.build_root`."""

    isLeaf = True

    def __init__(self, api: ClientAPI) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.api = api

    def render(self, request: Any) -> Any:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        request.setHeader(b"Access-Control-Allow-Methods", b"GET, POST, PUT, DELETE, OPTIONS")
        request.setHeader(
            b"Access-Control-Allow-Headers",
            b"X-Requested-With, Content-Type, Authorization",
        )
        d = defer.ensureDeferred(self._handle(request))
        finished = request.notifyFinish()
        # A client that goes away cancels its work (a long-polling /sync above all).
        finished.addErrback(lambda _f: d.cancel())
        return NOT_DONE_YET

    async def _handle(self, request: Any) -> None:
        try:
            code, body = await self._dispatch(request)
        except MatrixError as e:
            code, body = e.code, e.to_dict()
        except defer.CancelledError:
            return
        except Exception:
            log.exception("Client API request %s failed", request.uri)
            code, body = 500, {"errcode": "M_UNKNOWN", "error": "Internal server error"}
        if request.finished or request._disconnected:
            return
        request.setResponseCode(code)
        request.write(_json_bytes(body))
        request.finish()

    async def _dispatch(self, request: Any) -> tuple[int, Any]:
        method = (request.method or b"GET").decode("ascii", "replace")
        path = request.path or b"/"
        if method == "OPTIONS":
            return 200, {}
        if path.rstrip(b"/") == b"/_matrix/client/versions":
            if method != "GET":
                raise MatrixError(405, "M_UNRECOGNIZED", "Unsupported method")
            return 200, self.api.versions()
        prefix = _PREFIX.match(path)
        if prefix is None:
            raise MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")
        try:
            segments = [
                unquote(s.decode("utf-8"), errors="strict")
                for s in path[prefix.end() :].split(b"/")
            ]
        except UnicodeDecodeError:
            raise MatrixError(400, "M_INVALID_PARAM", "Path is not UTF-8") from None
        found = match(method, segments)
        if found is None:
            raise MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")
        if found is False or found is True:
            raise MatrixError(405, "M_UNRECOGNIZED", "Unsupported method")
        handler_name, params, needs_token = found
        try:
            query_all = {
                k.decode("utf-8"): tuple(v.decode("utf-8") for v in vs)
                for k, vs in (request.args or {}).items()
            }
        except UnicodeDecodeError:
            raise MatrixError(400, "M_INVALID_PARAM", "Query is not UTF-8") from None
        body = request.content.read() if request.content is not None else b""
        # fedlib's LimitedRequest (build_site) drops an oversized body while reading
        # it and says so; the content left is empty, not the request's.
        if getattr(request, "fedlib_body_too_large", False) or len(body) > self.api.max_body:
            raise MatrixError(413, "M_TOO_LARGE", "Request body too large")
        session, token_hash = None, None
        token = self._token(request, query_all)
        if needs_token or token is not None:
            if token is None:
                raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
            session, token_hash = await self.api.authenticate(token)
        peer = request.getClientAddress()
        call = Call(
            method=method,
            params=params,
            query={k: v[0] for k, v in query_all.items() if v},
            query_all=query_all,
            body=body,
            session=session,
            token_hash=token_hash,
            client_ip=str(getattr(peer, "host", "")),
        )
        handler: Handler = getattr(self.api, handler_name)
        result = await handler(call)
        return 200, result

    @staticmethod
    def _token(request: Any, query: Mapping[str, tuple[str, ...]]) -> str | None:
        raw = request.getHeader(b"authorization")
        if raw:
            header = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise MatrixError(401, "M_MISSING_TOKEN", "Malformed Authorization header")
            return value.strip()
        values = query.get("access_token")
        return values[0] if values else None
