"""``twistd fedlib`` run for real in a subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from fedlib.crypto.keys import decode_verify_key_base64, load_signing_keys
from fedlib.crypto.signing import verify_json

TWISTD = [sys.executable, "-m", "twisted.application.twist"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _twistd(*args: str, cwd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _get(url: str) -> tuple[int, Any]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class PluginTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)

    def test_help_lists_every_option(self) -> None:
        out = _twistd("fedlib", "--help", cwd=str(self.dir))
        self.assertEqual(out.returncode, 0, out.stderr)
        for option in [
            "--server-name",
            "--data-dir",
            "--self-signed",
            "--listen",
            "--database",
            "--no-verify-tls",
            "--config",
        ]:
            self.assertIn(option, out.stdout)

    def test_bad_options_fail_clearly(self) -> None:
        (self.dir / "bad.yaml").write_text("limits: [1\n")
        (self.dir / "unknown.yaml").write_text("colour: blue\n")
        cases = [
            ([], "--server-name is required"),
            (["--server-name", "bad name"], "invalid host"),
            (["--server-name", "a.b", "--listen", "bogus:1"], "Unknown endpoint type"),
            (["--server-name", "a.b", "--listen", "ssl:notaport"], "'notaport' is not a port"),
            (["--server-name", "a.b", "--listen", "tcp:99999"], "'99999' is not a port"),
            (["--server-name", "a.b", "--listen", "ssl:8448"], "ssl needs privateKey="),
            (["--server-name", "a.b", "--client-listen", "tcp:x"], "Bad --client-listen"),
            (["--server-name", "a.b"], "use --self-signed"),
            (["--server-name", "a.b", "--config", "bad.yaml"], "not valid YAML"),
            (["--server-name", "a.b", "--config", "unknown.yaml"], "unknown option(s) colour"),
            (["--server-name", "a.b", "--config", "missing.yaml"], "Cannot read config file"),
            (["--server-name", "a.b", "--self-signed", "--database", "mysql://x"], "--database"),
        ]
        for args, message in cases:
            out = _twistd("-n", "--pidfile=", "fedlib", *args, cwd=str(self.dir))
            self.assertEqual(out.returncode, 1, args)
            self.assertIn(message, out.stderr + out.stdout, args)
            self.assertNotIn("Traceback", out.stderr + out.stdout, args)
            # A bad listener is reported as such, not as a missing server.pem.
            self.assertNotIn("server.pem", out.stderr + out.stdout, args)

    def test_serves_keys_and_version_and_stops_on_sigterm(self) -> None:
        port = _free_port()
        name = f"127.0.0.1:{port}"
        (self.dir / "fedlib.yaml").write_text(
            "server_name: ignored.example\nlimits:\n  request_timeout: 10\n"
        )
        listen = f"ssl:{port}:interface=127.0.0.1:privateKey=d/tls.key:certKey=d/tls.crt"
        log_path = self.dir / "twistd.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from twisted.scripts.twistd import run; run()",
                    "-n",
                    "--pidfile=",
                    "fedlib",
                    "--server-name",
                    name,
                    "--data-dir",
                    "d",
                    "--self-signed",
                    "--no-verify-tls",
                    "--config",
                    "fedlib.yaml",
                    "--listen",
                    listen,
                ],
                cwd=str(self.dir),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    code, body = _get(f"https://127.0.0.1:{port}/_matrix/key/v2/server")
                    break
                except (OSError, ssl.SSLError):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        self.fail("twistd did not come up:\n" + log_path.read_text())
                    time.sleep(0.2)
            self.assertEqual(code, 200)
            # Command line wins over the config file.
            self.assertEqual(body["server_name"], name)
            key = load_signing_keys(self.dir / "d" / "signing.key")[0]
            kid = f"ed25519:{key.version}"
            verify = decode_verify_key_base64(
                "ed25519", key.version, body["verify_keys"][kid]["key"]
            )
            verify_json(body, name, verify)
            code, body = _get(f"https://127.0.0.1:{port}/_matrix/federation/v1/version")
            self.assertEqual((code, body["server"]["name"]), (200, "fedlib"))
            code, body = _get(f"https://127.0.0.1:{port}/_matrix/federation/v1/nope")
            self.assertEqual((code, body["errcode"]), (404, "M_UNRECOGNIZED"))
            for f in ["signing.key", "tls.crt", "tls.key", "fedlib.db"]:
                self.assertTrue((self.dir / "d" / f).exists(), f)
            self.assertEqual(os.stat(self.dir / "d" / "signing.key").st_mode & 0o077, 0)
            proc.send_signal(signal.SIGTERM)
            # twistd re-raises the signal once shut down, so that its exit status
            # says how it ended.
            self.assertIn(proc.wait(timeout=20), (0, -signal.SIGTERM))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log = log_path.read_text()
        self.assertIn("NOT verified", log)
        # One access-log line per request.
        self.assertEqual(log.count('"GET /_matrix/'), 3, log)
        self.assertIn("Main loop terminated", log)
        self.assertIn("Server Shut Down", log)
        self.assertNotIn("Traceback", log)

    def test_existing_synapse_key_file_is_used(self) -> None:
        data = self.dir / "d"
        data.mkdir()
        seed = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
        (data / "signing.key").write_text(f"ed25519 a_syn {seed}\n")
        (self.dir / "garbage").mkdir()
        (self.dir / "garbage" / "signing.key").write_text("nonsense\n")
        out = _twistd(
            "-n",
            "--pidfile=",
            "fedlib",
            "--server-name",
            "a.b",
            "--data-dir",
            "garbage",
            "--self-signed",
            cwd=str(self.dir),
        )
        self.assertEqual(out.returncode, 1)
        self.assertIn("signing.key", out.stderr + out.stdout)
        self.assertNotIn("Traceback", out.stderr + out.stdout)
        key = load_signing_keys(data / "signing.key")[0]
        self.assertEqual(key.version, "a_syn")
