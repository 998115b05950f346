"""Server ACLs (spec "Server Access Control Lists").

Pure functions over the content of an ``m.room.server_acl`` state event.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["is_ip_literal", "server_allowed_by_acl", "strip_port"]


def strip_port(server_name: str) -> str:
    """The host part of a server name; ACLs match hosts without ports."""
    if server_name.startswith("["):
        end = server_name.find("]")
        return server_name[: end + 1] if end != -1 else server_name
    host, _, _ = server_name.partition(":")
    return host


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` (without port) is an IPv4 literal or a bracketed IPv6 literal."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=4096)
def _glob_regex(glob: str) -> re.Pattern[str]:
    parts = []
    for ch in glob:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    # The spec does not say; hostnames are case-insensitive, so matching is too.
    return re.compile("".join(parts), re.DOTALL | re.IGNORECASE)


def _matches_any(host: str, globs: Any) -> bool:
    if not isinstance(globs, list):
        return False
    # Non-string entries are ignored rather than fatal: a bad ACL must not make
    # a room unusable, and ignoring an allow entry only ever denies more.
    return any(isinstance(g, str) and _glob_regex(g).fullmatch(host) for g in globs)


def server_allowed_by_acl(server_name: str, acl_content: Mapping[str, Any] | None) -> bool:
    """Whether ``server_name`` may participate in a room with this ACL content.

    ``None`` (no ACL in the room) allows everyone. Order of checks follows the
    spec: IP literals (``allow_ip_literals``, default true), then ``deny``, then
    ``allow`` (a server matching no ``allow`` glob is denied).
    """
    if acl_content is None:
        return True
    host = strip_port(server_name)
    allow_ip = acl_content.get("allow_ip_literals", True)
    if allow_ip is not True and allow_ip is not False:
        allow_ip = True
    if not allow_ip and is_ip_literal(host):
        return False
    if _matches_any(host, acl_content.get("deny", [])):
        return False
    return _matches_any(host, acl_content.get("allow", []))
