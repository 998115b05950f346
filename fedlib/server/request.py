"""What a handler receives: the parsed, authenticated request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from fedlib.canonical import MAX_INT
from fedlib.server.errors import bad_json, invalid_param, missing_param

__all__ = ["FederationRequest"]


@attrs.frozen(slots=True)
class FederationRequest:
    method: str
    path_params: Mapping[str, str]
    query: Mapping[str, list[str]]
    #: The body parsed by :func:`fedlib.canonical.decode_json` (``None`` when empty).
    content: Any
    #: The authenticated origin; ``None`` on unauthenticated endpoints.
    origin: str | None
    raw_body: bytes = b""

    @property
    def authed_origin(self) -> str:
        assert self.origin is not None
        return self.origin

    def param(self, name: str) -> str:
        return self.path_params[name]

    def query_str(
        self, name: str, default: str | None = None, required: bool = False
    ) -> str | None:
        values = self.query.get(name)
        if not values:
            if required:
                raise missing_param(name)
            return default
        return values[0]

    def query_strs(self, name: str) -> list[str]:
        return list(self.query.get(name, []))

    def query_int(
        self,
        name: str,
        default: int | None = None,
        required: bool = False,
        minimum: int = 0,
        maximum: int = MAX_INT,
    ) -> int | None:
        text = self.query_str(name, required=required)
        if text is None:
            return default
        if not text.isascii() or not text.lstrip("-").isdigit() or len(text) > 20:
            raise invalid_param(f"Parameter {name} is not an integer")
        value = int(text)
        if not minimum <= value <= maximum:
            raise invalid_param(f"Parameter {name} is out of range")
        return value

    def query_bool(self, name: str, default: bool = False) -> bool:
        text = self.query_str(name)
        if text is None:
            return default
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise invalid_param(f"Parameter {name} must be true or false")

    def json_object(self) -> dict[str, Any]:
        """The body, which must be a JSON object."""
        if not isinstance(self.content, dict):
            raise bad_json("Request body must be a JSON object")
        return self.content
