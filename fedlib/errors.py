"""The library's exceptions.

Every failure that can be answered to a remote server is a :class:`MatrixError`,
which knows its HTTP status and renders as the spec's ``{"errcode", "error"}``
body. Code that handles network input raises nothing else on purpose.
"""

from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    """An error with a Matrix ``errcode`` and an HTTP status.

    Extra keyword arguments become extra fields of the JSON body, e.g.
    ``room_version`` for ``M_INCOMPATIBLE_ROOM_VERSION`` or ``retry_after_ms``
    for ``M_LIMIT_EXCEEDED``.
    """

    def __init__(self, code: int, errcode: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.code = code
        self.errcode = errcode
        self.msg = msg
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.msg}
        body.update(self.extra)
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.errcode!r}, {self.msg!r})"


class AuthError(MatrixError):
    """An event is not allowed by the authorisation rules (or a request is forbidden)."""

    def __init__(self, msg: str, code: int = 403, errcode: str = "M_FORBIDDEN", **extra: Any):
        super().__init__(code, errcode, msg, **extra)


class SignatureError(MatrixError):
    """A signature is missing, malformed, or does not verify."""

    def __init__(
        self, msg: str, code: int = 401, errcode: str = "M_UNAUTHORIZED", **extra: Any
    ) -> None:
        super().__init__(code, errcode, msg, **extra)


class InvalidIdError(MatrixError):
    """An identifier does not follow its grammar."""

    def __init__(self, msg: str, errcode: str = "M_INVALID_PARAM", **extra: Any) -> None:
        super().__init__(400, errcode, msg, **extra)


class BadJsonError(MatrixError):
    """A request or PDU is not acceptable JSON (``M_NOT_JSON``) or has the wrong shape
    (``M_BAD_JSON``)."""

    def __init__(self, msg: str, errcode: str = "M_BAD_JSON", **extra: Any) -> None:
        super().__init__(400, errcode, msg, **extra)


class UnsupportedRoomVersionError(MatrixError):
    """A room version this library does not implement."""

    def __init__(self, room_version: str, errcode: str = "M_UNSUPPORTED_ROOM_VERSION") -> None:
        super().__init__(
            400,
            errcode,
            f"Room version {room_version!r} is not supported",
            **({"room_version": room_version} if errcode == "M_INCOMPATIBLE_ROOM_VERSION" else {}),
        )
        self.room_version = room_version


class NotFoundError(MatrixError):
    def __init__(self, msg: str = "Not found", **extra: Any) -> None:
        super().__init__(404, "M_NOT_FOUND", msg, **extra)


class StateResolutionError(Exception):
    """State resolution was given inconsistent input (e.g. a needed event is missing).

    Not a :class:`MatrixError`: it signals a bug or missing data in the caller, who
    decides what to answer.
    """

    def __init__(self, msg: str, missing_event_ids: frozenset[str] = frozenset()) -> None:
        super().__init__(msg)
        self.missing_event_ids = missing_event_ids
