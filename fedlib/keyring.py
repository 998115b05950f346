"""Our keys and remote servers' keys.

:class:`IKeyring` is what the server and client depend on; the implementation
fetches remote keys directly or through notaries and caches them in storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from zope.interface import Interface


class IKeyring(Interface):
    """Finds verify keys of remote servers and checks signatures with them.

    Every method returns a Deferred. Failures are :class:`fedlib.errors.SignatureError`
    (a missing, unknown or bad signature or key) or ``MatrixError`` for transport
    problems that leave the key unknown.
    """

    def get_verify_keys(
        server_name: str, key_ids: Iterable[str], valid_at_ts: int | None = None
    ) -> Any:
        """Deferred ``dict[key_id, VerifyKey]`` of those of ``key_ids`` that are known
        (fetching what is not cached) and, when ``valid_at_ts`` is given, valid at that
        time (old keys count for the times they were valid)."""

    def verify_json_for_server(
        server_name: str, obj: Mapping[str, Any], valid_at_ts: int | None = None
    ) -> Any:
        """Deferred that fires ``None`` when ``obj`` carries a valid signature of
        ``server_name``, or fails with ``SignatureError``."""

    def verify_event(room_version: str, event: Mapping[str, Any]) -> Any:
        """Deferred that fires ``None`` when every server that must sign ``event`` did
        (``fedlib.crypto.signing.required_signers``), with keys valid at its
        ``origin_server_ts`` where the room version demands it."""
