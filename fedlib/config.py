"""Configuration of a fedlib federation server.

:class:`FederationConfig` is the one object an embedder builds (in code) and the
``twistd fedlib`` plugin builds from its options and YAML file
(:func:`config_from_mapping`). It is a frozen record: derive variants with
``attrs.evolve``. Invalid values raise :class:`ConfigError` with a message meant
for a human, never a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from fedlib.events.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS
from fedlib.hooks import IFederationHooks, NullHooks

__all__ = [
    "ConfigError",
    "FederationConfig",
    "Limits",
    "Notary",
    "OldSigningKey",
    "TlsOptions",
    "config_from_mapping",
    "load_yaml_config",
    "parse_server_name",
]


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


_DNS_RE = re.compile(r"^[A-Za-z0-9.-]{1,255}$")


def parse_server_name(server_name: str) -> tuple[str, int | None]:
    """Split a server name into host and optional port, validating the grammar
    (spec appendix "Server Name"). IPv6 literals keep their brackets."""
    if not isinstance(server_name, str) or not server_name:
        raise ConfigError("server_name must be a non-empty string")
    host, port_text = server_name, None
    if server_name.startswith("["):
        end = server_name.find("]")
        if end < 0:
            raise ConfigError(f"server_name {server_name!r}: unterminated IPv6 literal")
        host, rest = server_name[: end + 1], server_name[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"server_name {server_name!r}: invalid IPv6 literal") from None
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"server_name {server_name!r}: junk after IPv6 literal")
            port_text = rest[1:]
    elif ":" in server_name:
        host, _, port_text = server_name.rpartition(":")
    if not host.startswith("[") and not _DNS_RE.match(host):
        raise ConfigError(f"server_name {server_name!r}: invalid host {host!r}")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535 or len(port_text) > 5:
            raise ConfigError(f"server_name {server_name!r}: invalid port {port_text!r}")
        port = int(port_text)
    return host, port


def _check_server_name(_inst: Any, _attr: Any, value: str) -> None:
    parse_server_name(value)


def _positive(_inst: Any, attribute: Any, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{attribute.name} must be a positive number, not {value!r}")


@attrs.frozen(slots=True)
class OldSigningKey:
    """A signing key we no longer use, still published under ``old_verify_keys``
    so that events signed with it keep verifying."""

    key_id: str
    #: A ``nacl`` VerifyKey (``fedlib.crypto.keys.decode_verify_key_base64``).
    verify_key: Any
    #: When we stopped using it (ms since the epoch).
    expired_ts: int


@attrs.frozen(slots=True)
class Notary:
    """A key server trusted to vouch for other servers' keys (perspectives).

    With ``verify_keys`` empty the notary's own key is fetched from it on first
    use (trust on first use); give its keys (``{key_id: unpadded base64}``) to pin them.
    """

    server_name: str = attrs.field(validator=_check_server_name)
    verify_keys: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(slots=True)
class TlsOptions:
    """TLS for the server's own listener and for outbound requests."""

    #: PEM certificate chain and key of this server (``twistd fedlib`` builds its
    #: default listener from them; an embedder names them in ``listen`` endpoints).
    certificate_path: str | None = None
    private_key_path: str | None = None
    #: Verify remote servers' certificates. Turn off only for loopback tests.
    verify: bool = True
    #: A PEM bundle of trusted CAs instead of the system store.
    ca_bundle: str | None = None


@attrs.frozen(slots=True)
class Limits:
    """Sizes, rates and timeouts. The defaults suit a small homeserver."""

    #: Largest inbound request body accepted (bytes).
    max_request_body: int = attrs.field(default=10 * 1024 * 1024, validator=_positive)
    #: Inbound requests per second per origin server, and the burst allowed above it.
    requests_per_second: float = attrs.field(default=50.0, validator=_positive)
    request_burst: int = attrs.field(default=200, validator=_positive)
    #: Timeout of one outbound request (seconds).
    request_timeout: float = attrs.field(default=60.0, validator=_positive)
    #: Budget for filling a gap with /get_missing_events before falling back to
    #: fetching the state (seconds), and the most events asked for.
    gap_fill_timeout: float = attrs.field(default=30.0, validator=_positive)
    max_missing_events: int = attrs.field(default=10, validator=_positive)
    #: How long our published keys are valid (ms); remote servers cache them this long.
    key_validity_ms: int = attrs.field(default=24 * 3600 * 1000, validator=_positive)


def _check_hooks(_inst: Any, _attr: Any, value: Any) -> None:
    if not IFederationHooks.providedBy(value):
        raise ConfigError(f"hooks must provide IFederationHooks, not {type(value).__name__}")


def _check_versions(_inst: Any, _attr: Any, value: tuple[str, ...]) -> None:
    unknown = [v for v in value if v not in KNOWN_ROOM_VERSIONS]
    if unknown:
        raise ConfigError(f"Unknown room version(s) {unknown}; known: 1 to 12")
    if not value:
        raise ConfigError("room_versions must not be empty")


@attrs.frozen(slots=True)
class FederationConfig:
    """Everything a :class:`fedlib.service.FederationService` needs.

    Only ``server_name``, ``signing_key`` and ``store`` are required.
    """

    #: ``host`` or ``host:port`` as other servers address us (``127.0.0.1:8448``).
    server_name: str = attrs.field(validator=_check_server_name)
    #: The current ``nacl`` SigningKey with ``alg``/``version`` attributes
    #: (``fedlib.crypto.keys.load_or_create_signing_key``).
    signing_key: Any
    #: An :class:`fedlib.storage.interface.IFederationStore` provider.
    store: Any
    old_signing_keys: tuple[OldSigningKey, ...] = ()
    hooks: Any = attrs.field(factory=NullHooks, validator=_check_hooks)
    tls: TlsOptions = attrs.field(factory=TlsOptions)
    notaries: tuple[Notary, ...] = ()
    limits: Limits = attrs.field(factory=Limits)
    #: Room versions we join and create, and the one new rooms get by default.
    room_versions: tuple[str, ...] = attrs.field(
        default=tuple(KNOWN_ROOM_VERSIONS), validator=_check_versions
    )
    default_room_version: str = DEFAULT_ROOM_VERSION
    #: Twisted server endpoint descriptions on which :class:`FederationService`
    #: listens itself; empty when the embedder mounts ``service.resource``.
    listen: tuple[str, ...] = ()
    #: An ``m.room.server_acl`` content put into rooms this server creates (``None``: none).
    default_server_acl: Mapping[str, Any] | None = None
    #: Identifies this process in the store's leases (claims of transactions and
    #: outbound batches) when several processes share one database.
    instance_name: str = "main"

    def __attrs_post_init__(self) -> None:
        if self.default_room_version not in self.room_versions:
            raise ConfigError(
                f"default_room_version {self.default_room_version!r} is not among "
                f"room_versions {list(self.room_versions)}"
            )
        if not (hasattr(self.signing_key, "sign") and hasattr(self.signing_key, "version")):
            raise ConfigError("signing_key must be a signedjson/nacl signing key")

    @property
    def verify_tls(self) -> bool:
        """Whether remote certificates are verified (``tls.verify``)."""
        return self.tls.verify

    @property
    def ca_bundle(self) -> str | None:
        return self.tls.ca_bundle


# -- YAML and command-line ------------------------------------------------------

#: Keys accepted at the top level of a YAML configuration file.
YAML_KEYS = frozenset(
    {
        "server_name",
        "data_dir",
        "database",
        "listen",
        "self_signed",
        "verify_tls",
        "ca_bundle",
        "tls_certificate_path",
        "tls_private_key_path",
        "signing_key_path",
        "notaries",
        "limits",
        "room_versions",
        "default_room_version",
        "default_server_acl",
        "log_level",
        "instance_name",
    }
)

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def load_yaml_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML configuration file into a dict, checking its top-level keys."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"Cannot read config file {os.fspath(path)}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {os.fspath(path)} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {os.fspath(path)} must hold a mapping at the top level")
    unknown = sorted(str(k) for k in data if k not in YAML_KEYS)
    if unknown:
        raise ConfigError(
            f"Config file {os.fspath(path)}: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(YAML_KEYS))})"
        )
    return data


def _str_tuple(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a list of strings")
    return tuple(value)


def _notaries(value: Any) -> tuple[Notary, ...]:
    if not isinstance(value, list):
        raise ConfigError("notaries must be a list")
    out = []
    for item in value:
        if isinstance(item, str):
            out.append(Notary(item))
        elif isinstance(item, dict) and isinstance(item.get("server_name"), str):
            keys = item.get("verify_keys", {})
            if not isinstance(keys, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in keys.items()
            ):
                raise ConfigError("notaries[].verify_keys must map key IDs to base64 keys")
            out.append(Notary(item["server_name"], dict(keys)))
        else:
            raise ConfigError("each notary is a server name or {server_name, verify_keys}")
    return tuple(out)


def _limits(value: Any) -> Limits:
    if not isinstance(value, dict):
        raise ConfigError("limits must be a mapping")
    known = {a.name for a in attrs.fields(Limits)}
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise ConfigError(f"limits: unknown option(s) {', '.join(unknown)}")
    try:
        return Limits(**value)
    except TypeError as e:
        raise ConfigError(f"limits: {e}") from None


def config_from_mapping(
    options: Mapping[str, Any], *, signing_key: Any, store: Any, hooks: Any = None
) -> FederationConfig:
    """A :class:`FederationConfig` from YAML-style options (already merged with the
    command line). Options that only the plugin uses (``data_dir``, ``database``,
    ``self_signed``, ``log_level``, paths) are ignored here."""
    kwargs: dict[str, Any] = {}
    if "server_name" not in options or not options["server_name"]:
        raise ConfigError("server_name is required (--server-name)")
    kwargs["server_name"] = options["server_name"]
    tls = TlsOptions(
        certificate_path=options.get("tls_certificate_path"),
        private_key_path=options.get("tls_private_key_path"),
        verify=bool(options.get("verify_tls", True)),
        ca_bundle=options.get("ca_bundle"),
    )
    kwargs["tls"] = tls
    if options.get("notaries") is not None:
        kwargs["notaries"] = _notaries(options["notaries"])
    if options.get("limits") is not None:
        kwargs["limits"] = _limits(options["limits"])
    if options.get("room_versions") is not None:
        versions = options["room_versions"]
        if not isinstance(versions, list | tuple):
            versions = [versions]
        # YAML reads `[10, 11]` as integers; room versions are strings.
        kwargs["room_versions"] = tuple(str(v) for v in versions)
    if options.get("default_room_version") is not None:
        kwargs["default_room_version"] = str(options["default_room_version"])
    if options.get("listen"):
        kwargs["listen"] = _str_tuple("listen", options["listen"])
    acl = options.get("default_server_acl")
    if acl is not None:
        if not isinstance(acl, dict):
            raise ConfigError("default_server_acl must be an m.room.server_acl content mapping")
        kwargs["default_server_acl"] = acl
    if options.get("instance_name") is not None:
        kwargs["instance_name"] = str(options["instance_name"])
    if hooks is not None:
        kwargs["hooks"] = hooks
    try:
        return FederationConfig(signing_key=signing_key, store=store, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
