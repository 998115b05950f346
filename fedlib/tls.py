"""Self-signed TLS certificates for test and standalone servers.

Matrix federation is TLS only; a server without a real certificate (loopback
tests, a first run of ``twistd fedlib --self-signed``) needs one that peers with
verification turned off accept. The certificate names the server's host as a
DNS name or, for an IP literal, as an IP address SAN, which is what peers
(Synapse included) check when they do verify.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["ensure_self_signed", "host_of", "make_self_signed"]


def host_of(server_name: str) -> str:
    """The host part of a server name: ``[::1]:8448`` gives ``::1``,
    ``127.0.0.1:8448`` gives ``127.0.0.1``."""
    if server_name.startswith("["):
        return server_name[1 : server_name.index("]")]
    return server_name.rpartition(":")[0] if ":" in server_name else server_name


def make_self_signed(host: str, days: int = 3650) -> tuple[bytes, bytes]:
    """``(certificate_pem, private_key_pem)`` of a new self-signed certificate
    for ``host`` (a DNS name or an IP address)."""
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Back-dated so that a peer with a slightly slow clock accepts it at once.
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def ensure_self_signed(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], host: str
) -> bool:
    """Create ``cert_path`` and ``key_path`` for ``host`` unless both exist.
    Returns whether new files were written. The key file is private to the owner."""
    cert_file, key_file = Path(cert_path), Path(key_path)
    if cert_file.exists() and key_file.exists():
        return False
    cert_pem, key_pem = make_self_signed(host)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    cert_file.write_bytes(cert_pem)
    return True
