"""A real Synapse on 127.0.0.1 for interoperability tests.

Everything follows ``interop-notes.md``: a TLS federation listener with a
self-signed certificate (SAN ``IP:127.0.0.1``), certificate checks off, loopback
removed from the IP blacklist, no key servers, short federation backoff, high
rate limits, users created through the shared-secret admin API.

The virtualenv comes from ``FEDLIB_SYNAPSE_VENV``, else the development machines'
``/work/synapse-venv``, else ``~/.cache/fedlib/synapse-venv``, which is created
(``pip install matrix-synapse==SYNAPSE_VERSION``) when missing. Tests are skipped
only when Synapse cannot be installed.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import treq
import yaml
from twisted.internet import defer, task
from twisted.trial.unittest import SkipTest
from twisted.web.client import HTTPConnectionPool

from fedlib.crypto.keys import generate_signing_key, save_signing_keys
from fedlib.tls import ensure_self_signed

SYNAPSE_VERSION = "1.163.2"
#: Bounded waits (seconds).
INSTALL_TIMEOUT = 900
START_TIMEOUT = 90
STOP_TIMEOUT = 20

_DEFAULT_BLACKLIST = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
]
_LOOPBACK = ["127.0.0.0/8", "::1/128"]

_venv_cache: Path | None = None
_venv_error: str | None = None


def _works(venv: Path) -> bool:
    python = venv / "bin" / "python"
    if not python.exists():
        return False
    try:
        out = subprocess.run(
            [str(python), "-c", "import synapse; print(synapse.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def synapse_venv() -> Path:
    """The path of a virtualenv with Synapse, creating one if needed; raises
    :class:`SkipTest` when Synapse cannot be installed."""
    global _venv_cache, _venv_error
    if _venv_cache is not None:
        return _venv_cache
    if _venv_error is not None:
        raise SkipTest(_venv_error)
    override = os.environ.get("FEDLIB_SYNAPSE_VENV")
    candidates = (
        [Path(override)]
        if override
        else [Path("/work/synapse-venv"), Path.home() / ".cache" / "fedlib" / "synapse-venv"]
    )
    for venv in candidates:
        if _works(venv):
            _venv_cache = venv
            return venv
    target = candidates[-1]
    try:
        _create_venv(target)
    except Exception as e:
        _venv_error = f"Synapse {SYNAPSE_VERSION} cannot be installed into {target}: {e}"
        raise SkipTest(_venv_error) from None
    _venv_cache = target
    return target


def _create_venv(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / (target.name + ".lock")
    with open(lock_path, "w") as lock:
        # Parallel trial workers: one installs, the others wait for it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _works(target):
                return
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(target)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            out = subprocess.run(
                [
                    str(target / "bin" / "pip"),
                    "install",
                    "-q",
                    f"matrix-synapse=={SYNAPSE_VERSION}",
                ],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
            )
            if out.returncode != 0:
                raise RuntimeError(out.stderr.strip().splitlines()[-1:] or out.returncode)
            if not _works(target):
                raise RuntimeError("installed, but 'import synapse' fails")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rate(n: int = 1000) -> dict[str, Any]:
    return {"per_second": n, "burst_count": n}


class SynapseServer:
    """One Synapse process with its own directory, ports and database.

    :meth:`start_blocking` / :meth:`stop_blocking` are for ``setUpClass`` (no
    reactor running); :meth:`start` / :meth:`stop` for use inside a test.
    """

    def __init__(self, directory: str | os.PathLike[str], venv: Path | None = None) -> None:
        self.venv = venv or synapse_venv()
        self.dir = Path(directory).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fed_port = free_port()
        self.client_port = free_port()
        self.server_name = f"127.0.0.1:{self.fed_port}"
        self.secret = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "homeserver.log"

    def _write_config(self) -> None:
        d = self.dir
        ensure_self_signed(d / "tls.crt", d / "tls.key", "127.0.0.1")
        if not (d / "signing.key").exists():
            save_signing_keys(d / "signing.key", [generate_signing_key("syn")])
        (d / "media").mkdir(exist_ok=True)
        log_config = {
            "version": 1,
            "formatters": {"p": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "p",
                    "filename": str(self.log_path),
                }
            },
            "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        (d / "log.yaml").write_text(yaml.safe_dump(log_config))
        config = {
            "server_name": self.server_name,
            "pid_file": str(d / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.fed_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [{"names": ["federation"], "compress": False}],
                },
                {
                    "port": self.client_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                },
            ],
            "tls_certificate_path": str(d / "tls.crt"),
            "tls_private_key_path": str(d / "tls.key"),
            "federation_verify_certificates": False,
            "database": {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
            "log_config": str(d / "log.yaml"),
            "media_store_path": str(d / "media"),
            "signing_key_path": str(d / "signing.key"),
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "report_stats": False,
            "enable_registration": False,
            "registration_shared_secret": self.secret,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "ip_range_blacklist": _DEFAULT_BLACKLIST,
            "federation_ip_range_blacklist": _DEFAULT_BLACKLIST,
            "ip_range_whitelist": _LOOPBACK,
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            "federation": {
                "client_timeout": "30s",
                "max_short_retry_delay": "1s",
                "max_long_retry_delay": "2s",
                "destination_min_retry_interval": "1s",
                "destination_max_retry_interval": "10s",
            },
            "rc_message": _rate(),
            "rc_joins": {"local": _rate(), "remote": _rate()},
            "rc_joins_per_room": _rate(),
            "rc_invites": {"per_room": _rate(), "per_user": _rate(), "per_issuer": _rate()},
            "rc_room_creation": _rate(),
            "rc_login": {
                "address": _rate(),
                "account": _rate(),
                "failed_attempts": _rate(),
            },
            "rc_registration": _rate(),
            "rc_federation": {
                "window_size": 1000,
                "sleep_limit": 1000,
                "sleep_delay": 1,
                "reject_limit": 1000,
                "concurrent": 100,
            },
        }
        (d / "homeserver.yaml").write_text(yaml.safe_dump(config))

    # -- process -----------------------------------------------------------------

    def _spawn(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        out = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 (owned by the process)
        self.proc = subprocess.Popen(
            preexec_fn=_die_with_parent,
            args=[
                str(self.venv / "bin" / "python"),
                "-m",
                "synapse.app.homeserver",
                "-c",
                str(self.dir / "homeserver.yaml"),
            ],
            cwd=str(self.dir),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        self.started_at = time.monotonic()

    def _dead(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (self.dir / "stdout.log").read_text(errors="replace")[-2000:]
            return f"Synapse exited with {self.proc.returncode}:\n{tail}"
        return None

    def start_blocking(self) -> None:
        """Start and wait (bounded) until the client API answers."""
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(self.client_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.startup_seconds = time.monotonic() - self.started_at
                        return
            except (OSError, urllib.error.URLError):
                pass
            dead = self._dead()
            if dead or time.monotonic() > deadline:
                self.stop_blocking()
                raise RuntimeError(dead or f"Synapse not ready after {START_TIMEOUT}s")
            time.sleep(0.1)

    def stop_blocking(self) -> None:
        """SIGTERM, then SIGKILL after a bounded wait. Always leaves no process."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @defer.inlineCallbacks
    def start(self, reactor: Any = None) -> Any:
        """Start (or restart) without blocking the reactor."""
        reactor = _reactor(reactor)
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        pool = HTTPConnectionPool(reactor, persistent=False)
        while True:
            try:
                resp = yield treq.get(self.client_url + "/health", pool=pool, timeout=2)
                yield resp.content()
                if resp.code == 200:
                    return
            except Exception:
                pass
            dead = self._dead()
            if dead or time.monotonic() > deadline:
                raise RuntimeError(dead or f"Synapse not ready after {START_TIMEOUT}s")
            yield task.deferLater(reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def stop(self, reactor: Any = None) -> Any:
        reactor = _reactor(reactor)
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            yield task.deferLater(reactor, 0.05, lambda: None)
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # -- users ----------------------------------------------------------------------

    def register_blocking(self, localpart: str, admin: bool = False) -> SynapseUser:
        """Create a user with the shared-secret admin API."""
        url = self.client_url + "/_synapse/admin/v1/register"
        with urllib.request.urlopen(url, timeout=10) as r:
            nonce = json.loads(r.read())["nonce"]
        password = secrets.token_hex(8)
        mac = hmac.new(self.secret.encode(), digestmod=hashlib.sha1)
        for part in (nonce, localpart, password, "admin" if admin else "notadmin"):
            if part != nonce:
                mac.update(b"\x00")
            mac.update(part.encode())
        body = json.dumps(
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
        ).encode()
        req = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        return SynapseUser(self, answer["user_id"], answer["access_token"])


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor


class SynapseError(Exception):
    def __init__(self, code: int, body: Any) -> None:
        super().__init__(f"{code}: {body}")
        self.code = code
        self.body = body


class SynapseUser:
    """A Synapse user driven through the client-server API (non-blocking, treq)."""

    def __init__(self, server: SynapseServer, user_id: str, token: str) -> None:
        self.server = server
        self.user_id = user_id
        self.token = token
        self.since: str | None = None
        self.pool: HTTPConnectionPool | None = None

    def _pool(self) -> HTTPConnectionPool:
        if self.pool is None:
            from twisted.internet import reactor

            # Not persistent: nothing lingers in the reactor between tests.
            self.pool = HTTPConnectionPool(reactor, persistent=False)
        return self.pool

    @defer.inlineCallbacks
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        timeout: float = 30,
    ) -> Any:
        url = self.server.client_url + "/_matrix/client/v3" + path
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        resp = yield treq.request(
            method,
            url,
            json=body if body is not None else ({} if method in ("POST", "PUT") else None),
            headers={"Authorization": f"Bearer {self.token}"},
            pool=self._pool(),
            timeout=timeout,
        )
        data = yield resp.content()
        parsed = json.loads(data) if data else {}
        if resp.code != 200:
            raise SynapseError(resp.code, parsed)
        return parsed

    @staticmethod
    def q(value: str) -> str:
        return urllib.parse.quote(value, safe="")

    def create_room(self, **body: Any) -> Any:
        return self.request("POST", "/createRoom", body)

    def join(self, room: str, servers: list[str] | None = None) -> Any:
        return self.request(
            "POST", f"/join/{self.q(room)}", {}, {"server_name": servers or []}, timeout=60
        )

    def knock(self, room: str, servers: list[str], reason: str | None = None) -> Any:
        body = {"reason": reason} if reason else {}
        return self.request(
            "POST", f"/knock/{self.q(room)}", body, {"server_name": servers}, timeout=60
        )

    def leave(self, room_id: str) -> Any:
        return self.request("POST", f"/rooms/{self.q(room_id)}/leave", {}, timeout=60)

    def invite(self, room_id: str, user_id: str) -> Any:
        return self.request("POST", f"/rooms/{self.q(room_id)}/invite", {"user_id": user_id})

    def send_message(self, room_id: str, body: str) -> Any:
        txn = secrets.token_hex(8)
        return self.request(
            "PUT",
            f"/rooms/{self.q(room_id)}/send/m.room.message/{txn}",
            {"msgtype": "m.text", "body": body},
        )

    def state(self, room_id: str) -> Any:
        return self.request("GET", f"/rooms/{self.q(room_id)}/state")

    def messages(self, room_id: str, limit: int = 50) -> Any:
        return self.request(
            "GET", f"/rooms/{self.q(room_id)}/messages", query={"dir": "b", "limit": limit}
        )

    @defer.inlineCallbacks
    def sync_until(self, predicate: Callable[[dict[str, Any]], Any], timeout: float = 30.0) -> Any:
        """Run /sync until ``predicate(sync_response)`` is true; its value."""
        deadline = time.monotonic() + timeout
        while True:
            query: dict[str, Any] = {"timeout": 1000}
            if self.since is not None:
                query["since"] = self.since
            answer = yield self.request("GET", "/sync", query=query, timeout=10)
            self.since = answer.get("next_batch", self.since)
            value = predicate(answer)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.user_id}: /sync condition not met in {timeout}s")

    def close(self) -> Any:
        if self.pool is not None:
            return self.pool.closeCachedConnections()
        return defer.succeed(None)


def timeline_bodies(room_id: str) -> Callable[[dict[str, Any]], list[str]]:
    """A :meth:`SynapseUser.sync_until` helper accumulating message bodies."""
    seen: list[str] = []

    def pred(sync: dict[str, Any]) -> list[str]:
        room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
        for ev in room.get("timeline", {}).get("events", []):
            body = ev.get("content", {}).get("body")
            if ev.get("type") == "m.room.message" and isinstance(body, str):
                seen.append(body)
        return seen

    return pred


@contextlib.contextmanager
def timed(record: dict[str, float], name: str) -> Any:
    start = time.monotonic()
    try:
        yield
    finally:
        record[name] = time.monotonic() - start


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, however it dies, so
    no Synapse outlives the test run."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:
        pass


_shared: SynapseServer | None = None


def _stop_and_clean(server: SynapseServer, keep_logs_in: Path) -> None:
    """Stop Synapse, keep its log next to trial's (for failures), and remove its
    directory."""
    server.stop_blocking()
    with contextlib.suppress(OSError):
        shutil.copy(server.log_path, keep_logs_in / f"synapse-{os.getpid()}.log")
    shutil.rmtree(server.dir, ignore_errors=True)


def shared_synapse() -> SynapseServer:
    """One Synapse per test process, started on first use (blocking: call it
    before anything in the reactor federates) and stopped at exit. Trial has no
    per-class set-up, and starting Synapse per test would cost seconds each."""
    global _shared
    if _shared is None:
        server = SynapseServer(Path(tempfile.mkdtemp(prefix="fedlib-synapse-")))
        server.start_blocking()
        atexit.register(_stop_and_clean, server, Path.cwd())
        _shared = server
    return _shared
