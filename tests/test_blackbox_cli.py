"""Black-box checks of ``twistd fedlib`` as a new user meets it: ``--help``, bad
options and config files (one clear line, no traceback), start-up the README's
way on a loopback port, a restart keeping the key, and SIGTERM."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial import unittest

from tests.blackbox_helpers import TWISTD, FedlibProcess, free_port, raw_request

RUN_TIMEOUT = 30


def run(args: list[str], cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", *args],
        cwd=cwd or tempfile.mkdtemp(prefix="fedlib-blackbox-cli-"),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


class Usage(unittest.TestCase):
    timeout = 120

    def assertCleanFailure(self, proc: subprocess.CompletedProcess[str], *needles: str) -> None:
        out = proc.stdout + proc.stderr
        self.assertNotEqual(proc.returncode, 0, out)
        self.assertNotIn("Traceback", out)
        last = out.strip().splitlines()[-1] if out.strip() else ""
        for needle in needles:
            self.assertIn(needle, out, out)
        self.assertTrue(last, out)

    def test_help(self) -> None:
        proc = run(["fedlib", "--help"])
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for option in ("--server-name", "--data-dir", "--self-signed", "--listen", "--database"):
            self.assertIn(option, proc.stdout)
        self.assertNotIn("Traceback", proc.stdout + proc.stderr)

    def test_listed_as_plugin(self) -> None:
        proc = run(["--help"])
        self.assertIn("fedlib", proc.stdout)

    def test_bad_option(self) -> None:
        self.assertCleanFailure(run(["fedlib", "--bogus"]), "--bogus")

    def test_missing_server_name(self) -> None:
        self.assertCleanFailure(run(["fedlib", "--self-signed"]), "--server-name")

    def test_bad_server_name(self) -> None:
        self.assertCleanFailure(run(["fedlib", "--server-name", "bad name!", "--self-signed"]))

    def test_bad_database(self) -> None:
        d = tempfile.mkdtemp(prefix="fedlib-blackbox-cli-")
        args = ["fedlib", "--server-name", "127.0.0.1:1", "--self-signed", "--data-dir", d]
        self.assertCleanFailure(run([*args, "--database", "mysql://x"]), "--database")

    def test_bad_config_files(self) -> None:
        d = Path(tempfile.mkdtemp(prefix="fedlib-blackbox-cli-"))
        cases = {
            "invalid.yaml": "limits: [1, 2\n",
            "unknown.yaml": "bogus_option: 1\n",
            "list.yaml": "- a\n- b\n",
            "type.yaml": "limits:\n  max_request_body: lots\n",
        }
        for name, text in cases.items():
            (d / name).write_text(text)
            proc = run(
                [
                    "fedlib",
                    "--server-name",
                    "127.0.0.1:1",
                    "--self-signed",
                    "--data-dir",
                    str(d / "data"),
                    "--config",
                    str(d / name),
                ],
                cwd=str(d),
            )
            self.assertCleanFailure(proc)
        self.assertCleanFailure(
            run(["fedlib", "--server-name", "127.0.0.1:1", "--config", str(d / "missing.yaml")]),
            "missing.yaml",
        )

    def test_bad_listen_description(self) -> None:
        d = tempfile.mkdtemp(prefix="fedlib-blackbox-cli-")
        args = ["fedlib", "--server-name", "127.0.0.1:1", "--self-signed", "--data-dir", d]
        proc = run([*args, "--listen", "ssl:notaport"])
        self.assertCleanFailure(proc, "ssl:notaport", "not a port")
        self.assertNotIn("server.pem", proc.stdout + proc.stderr)

    def test_no_certificate_without_self_signed(self) -> None:
        d = tempfile.mkdtemp(prefix="fedlib-blackbox-cli-")
        port = free_port()
        proc = run(
            [
                "fedlib",
                "--server-name",
                f"127.0.0.1:{port}",
                "--data-dir",
                d,
                "--listen",
                f"ssl:{port}:interface=127.0.0.1:privateKey={d}/tls.key:certKey={d}/tls.crt",
            ]
        )
        self.assertCleanFailure(proc, "--self-signed")


class Lifecycle(unittest.TestCase):
    timeout = 120

    def test_start_restart_sigterm(self) -> None:
        fed = FedlibProcess()
        self.addCleanup(fed.stop)
        fed.start()
        data = fed.data
        for name in ("signing.key", "tls.crt", "tls.key"):
            self.assertTrue((data / name).exists(), name)
        key1 = raw_request(fed.port, "GET", "/_matrix/key/v2/server").json()["verify_keys"]
        status = fed.stop()
        # twistd re-raises the signal after a clean shutdown.
        self.assertIn(status, (0, -15))
        self.assertIn("Server Shut Down", fed.log())
        self.assertNotIn("Traceback", fed.log())
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", fed.port)), 0)
        # Same data directory: same key.
        fed.start()
        key2 = raw_request(fed.port, "GET", "/_matrix/key/v2/server").json()["verify_keys"]
        self.assertEqual(key1, key2)

    def test_second_process_on_same_data_dir_refused(self) -> None:
        fed = FedlibProcess()
        self.addCleanup(fed.stop)
        fed.start()
        proc = run(
            [
                "fedlib",
                "--server-name",
                fed.server_name,
                "--data-dir",
                str(fed.data),
                "--self-signed",
                "--listen",
                f"tcp:{free_port()}:interface=127.0.0.1",
            ]
        )
        out = proc.stdout + proc.stderr
        self.assertNotEqual(proc.returncode, 0, out)
        self.assertNotIn("Traceback", out)
        last = out.strip().splitlines()[-1]
        self.assertIn("fedlib.lock", last)
        self.assertIn("in use by another fedlib process", last)
        # The first one is unharmed, and once it stops the directory is free again.
        self.assertEqual(raw_request(fed.port, "GET", "/_matrix/federation/v1/version").code, 200)
        fed.stop()
        fed.start()

    def test_sigterm_with_open_connection(self) -> None:
        fed = FedlibProcess()
        self.addCleanup(fed.stop)
        fed.start()
        # A client holding a connection open must not keep fedlib from stopping.
        s = socket.create_connection(("127.0.0.1", fed.port), timeout=5)
        self.addCleanup(s.close)
        start = time.monotonic()
        fed.stop()
        self.assertLess(time.monotonic() - start, 12)

    def test_default_listener_warns_when_server_name_port_differs(self) -> None:
        # The README's first command, on another port than 8448: without --listen
        # the default listener is ssl:8448 (the documented default), while other
        # servers are told (by the server name) to connect to PORT. fedlib keeps the
        # default but says so loudly at start, naming both ports.
        d = Path(tempfile.mkdtemp(prefix="fedlib-blackbox-cli-"))
        port = free_port()
        log = open(d / "log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "fedlib", "--server-name", f"127.0.0.1:{port}"]
            + ["--self-signed", "--data-dir", str(d / "data")],
            cwd=d,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def stop() -> None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(15)

        self.addCleanup(stop)

        def warnings() -> list[str]:
            text = (d / "log").read_text(errors="replace")
            return [
                line
                for line in text.splitlines()
                if "#warn]" in line and "8448" in line and str(port) in line
            ]

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None and not warnings():
            time.sleep(0.2)
        self.assertTrue(warnings(), (d / "log").read_text(errors="replace")[-2000:])
        # With a listener on the server name's port, no such warning.
        fed = FedlibProcess()
        self.addCleanup(fed.stop)
        fed.start()
        fed.stop()
        self.assertNotIn("names port", fed.log())


class Logging(unittest.TestCase):
    timeout = 120

    def test_log_level_from_config_applies_to_fedlib_messages(self) -> None:
        fed = FedlibProcess(config="log_level: error\n")
        self.addCleanup(fed.stop)
        fed.start()
        raw_request(fed.port, "GET", "/_matrix/federation/v1/version")
        fed.stop()
        chatty = [
            line
            for line in fed.log().splitlines()
            if ("[fedlib." in line or "[twisted.plugins.fedlib" in line)
            and ("#info]" in line or "#debug]" in line)
        ]
        self.assertEqual(chatty, [])
