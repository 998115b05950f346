"""Black-box harness: a real ``twistd -n fedlib`` process and a remote server.

Everything is synchronous (blocking sockets with timeouts): fedlib runs in its own
process, so a test blocking the trial reactor does not stop it. Only 127.0.0.1 is
contacted, and server names are IP literals.

- :class:`FedlibProcess`: ``twistd -n fedlib`` on free loopback ports (federation
  over TLS with a self-signed certificate, Client-Server API over plain TCP).
- :class:`RemoteServer`: a remote homeserver with its own ed25519 key, serving
  ``/_matrix/key/v2/server`` over TLS from a thread, which signs X-Matrix requests
  and events, and answers (and records) what fedlib sends it.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fedlib.crypto.keys import encode_verify_key_base64, generate_signing_key, get_verify_key
from fedlib.crypto.request_auth import sign_request
from fedlib.crypto.signing import sign_event, sign_json
from fedlib.tls import ensure_self_signed

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
HTTP_TIMEOUT = 20.0

TWISTD = str(Path(sys.executable).with_name("twistd"))


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Response:
    def __init__(self, code: int, headers: Mapping[str, str], body: bytes) -> None:
        self.code = code
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def errcode(self) -> Any:
        try:
            data = self.json()
        except ValueError:
            return None
        return data.get("errcode") if isinstance(data, dict) else None

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.body[:300]!r}>"


def raw_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    tls: bool = True,
) -> Response:
    if tls:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=HTTP_TIMEOUT, context=_unverified()
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, dict(resp.getheaders()), data)
    finally:
        conn.close()


class FedlibProcess:
    """``twistd -n fedlib`` on 127.0.0.1, started the README's way plus loopback
    listeners and ``--no-verify-tls`` (peers use self-signed certificates)."""

    def __init__(self, extra_args: list[str] | None = None, config: str | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="fedlib-blackbox-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.client_port = free_port()
        self.server_name = f"127.0.0.1:{self.port}"
        self.extra_args = list(extra_args or [])
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.directory / "twistd.log"

    def args(self) -> list[str]:
        key, cert = self.data / "tls.key", self.data / "tls.crt"
        args = [
            TWISTD,
            "-n",
            "--pidfile=",
            "fedlib",
            "--server-name",
            self.server_name,
            "--data-dir",
            str(self.data),
            "--self-signed",
            "--no-verify-tls",
            "--listen",
            f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            "--client-listen",
            f"tcp:{self.client_port}:interface=127.0.0.1",
            "--enable-registration",
        ]
        if self.config is not None:
            path = self.directory / "config.yaml"
            path.write_text(self.config)
            args += ["--config", str(path)]
        return args + self.extra_args

    def start(self) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            self.args(),
            cwd=self.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"twistd exited early:\n{self.log()}")
            try:
                r = raw_request(self.port, "GET", "/_matrix/federation/v1/version")
                if r.code == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"twistd did not answer within {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        return proc.returncode

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    # -- Client-Server API of the process (to make it host rooms) --

    def client(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> Response:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        return raw_request(
            self.client_port, method, "/_matrix/client/v3" + path, data, headers, tls=False
        )

    def register(self, localpart: str) -> str:
        body = {
            "username": localpart,
            "password": "pw-" + localpart,
            "auth": {"type": "m.login.dummy"},
        }
        deadline = time.monotonic() + HTTP_TIMEOUT
        while True:
            r = self.client("POST", "/register", body)
            if r.code != 429 or time.monotonic() > deadline:
                break
            # Registration is rate-limited per address: wait as told (bounded).
            time.sleep(min(2.0, r.json().get("retry_after_ms", 500) / 1000))
        assert r.code == 200, r
        return str(r.json()["access_token"])


_shared: tuple[FedlibProcess, RemoteServer, RemoteServer] | None = None


def shared() -> tuple[FedlibProcess, RemoteServer, RemoteServer]:
    """One fedlib process and two remote servers per test process, started on
    first use and stopped at exit (trial has no per-class set-up)."""
    global _shared
    if _shared is None:
        fedlib = FedlibProcess()
        fedlib.start()
        remotes = RemoteServer(), RemoteServer()
        atexit.register(_stop_all, fedlib, *remotes)
        _shared = (fedlib, *remotes)
    return _shared


def _stop_all(fedlib: FedlibProcess, *remotes: RemoteServer) -> None:
    fedlib.stop()
    for remote in remotes:
        remote.stop()
    shutil.rmtree(fedlib.directory, ignore_errors=True)


class _KeyHandler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        remote: RemoteServer = self.server.remote
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        remote.received.append((self.command, self.path, body))
        remote.received_headers.append(dict(self.headers.items()))
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/_matrix/key/v2/server"):
            code, out = 200, remote.key_response()
        elif path.startswith("/_matrix/federation/v1/send/"):
            code, out = remote.send_answers.pop(0) if remote.send_answers else (200, {"pdus": {}})
        else:
            code, out = 404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}
        data = json.dumps(out).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = _answer


class RemoteServer:
    """A remote homeserver on 127.0.0.1 with its own signing key."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="fedlib-blackbox-remote-"))
        self.signing_key = generate_signing_key("bb" + os.urandom(3).hex())
        self.key_id = f"ed25519:{self.signing_key.version}"
        self.received: list[tuple[str, str, bytes]] = []
        self.received_headers: list[dict[str, str]] = []
        #: Answers to give to the next ``/send`` requests, in order (then 200).
        self.send_answers: list[tuple[int, Any]] = []
        cert, key = self.directory / "tls.crt", self.directory / "tls.key"
        ensure_self_signed(cert, key, "127.0.0.1")
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _KeyHandler)
        self.httpd.daemon_threads = True
        self.httpd.remote = self  # type: ignore[attr-defined]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.server_name = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(STOP_TIMEOUT)
        shutil.rmtree(self.directory, ignore_errors=True)

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def key_response(self) -> dict[str, Any]:
        obj = {
            "server_name": self.server_name,
            "verify_keys": {
                self.key_id: {"key": encode_verify_key_base64(get_verify_key(self.signing_key))}
            },
            "old_verify_keys": {},
            "valid_until_ts": int(time.time() * 1000) + 3600_000,
        }
        return sign_json(obj, self.server_name, self.signing_key)

    def sign_event(self, room_version: str, event: Mapping[str, Any]) -> dict[str, Any]:
        return sign_event(room_version, event, self.server_name, self.signing_key)

    def request(
        self,
        target: FedlibProcess,
        method: str,
        path: str,
        content: Any = None,
        *,
        raw_body: bytes | None = None,
        destination: str | None = None,
        authorization: str | None = None,
        sign: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """A request to ``target``, signed with X-Matrix unless ``sign`` is false
        or ``authorization`` gives the header value."""
        hdrs = dict(headers or {})
        body = raw_body
        if body is None and content is not None:
            body = json.dumps(content).encode()
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        if authorization is not None:
            hdrs["Authorization"] = authorization
        elif sign:
            hdrs["Authorization"] = sign_request(
                method,
                path,
                self.server_name,
                destination or target.server_name,
                self.signing_key,
                content,
            )
        return raw_request(target.port, method, path, body, hdrs)


def q(value: str) -> str:
    """Percent-encode one path segment."""
    return urllib.parse.quote(value, safe="")
