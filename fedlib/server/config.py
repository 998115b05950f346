"""Configuration of the inbound federation server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["OldVerifyKey", "ServerConfig"]


@attrs.frozen(slots=True)
class OldVerifyKey:
    """A key we no longer sign with, still published under ``old_verify_keys``."""

    verify_key: Any
    expired_ts: int


@attrs.frozen(slots=True)
class ServerConfig:
    """What the Resource tree needs to know about us.

    ``signing_key`` is a :mod:`fedlib.crypto.keys` signing key (with ``alg`` and
    ``version``); it signs our key responses, notary answers and events we sign
    (restricted joins, invites).
    """

    server_name: str
    signing_key: Any
    old_verify_keys: Mapping[str, OldVerifyKey] = attrs.field(factory=dict)
    #: Largest request body accepted (413 ``M_TOO_LARGE`` beyond).
    max_body_bytes: int = 10 * 1024 * 1024
    max_pdus_per_transaction: int = 50
    max_edus_per_transaction: int = 100
    #: Sustained requests per second and burst allowed per origin server.
    rate_per_second: float = 50.0
    rate_burst: int = 500
    #: Upper bound on the time spent on one PDU (gap filling included), seconds.
    pdu_timeout_seconds: float = 60.0
    #: How long our key response says our key is valid (ms).
    key_validity_period_ms: int = 24 * 3600 * 1000
    #: ``m.server`` value for ``/.well-known/matrix/server``; ``None`` serves no well-known.
    well_known_server: str | None = None
    software_name: str = "fedlib"
    software_version: str = "0.1.0.dev0"
    #: Room versions we accept invites to (others: ``M_INCOMPATIBLE_ROOM_VERSION``).
    supported_room_versions: tuple[str, ...] = tuple(str(n) for n in range(1, 13))
