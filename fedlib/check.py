"""A federation tester: ``python -m fedlib.check SERVER_NAME``.

Resolves the server as the spec says (showing every step), connects with TLS and
checks the certificate, fetches and verifies its keys (directly and, with
``--notary``, through a notary), calls ``/_matrix/federation/v1/version``, and
prints a pass/fail report. Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from fedlib.client.agent import HttpsWellKnownFetcher, TLSOptions
from fedlib.client.discovery import ServerResolution, ServerResolver
from fedlib.client.transport import FederationClient, NoBackoff
from fedlib.crypto.keys import generate_signing_key
from fedlib.errors import MatrixError
from fedlib.keyring import Keyring, Notary, parse_key_response

#: Seconds any single step may take.
STEP_TIMEOUT = 20.0


@attrs.frozen(slots=True)
class CheckResult:
    """One step of the report."""

    name: str
    ok: bool
    summary: str
    details: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "summary": self.summary,
            "details": list(self.details),
        }


@attrs.frozen(slots=True)
class CheckReport:
    server_name: str
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "server_name": self.server_name,
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_text(self) -> str:
        lines = [f"Federation check for {self.server_name}"]
        for c in self.checks:
            lines.append(f"[{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.summary}")
            lines.extend(f"       {d}" for d in c.details)
        lines.append(f"RESULT: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


@implementer(IHandshakeListener)
class _HandshakeProbe(protocol.Protocol):
    def __init__(self, done: defer.Deferred[Any]) -> None:
        self._done: defer.Deferred[Any] | None = done

    def handshakeCompleted(self) -> None:
        if self._done is not None:
            done, self._done = self._done, None
            cert = self.transport.getPeerCertificate()  # type: ignore[attr-defined,union-attr]
            done.callback(cert)
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if self._done is not None:
            done, self._done = self._done, None
            done.errback(reason)


def _describe_cert(cert: Any) -> list[str]:
    """Subject, SANs and expiry of a pyOpenSSL X509 (best effort)."""
    if cert is None:
        return ["no certificate presented"]
    out: list[str] = []
    try:
        crypto_cert = cert.to_cryptography()
        out.append(f"subject: {crypto_cert.subject.rfc4514_string()}")
        out.append(f"issuer: {crypto_cert.issuer.rfc4514_string()}")
        from cryptography import x509

        try:
            sans = crypto_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = [str(v.value) for v in sans.value]
            out.append("names: " + ", ".join(names))
        except x509.ExtensionNotFound:
            out.append("names: (no subjectAltName)")
        out.append(f"expires: {crypto_cert.not_valid_after_utc.isoformat()}")
    except Exception as e:  # a strange certificate must not crash the report
        out.append(f"could not read certificate: {e!r}")
    return out


async def _tls_probe(
    reactor: Any,
    resolution: ServerResolution,
    tls: TLSOptions,
    host_overrides: Mapping[str, str],
    timeout: float,
) -> tuple[bool, str, list[str]]:
    target = resolution.targets[0]
    host = host_overrides.get(target.host, target.host)

    async def attempt(options: TLSOptions) -> Any:
        done: defer.Deferred[Any] = defer.Deferred()
        endpoint = wrapClientTLS(
            options.creator_for(resolution.tls_server_name),
            HostnameEndpoint(reactor, host, target.port, timeout=timeout),
        )
        connecting = endpoint.connect(protocol.Factory.forProtocol(lambda: _HandshakeProbe(done)))
        connecting.addErrback(done.errback)
        done.addTimeout(timeout, reactor)
        return await done

    where = f"{target.host}:{target.port}"
    try:
        cert = await attempt(tls)
    except Exception as e:
        details = [f"error: {_reason(e)}"]
        if tls.verify_tls:
            with contextlib.suppress(Exception):
                details += _describe_cert(await attempt(TLSOptions(verify_tls=False)))
        return False, f"TLS to {where} failed for name {resolution.tls_server_name}", details
    verb = "valid for" if tls.verify_tls else "NOT VERIFIED (--no-verify-tls) for"
    return True, f"{where}: certificate {verb} {resolution.tls_server_name}", _describe_cert(cert)


def _reason(e: BaseException) -> str:
    text = repr(e)
    reasons = getattr(e, "reasons", None)
    if reasons:
        text = "; ".join(repr(getattr(r, "value", r)) for r in reasons)
    return text[:300]


def _ms_to_iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat()


async def run_checks(
    reactor: Any,
    server_name: str,
    *,
    notary: str | None = None,
    verify_tls: bool = True,
    ca_bundle: str | None = None,
    host_overrides: Mapping[str, str] | None = None,
    resolver: ServerResolver | None = None,
    timeout: float = STEP_TIMEOUT,
) -> CheckReport:
    """Run every check against ``server_name`` and return the report (never raises
    for anything the remote does)."""
    overrides = dict(host_overrides or {})
    tls = TLSOptions(verify_tls=verify_tls, ca_bundle=ca_bundle)
    if resolver is None:
        resolver = ServerResolver(
            None, HttpsWellKnownFetcher(reactor, tls=tls, host_overrides=overrides), reactor
        )
    client = FederationClient(
        "fedlib-check.invalid",
        generate_signing_key("check"),
        reactor,
        resolver=resolver,
        verify_tls=verify_tls,
        ca_bundle=ca_bundle,
        host_overrides=overrides,
        default_timeout=timeout,
        get_retries=0,
        backoff=NoBackoff(),  # every step must really try, whatever the last one met
    )
    checks: list[CheckResult] = []
    try:
        await _run(reactor, client, resolver, tls, overrides, server_name, notary, timeout, checks)
    finally:
        await client.close_connections()
    return CheckReport(server_name, tuple(checks))


async def _run(
    reactor: Any,
    client: FederationClient,
    resolver: ServerResolver,
    tls: TLSOptions,
    overrides: Mapping[str, str],
    server_name: str,
    notary: str | None,
    timeout: float,
    checks: list[CheckResult],
) -> None:
    # 1. Resolution.
    try:
        d = resolver.resolve(server_name)
        d.addTimeout(timeout, reactor)
        resolution = await d
    except Exception as e:
        checks.append(CheckResult("resolve", False, f"cannot resolve: {_reason(e)}"))
        return
    targets = ", ".join(f"{t.host}:{t.port}" for t in resolution.targets)
    checks.append(
        CheckResult(
            "resolve",
            True,
            f"{targets} (Host: {resolution.host_header}, TLS name: "
            f"{resolution.tls_server_name}, via {resolution.method.value})",
            resolution.steps,
        )
    )
    # 2. TLS.
    ok, summary, details = await _tls_probe(reactor, resolution, tls, overrides, timeout)
    checks.append(CheckResult("tls", ok, summary, tuple(details)))
    # 3. Keys, directly.
    now_ms = int(reactor.seconds() * 1000)
    direct_key_ids: list[str] = []
    try:
        response = await client.get_server_keys(server_name)
        keys, _valid_until = parse_key_response(server_name, response, now_ms)
        current = sorted(k for k, f in keys.items() if f.expired_ts is None)
        direct_key_ids = current
        old = sorted(k for k, f in keys.items() if f.expired_ts is not None)
        details = [
            f"valid_until_ts: {response['valid_until_ts']} ({_ms_to_iso(response['valid_until_ts'])})"
        ]
        if old:
            details.append("old keys: " + ", ".join(old))
        if response["valid_until_ts"] < now_ms:
            checks.append(
                CheckResult(
                    "keys", False, "keys have expired (valid_until_ts in the past)", tuple(details)
                )
            )
        else:
            checks.append(
                CheckResult("keys", True, f"self-signed by {', '.join(current)}", tuple(details))
            )
    except MatrixError as e:
        checks.append(CheckResult("keys", False, e.msg[:300]))
    # 4. Keys through a notary.
    if notary is not None:
        keyring = Keyring(client, reactor, notaries=[Notary(notary)], fetch_directly=False)
        try:
            vouched = sorted(await keyring.refresh_keys(server_name, direct_key_ids))
            if vouched:
                checks.append(
                    CheckResult(
                        "notary",
                        True,
                        f"{notary} vouches for {', '.join(vouched)}",
                        ("notary and origin signatures verified",),
                    )
                )
            else:
                checks.append(CheckResult("notary", False, f"{notary} returned no keys"))
        except MatrixError as e:
            checks.append(CheckResult("notary", False, e.msg[:300]))
    # 5. Version.
    try:
        server = await client.version(server_name)
        name, version = server.get("name"), server.get("version")
        checks.append(CheckResult("version", True, f"{name} {version}"))
    except MatrixError as e:
        checks.append(CheckResult("version", False, e.msg[:300]))


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fedlib.check", description="Check a Matrix server's federation set-up."
    )
    parser.add_argument("server_name")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--notary", help="also fetch the keys through this notary server")
    parser.add_argument(
        "--no-verify-tls",
        action="store_true",
        help="do not verify certificates (tests on loopback only)",
    )
    parser.add_argument("--ca-bundle", help="PEM file of CAs to trust instead of the system's")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME=IP",
        help="connect to IP for host NAME (like /etc/hosts); repeatable",
    )
    parser.add_argument("--timeout", type=float, default=STEP_TIMEOUT, help="seconds per step")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    overrides = {}
    for item in args.host:
        name, sep, ip = item.partition("=")
        if not sep:
            print(f"--host expects NAME=IP, got {item!r}", file=sys.stderr)
            return 2
        overrides[name] = ip
    if args.no_verify_tls:
        # The loud warning goes to the log; say it on stderr too, once.
        print("WARNING: TLS certificates are NOT verified (--no-verify-tls)", file=sys.stderr)

    from twisted.internet import reactor

    result: list[CheckReport] = []

    async def go() -> None:
        result.append(
            await run_checks(
                reactor,
                args.server_name,
                notary=args.notary,
                verify_tls=not args.no_verify_tls,
                ca_bundle=args.ca_bundle,
                host_overrides=overrides,
                timeout=args.timeout,
            )
        )

    def stop(_: object) -> None:
        reactor.stop()  # type: ignore[attr-defined,union-attr]

    def failed(f: Any) -> None:
        print(f"check crashed: {f.value!r}", file=sys.stderr)

    d = defer.ensureDeferred(go())
    d.addErrback(failed)
    d.addBoth(stop)
    reactor.run()  # type: ignore[attr-defined,union-attr]
    if not result:
        return 1
    report = result[0]
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(report.to_text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
