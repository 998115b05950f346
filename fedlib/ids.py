"""Matrix identifiers: server names, user IDs, room IDs, event IDs and room aliases.

The grammars are those of the spec appendix "Identifier Grammar" and of the room
versions. Identifiers arriving over federation are parsed with the lenient
(historical) grammars the spec requires receivers to accept; identifiers this
server creates should pass the stricter current grammar
(:func:`is_valid_local_user_id`).

Every function here raises :class:`~fedlib.errors.InvalidIdError` and nothing else
on bad input, whatever its type.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

import attrs

from fedlib.errors import InvalidIdError
from fedlib.events.room_versions import EventFormat, RoomVersion, get_room_version

__all__ = [
    "MAX_ID_BYTES",
    "RoomAlias",
    "UserID",
    "all_valid_event_ids",
    "is_valid_event_id",
    "is_valid_local_user_id",
    "is_valid_room_id",
    "is_valid_server_name",
    "is_valid_user_id",
    "parse_room_alias",
    "parse_server_name",
    "parse_user_id",
    "server_of",
    "validate_event_id",
    "validate_room_id",
    "validate_user_id",
]

#: User IDs, room IDs, event IDs and aliases are at most this many UTF-8 bytes.
MAX_ID_BYTES = 255

_DNS_NAME_RE = re.compile(r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*")
_IPV4_RE = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_IPV6_CHARS_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_PORT_RE = re.compile(r"[0-9]{1,5}")
# The spec's current user ID grammar (v1.8+), for IDs this server creates.
_LOCAL_USER_RE = re.compile(r"[a-z0-9._=/+-]+")
# 32-byte SHA-256 digests in unpadded base64: 43 characters, the last one carrying
# only 4 significant bits (so its low 2 bits are zero).
_HASH_STD_RE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]")
_HASH_URLSAFE_RE = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
# Comma-separated lists of v3 / v4+ event IDs.
_HASH_STD_LIST_RE = re.compile(
    r"\$[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048](?:,\$[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048])*"
)
_HASH_URLSAFE_LIST_RE = re.compile(
    r"\$[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048](?:,\$[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048])*"
)
_STR_ONLY = frozenset((str,))


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidIdError(f"{what} must be a string")
    return value


def _check_length(value: str, what: str) -> None:
    # Cheap pre-check: a str of at most 63 code points is at most 252 UTF-8 bytes.
    if len(value) <= 63:
        if not _encodable(value):
            raise InvalidIdError(f"{what} contains a lone surrogate")
        return
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidIdError(f"{what} contains a lone surrogate") from None
    if size > MAX_ID_BYTES:
        raise InvalidIdError(f"{what} is longer than {MAX_ID_BYTES} bytes")


def _encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_server_name(server_name: object) -> tuple[str, int | None]:
    """Split a server name into ``(host, port)``; ``port`` is ``None`` when absent.

    Accepts DNS names, dotted-quad IPv4 literals and bracketed IPv6 literals
    (returned with their brackets, as they appear in the server name), with an
    optional port in 1-65535. Server names are case-sensitive and are returned as
    given.
    """
    name = _require_str(server_name, "Server name")
    if not name:
        raise InvalidIdError("Server name is empty")
    if name[0] == "[":
        close = name.find("]")
        if close < 0:
            raise InvalidIdError(f"Unterminated IPv6 literal in server name {name!r}")
        host, rest = name[: close + 1], name[close + 1 :]
        literal = host[1:-1]
        if not _IPV6_CHARS_RE.fullmatch(literal):
            raise InvalidIdError(f"Invalid IPv6 literal in server name {name!r}")
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise InvalidIdError(f"Invalid IPv6 literal in server name {name!r}") from None
        if rest and rest[0] != ":":
            raise InvalidIdError(f"Junk after IPv6 literal in server name {name!r}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_or_empty = name.partition(":")
        port_text = port_text_or_empty if sep else None
        if len(host) > 255 or not _DNS_NAME_RE.fullmatch(host):
            raise InvalidIdError(f"Invalid host in server name {name!r}")
        ipv4 = _IPV4_RE.fullmatch(host)
        # Four all-numeric labels can only be meant as an IPv4 literal; reject
        # out-of-range octets rather than treat them as a DNS name.
        if ipv4 is not None and any(int(octet) > 255 for octet in ipv4.groups()):
            raise InvalidIdError(f"Invalid IPv4 literal in server name {name!r}")
    port: int | None = None
    if port_text is not None:
        if not _PORT_RE.fullmatch(port_text):
            raise InvalidIdError(f"Invalid port in server name {name!r}")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise InvalidIdError(f"Port out of range in server name {name!r}")
    return host, port


def is_valid_server_name(server_name: object) -> bool:
    """Whether ``server_name`` follows the server name grammar."""
    if type(server_name) is str and len(server_name) <= 255:
        # Every ID of a big batch of PDUs names one of a few servers.
        return _valid_server_name_cached(server_name)
    try:
        parse_server_name(server_name)
    except InvalidIdError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _valid_server_name_cached(server_name: str) -> bool:
    try:
        parse_server_name(server_name)
    except InvalidIdError:
        return False
    return True


def _split_sigil_id(value: object, sigil: str, what: str) -> tuple[str, str]:
    """Split ``&localpart:domain``; the localpart is the historical, lenient grammar
    (any code point but ``:`` and NUL), the domain a valid server name."""
    text = _require_str(value, what)
    if not text.startswith(sigil):
        raise InvalidIdError(f"{what} must start with {sigil!r}")
    _check_length(text, what)
    localpart, sep, domain = text[1:].partition(":")
    if not sep:
        raise InvalidIdError(f"{what} has no server name")
    if "\x00" in localpart:
        raise InvalidIdError(f"{what} contains NUL")
    if not is_valid_server_name(domain):
        raise InvalidIdError(f"{what} has an invalid server name")
    return localpart, domain


@attrs.frozen(slots=True)
class UserID:
    """A parsed user ID ``@localpart:domain``."""

    localpart: str
    domain: str

    def to_string(self) -> str:
        return f"@{self.localpart}:{self.domain}"

    def __str__(self) -> str:
        return self.to_string()

    def is_compliant(self) -> bool:
        """Whether the localpart is non-empty and printable ASCII (U+0021 to U+007E).

        Non-compliant IDs are accepted in events but should not be passed to
        clients outside event context (spec "Historical User IDs").
        """
        return bool(self.localpart) and all("!" <= c <= "~" for c in self.localpart)


@attrs.frozen(slots=True)
class RoomAlias:
    """A parsed room alias ``#localpart:domain``."""

    localpart: str
    domain: str

    def to_string(self) -> str:
        return f"#{self.localpart}:{self.domain}"

    def __str__(self) -> str:
        return self.to_string()


def parse_user_id(user_id: object) -> UserID:
    """Parse a user ID received from elsewhere (the historical grammar: any localpart
    without ``:`` or NUL, possibly empty), at most 255 bytes."""
    localpart, domain = _split_sigil_id(user_id, "@", "User ID")
    return UserID(localpart, domain)


def validate_user_id(user_id: object) -> None:
    """:func:`parse_user_id` without building the result: raise :class:`InvalidIdError`
    unless ``user_id`` is acceptable on receipt."""
    _split_sigil_id(user_id, "@", "User ID")


def is_valid_user_id(user_id: object) -> bool:
    """Whether ``user_id`` is acceptable on receipt (historical grammar)."""
    try:
        parse_user_id(user_id)
    except InvalidIdError:
        return False
    return True


def is_valid_local_user_id(user_id: object) -> bool:
    """Whether ``user_id`` follows the current grammar (localpart of ``a-z 0-9 . _ = - / +``),
    the one to enforce when creating users."""
    try:
        localpart, _ = _split_sigil_id(user_id, "@", "User ID")
    except InvalidIdError:
        return False
    return _LOCAL_USER_RE.fullmatch(localpart) is not None


def parse_room_alias(alias: object) -> RoomAlias:
    """Parse a room alias ``#localpart:domain`` (at most 255 bytes)."""
    localpart, domain = _split_sigil_id(alias, "#", "Room alias")
    return RoomAlias(localpart, domain)


def _version(room_version: str | RoomVersion) -> RoomVersion:
    if isinstance(room_version, RoomVersion):
        return room_version
    return get_room_version(room_version)


def validate_room_id(room_version: str | RoomVersion, room_id: object) -> None:
    """Raise :class:`InvalidIdError` unless ``room_id`` is a room ID of the room version.

    v1-v11: ``!opaque:server``; v12: ``!`` + the URL-safe unpadded base64 of a
    SHA-256 reference hash. An unknown room version raises
    :class:`~fedlib.errors.UnsupportedRoomVersionError`.
    """
    version = _version(room_version)
    _check_room_id(version.room_id_is_create_hash, version.identifier, room_id)


def _check_room_id(create_hash: bool, identifier: str, room_id: object) -> None:
    # validate_room_id depends on the room version through its create_hash flag only.
    if create_hash:
        text = _require_str(room_id, "Room ID")
        if len(text) != 44 or text[0] != "!" or not _HASH_URLSAFE_RE.fullmatch(text, 1):
            raise InvalidIdError(f"Invalid room ID for room version {identifier}")
        return
    _split_sigil_id(room_id, "!", "Room ID")


def is_valid_room_id(room_version: str | RoomVersion, room_id: object) -> bool:
    version = _version(room_version)
    if type(room_id) is str and len(room_id) <= MAX_ID_BYTES:
        # Every PDU of a batch names the same room.
        return _valid_room_id_cached(version.room_id_is_create_hash, room_id)
    try:
        validate_room_id(version, room_id)
    except InvalidIdError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _valid_room_id_cached(create_hash: bool, room_id: str) -> bool:
    try:
        _check_room_id(create_hash, "", room_id)
    except InvalidIdError:
        return False
    return True


def validate_event_id(room_version: str | RoomVersion, event_id: object) -> None:
    """Raise :class:`InvalidIdError` unless ``event_id`` is an event ID of the room version.

    v1/v2: ``$opaque:server``; v3: ``$`` + standard unpadded base64 of a SHA-256
    hash; v4+: the URL-safe alphabet.
    """
    version = _version(room_version)
    fmt = version.event_format
    if fmt is EventFormat.V1:
        _split_sigil_id(event_id, "$", "Event ID")
        return
    text = _require_str(event_id, "Event ID")
    pattern = _HASH_URLSAFE_RE if fmt is EventFormat.V4 else _HASH_STD_RE
    if len(text) != 44 or text[0] != "$" or not pattern.fullmatch(text, 1):
        raise InvalidIdError(f"Invalid event ID for room version {version.identifier}")


def is_valid_event_id(room_version: str | RoomVersion, event_id: object) -> bool:
    try:
        validate_event_id(room_version, event_id)
    except InvalidIdError:
        return False
    return True


def all_valid_event_ids(room_version: str | RoomVersion, event_ids: Iterable[object]) -> bool:
    """Whether :func:`is_valid_event_id` holds for every item (quicker for v3+)."""
    version = _version(room_version)
    fmt = version.event_format
    if fmt is EventFormat.V1:
        return all(is_valid_event_id(version, e) for e in event_ids)
    if type(event_ids) is list and set(map(type, event_ids)) <= _STR_ONLY:
        # One match over all of them. "," is in neither alphabet, so with as many
        # IDs matched as there are items (the length says so) the join's commas
        # are the only ones, and each item is one ID.
        if not event_ids:
            return True
        joined = ",".join(event_ids)
        if len(joined) != 45 * len(event_ids) - 1:
            return False
        many = _HASH_URLSAFE_LIST_RE if fmt is EventFormat.V4 else _HASH_STD_LIST_RE
        return many.fullmatch(joined) is not None
    match = (_HASH_URLSAFE_RE if fmt is EventFormat.V4 else _HASH_STD_RE).fullmatch
    for e in event_ids:
        # validate_event_id's test, with a str subclass sent the long way.
        if type(e) is str:
            if len(e) != 44 or e[0] != "$" or match(e, 1) is None:
                return False
        elif not is_valid_event_id(version, e):
            return False
    return True


def server_of(identifier: object) -> str:
    """The server name of a ``&localpart:server`` identifier (user ID, v1-v11 room ID,
    alias, v1/v2 event ID); :class:`InvalidIdError` when there is none or it is
    malformed (e.g. a v12 room ID, which has no server)."""
    text = _require_str(identifier, "Identifier")
    if not text or text[0] not in "@!#$":
        raise InvalidIdError("Identifier has no known sigil")
    _, domain = _split_sigil_id(text, text[0], "Identifier")
    return domain
