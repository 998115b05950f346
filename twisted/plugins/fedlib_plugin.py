"""``twistd fedlib``: a standalone Matrix federation server on SQLite.

Everything is checked in :meth:`Options.postOptions`, so a bad option, key file
or config file ends ``twistd`` with one clear line instead of a traceback.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    """Command-line options; a YAML ``--config`` file supplies the rest, and the
    command line wins over it."""

    synopsis = "--server-name NAME [--data-dir DIR] [options]"
    longdesc = (
        "Run a Matrix federation server (key server and every federation endpoint) "
        "on SQLite, with a signing key and optionally a self-signed certificate "
        "created in the data directory on first run."
    )

    optFlags = [
        ["self-signed", None, "Create DIR/tls.crt and DIR/tls.key if missing (self-signed)."],
        [
            "no-verify-tls",
            None,
            "Do not verify remote servers' TLS certificates (loopback tests only).",
        ],
        ["enable-registration", None, "Open registration on the client listener (m.login.dummy)."],
    ]
    optParameters = [
        ["server-name", None, None, "This server's name, e.g. example.org or 127.0.0.1:8448."],
        ["data-dir", None, None, "Directory for the key, certificate and database."],
        ["database", None, None, "sqlite:///PATH (default DIR/fedlib.db) or postgresql://..."],
        ["config", None, None, "YAML file with further options (notaries, limits, log_level...)."],
        [
            "client-listen",
            None,
            None,
            "Client-Server API endpoint, e.g. tcp:8008:interface=127.0.0.1 (default: none).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Federation listener endpoint, repeatable [default: ssl:8448:privateKey=DIR/tls.key:certKey=DIR/tls.crt]"""
        from fedlib.config import ConfigError

        try:
            _listen_port(description)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self["listen"].append(description)

    def postOptions(self) -> None:
        from fedlib.config import ConfigError

        try:
            self["fedlib"] = _prepare(self)
        except (ConfigError, OSError, ValueError) as e:
            raise usage.UsageError(str(e)) from None
        except Exception as e:  # key files and the like fail with library errors
            raise usage.UsageError(f"{type(e).__name__}: {e}") from None


def _prepare(opts: Options) -> dict[str, Any]:
    """Merge the YAML file and the command line, create what is missing in the data
    directory and return everything :class:`StandaloneService` needs."""
    from fedlib.config import (
        ConfigError,
        config_from_mapping,
        load_yaml_config,
        parse_server_name,
    )
    from fedlib.crypto.keys import load_or_create_signing_key

    merged: dict[str, Any] = {}
    if opts["config"]:
        merged.update(load_yaml_config(opts["config"]))
    if opts["server-name"]:
        merged["server_name"] = opts["server-name"]
    if opts["data-dir"]:
        merged["data_dir"] = opts["data-dir"]
    if opts["database"]:
        merged["database"] = opts["database"]
    if opts["listen"]:
        merged["listen"] = list(opts["listen"])
    if opts["self-signed"]:
        merged["self_signed"] = True
    if opts["no-verify-tls"]:
        merged["verify_tls"] = False
    if not merged.get("server_name"):
        raise ConfigError("--server-name is required")
    parse_server_name(merged["server_name"])
    if opts["client-listen"]:
        _listen_port(opts["client-listen"], "--client-listen")

    data_dir = Path(merged.get("data_dir") or "./fedlib-data").resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create data directory {data_dir}: {e.strerror}") from None
    # Before anything in the directory is created or read: one process per directory.
    data_dir_lock = _lock_data_dir(data_dir)
    key_path = Path(merged.get("signing_key_path") or data_dir / "signing.key")
    try:
        signing_key = load_or_create_signing_key(key_path)
    except OSError as e:
        raise ConfigError(f"Cannot read or create signing key {key_path}: {e.strerror}") from None
    except Exception as e:
        raise ConfigError(f"Signing key file {key_path} is invalid: {e}") from None

    cert = Path(merged.get("tls_certificate_path") or data_dir / "tls.crt")
    key = Path(merged.get("tls_private_key_path") or data_dir / "tls.key")
    if merged.get("self_signed"):
        from fedlib.tls import ensure_self_signed, host_of

        ensure_self_signed(cert, key, host_of(merged["server_name"]))
    merged["tls_certificate_path"] = str(cert)
    merged["tls_private_key_path"] = str(key)
    if not merged.get("listen"):
        merged["listen"] = [f"ssl:8448:privateKey={_esc(key)}:certKey={_esc(cert)}"]
    listen = merged["listen"] if isinstance(merged["listen"], list) else [merged["listen"]]
    for description in listen:
        _check_endpoint(description)
    _, name_port = parse_server_name(merged["server_name"])
    ports = [_listen_port(description) for description in listen]
    listen_warning = None
    if name_port is not None and name_port not in ports:
        # The default listener stays ssl:8448; a server name with another port
        # sends remote servers elsewhere, so say so at start.
        shown = ", ".join(str(p) for p in ports if p is not None) or "none"
        listen_warning = (
            f"*** --server-name {merged['server_name']} names port {name_port}, which "
            f"remote servers will contact, but no federation listener is on port "
            f"{name_port} (listener port(s): {shown}; --listen {' '.join(listen)}). "
            f"Pass --listen with port {name_port}, or forward port {name_port} to a "
            "listener. ***"
        )

    database = merged.get("database") or f"sqlite://{data_dir / 'fedlib.db'}"
    if not isinstance(database, str) or not database.startswith(
        ("sqlite:", "postgresql://", "postgres://", "memory:")
    ):
        raise ConfigError(
            f"--database must be sqlite:///PATH or postgresql://..., not {database!r}"
        )
    level = str(merged.get("log_level", "info")).lower()
    if level not in ("debug", "info", "warn", "warning", "error", "critical"):
        raise ConfigError(f"log_level must be debug, info, warn, error or critical, not {level}")

    # Validate everything else now (the store is opened when the service starts).
    config = config_from_mapping(merged, signing_key=signing_key, store=None)
    prepared = {
        "config": config,
        "database": database,
        "log_level": level,
        "listen_warning": listen_warning,
        # Held (open) for the life of the process; released when it exits.
        "data_dir_lock": data_dir_lock,
    }
    if opts["client-listen"]:
        _check_endpoint(opts["client-listen"], "--client-listen")
        prepared["client_listen"] = opts["client-listen"]
        prepared["client_db"] = str(data_dir / "clientapi.db")
        prepared["enable_registration"] = bool(opts["enable-registration"])
    return prepared


def _lock_data_dir(data_dir: Path) -> Any:
    """Take ``DIR/fedlib.lock`` for this process, or raise :class:`ConfigError` when
    another process holds it. An ``flock`` on an open file: the kernel releases it
    when the process ends however it ends, and a daemonising ``twistd`` keeps it
    across its forks. Returns the open file, to be kept for the process's life."""
    from fedlib.config import ConfigError

    path = data_dir / "fedlib.lock"
    try:
        import fcntl
    except ImportError:  # Not a POSIX system: a lock file with the holder's PID.
        from twisted.python.lockfile import FilesystemLock

        lock = FilesystemLock(str(path))  # type: ignore[no-untyped-call]
        if not lock.lock():  # type: ignore[no-untyped-call]
            raise ConfigError(
                f"Data directory {data_dir} is in use by another fedlib process ({path} is locked)"
            ) from None
        return lock
    try:
        handle = open(path, "a+")  # noqa: SIM115 - kept open while the process runs
    except OSError as e:
        raise ConfigError(f"Cannot open lock file {path}: {e.strerror}") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise ConfigError(
            f"Data directory {data_dir} is in use by another fedlib process{pid}: "
            f"{path} is locked. Stop it first, or use another --data-dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _esc(path: Path) -> str:
    # Endpoint descriptions use ':' as a separator and '\' as its escape.
    return str(path).replace("\\", "\\\\").replace(":", "\\:")


#: Server endpoint types that listen on a port (given first, or as ``port=``).
_PORT_ENDPOINTS = ("tcp", "tcp6", "ssl")


def _listen_port(description: str, option: str = "--listen") -> int | None:
    """The port a listener description names (``None`` for endpoint types without
    one, such as ``unix:``), after checking its syntax: a port-taking endpoint needs
    a port number, and ``ssl:`` its key file. Nothing is opened."""
    from twisted.internet import endpoints

    from fedlib.config import ConfigError

    if not isinstance(description, str) or not description:
        raise ConfigError(f"Bad {option} endpoint {description!r}: empty description")
    try:
        args, kwargs = endpoints._parse(description)  # type: ignore[attr-defined,no-untyped-call]
    except Exception as e:
        raise ConfigError(f"Bad {option} endpoint {description!r}: {e}") from None
    kind = str(args[0]).lower() if args else ""
    if kind not in _PORT_ENDPOINTS:
        return None
    port = kwargs.get("port", args[1] if len(args) > 1 else None)
    if not isinstance(port, str) or not port.isdigit() or int(port) > 65535:
        shown = "no port" if port in (None, "") else f"{port!r} is not a port number"
        raise ConfigError(
            f"Bad {option} endpoint {description!r}: {shown} "
            f"(expected {kind}:PORT..., e.g. {kind}:8448{':privateKey=...' if kind == 'ssl' else ''})"
        )
    if kind == "ssl" and not kwargs.get("privateKey"):
        raise ConfigError(
            f"Bad {option} endpoint {description!r}: ssl needs privateKey=FILE "
            "(and certKey=FILE), e.g. ssl:8448:privateKey=DIR/tls.key:certKey=DIR/tls.crt"
        )
    return int(port)


def _check_endpoint(description: str, option: str = "--listen") -> None:
    from twisted.internet import endpoints

    from fedlib.config import ConfigError

    _listen_port(description, option)
    if description.startswith("ssl:"):
        for part in description.split(":"):
            for name in ("privateKey=", "certKey="):
                if part.startswith(name) and not Path(part[len(name) :]).exists():
                    raise ConfigError(
                        f"{option} {description!r}: {part[len(name) :]} does not exist "
                        "(use --self-signed to create a certificate)"
                    )
    try:
        # Parsing only: the plugin named in the description must exist and accept
        # the arguments; nothing is opened here.
        endpoints._parseServer(description, None)  # type: ignore[attr-defined,no-untyped-call]
    except Exception as e:
        raise ConfigError(f"Bad {option} endpoint {description!r}: {e}") from None


class _ForwardToTwisted(logging.Handler):
    """Sends the stdlib logging of fedlib's modules to twistd's log."""

    def emit(self, record: logging.LogRecord) -> None:
        from twisted.logger import Logger

        try:
            msg = self.format(record)
        except Exception:
            msg = record.getMessage()
        logger = Logger(namespace=record.name)
        if record.levelno >= logging.ERROR:
            logger.error("{msg}", msg=msg)
        elif record.levelno >= logging.WARNING:
            logger.warn("{msg}", msg=msg)
        elif record.levelno >= logging.INFO:
            logger.info("{msg}", msg=msg)
        else:
            logger.debug("{msg}", msg=msg)


#: The log namespaces ``log_level`` applies to: fedlib's modules and this plugin.
FEDLIB_NAMESPACES = ("fedlib", "twisted.plugins.fedlib_plugin")


class _LevelFilter:
    """Applies ``log_level`` to fedlib's own messages in twistd's log.

    twistd has already begun logging to its observers (file or stdout) when the
    service starts; each is wrapped in a :class:`twisted.logger.FilteringLogObserver`
    whose :class:`~twisted.logger.LogLevelFilterPredicate` drops events of fedlib's
    namespaces below the level and lets everything else through unchanged.
    :meth:`remove` puts the original observers back."""

    def __init__(self, level: str) -> None:
        from twisted.logger import LogLevel, LogLevelFilterPredicate

        self.predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
        wanted = LogLevel.levelWithName("warn" if level == "warning" else level)
        for namespace in FEDLIB_NAMESPACES:
            self.predicate.setLogLevelForNamespace(namespace, wanted)
        self._wrapped: list[tuple[Any, Any]] = []

    def install(self, publisher: Any = None) -> None:
        from twisted.logger import FilteringLogObserver, globalLogPublisher

        self.publisher = publisher if publisher is not None else globalLogPublisher
        # LogPublisher has no public list of its observers.
        for observer in list(getattr(self.publisher, "_observers", ())):
            wrapper = FilteringLogObserver(observer, [self.predicate])
            self.publisher.removeObserver(observer)
            self.publisher.addObserver(wrapper)
            self._wrapped.append((observer, wrapper))

    def remove(self) -> None:
        wrapped, self._wrapped = self._wrapped, []
        for observer, wrapper in wrapped:
            self.publisher.removeObserver(wrapper)
            self.publisher.addObserver(observer)


class StandaloneService(MultiService):
    """Opens the store, then runs a :class:`fedlib.service.FederationService`."""

    def __init__(self, prepared: dict[str, Any], filter_logs: bool = False) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.prepared = prepared
        #: Apply ``log_level`` to the global log observers (those twistd installed);
        #: set by :meth:`FedlibServiceMaker.makeService`, not by embedders' tests.
        self.filter_logs = filter_logs
        self.federation: Any = None
        self.client_api: Any = None
        self._starting: Any = None
        self._log_filter: _LevelFilter | None = None

    def startService(self) -> None:
        from twisted.internet import defer, reactor
        from twisted.logger import Logger

        log = Logger()
        level = self.prepared["log_level"]
        if self.filter_logs and self._log_filter is None:
            self._log_filter = _LevelFilter(level)
            self._log_filter.install()
        fedlib_logger = logging.getLogger("fedlib")
        fedlib_logger.setLevel(logging.WARNING if level == "warn" else level.upper())
        if not any(isinstance(h, _ForwardToTwisted) for h in fedlib_logger.handlers):
            fedlib_logger.addHandler(_ForwardToTwisted())
        super().startService()  # type: ignore[no-untyped-call]
        config = self.prepared["config"]
        lock: Any = self.prepared.get("data_dir_lock")
        if hasattr(lock, "truncate"):
            # A daemonising twistd forked since the lock was taken: record our PID.
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
        if self.prepared.get("listen_warning"):
            log.warn("{text}", text=self.prepared["listen_warning"])
        if not config.tls.verify:
            log.warn(
                "*** --no-verify-tls: remote servers' TLS certificates are NOT verified. "
                "Use this only for tests on loopback. ***"
            )

        @defer.inlineCallbacks
        def go() -> Any:
            import attrs

            from fedlib.service import FederationService

            store = yield _open_store(self.prepared["database"], reactor)
            fed_config = attrs.evolve(config, store=store)
            if self.prepared.get("client_listen"):
                # The client API is an embedder: its hooks go into the config.
                from fedlib.clientapi import ClientService, SQLiteClientStore

                self.client_api = ClientService(
                    SQLiteClientStore(self.prepared["client_db"], reactor),
                    config.server_name,
                    listen=[self.prepared["client_listen"]],
                    enable_registration=self.prepared["enable_registration"],
                    reactor=reactor,
                )
                fed_config = attrs.evolve(fed_config, hooks=self.client_api.hooks)
            fed = FederationService(fed_config, reactor=reactor)
            self.federation = fed
            yield fed.startService()
            if self.client_api is not None:
                yield self.client_api.start(fed)
            log.info(
                "fedlib serving {name} on {listen}",
                name=config.server_name,
                listen=", ".join(config.listen),
            )

        def failed(f: Any) -> None:
            log.failure("fedlib failed to start", f)
            log.error("fedlib failed to start: {err}", err=f.getErrorMessage())
            if reactor.running:  # type: ignore[attr-defined,no-untyped-call]
                reactor.stop()  # type: ignore[attr-defined,no-untyped-call]

        self._starting = go()
        self._starting.addErrback(failed)

    def stopService(self) -> Any:
        from twisted.internet import defer

        super().stopService()  # type: ignore[no-untyped-call]
        d: Any = defer.succeed(None)
        if self.federation is not None and self.federation.running:
            d = self.federation.stopService()
        if self.client_api is not None:
            # After the federation service: its hooks write to the client store.
            client_api = self.client_api
            d.addBoth(lambda _: client_api.stop())
        log_filter, self._log_filter = self._log_filter, None
        if log_filter is not None:

            def unfilter(result: Any) -> Any:
                log_filter.remove()
                return result

            d.addBoth(unfilter)
        return d


def _open_store(url: str, reactor: Any) -> Any:
    from twisted.internet import defer

    from fedlib.storage import open_store

    return defer.maybeDeferred(open_store, url, reactor)


@implementer(IServiceMaker, IPlugin)
class FedlibServiceMaker:
    tapname = "fedlib"
    description = "A Matrix federation server (fedlib)."
    options = Options

    def makeService(self, options: Options) -> StandaloneService:
        return StandaloneService(options["fedlib"], filter_logs=True)


serviceMaker = FedlibServiceMaker()
