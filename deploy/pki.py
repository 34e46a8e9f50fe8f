"""A federation's keys: the TLS certificate authority, the SuperLink's server
certificate, and each site's SuperNode key pair.

What Flower 1.41 needs, and what this module makes (all with ``cryptography``):

- **TLS.** ``flower-superlink --ssl-ca-certfile CA --ssl-certfile CERT
  --ssl-keyfile KEY`` serves its one HTTPS port with CERT; SuperNodes and the
  ``flwr`` CLI verify it against CA (``--root-certificates``, the connection's
  ``root-certificates``). CERT must name every address it is reached at in its
  subject alternative names, 127.0.0.1 included: the SuperLink's own SuperExec
  connects to it on loopback. The CA is an ECDSA P-384 key used for nothing else.
- **SuperNode authentication.** With ``--enable-supernode-auth`` the SuperLink
  accepts only nodes whose public key was registered (``flwr supernode
  register``); each request is signed with the node's private key. Flower reads
  that key with ``load_ssh_private_key``: an unencrypted ECDSA key in OpenSSH
  format (P-384, Flower's own default), its public half an OpenSSH line
  (``ecdsa-sha2-nistp384 AAAA...``).

Private keys are written once, with mode 0600, never over an existing file
(:func:`fedshield.common.storage.write_key_file`).

Written here rather than by calling ``openssl``/``ssh-keygen``: neither is on
every site's machine (Windows, minimal containers), and their flags differ across
versions; ``cryptography`` is already a dependency (Flower's and ours).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedshield.common.config import ConfigError
from fedshield.common.storage import atomic_write_bytes, write_key_file

__all__ = [
    "CertificateAuthority",
    "SiteKey",
    "load_ca",
    "make_ca",
    "make_server_certificate",
    "make_site_key",
    "read_public_key",
    "server_names",
]

CURVE = ec.SECP384R1()
LOOPBACK = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SiteKey:
    private_path: Path  # OpenSSH private key, 0600: stays at the site
    public_path: Path  # OpenSSH public line: what the coordinator registers
    public_line: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _refuse_existing(*paths: Path) -> None:
    there = [str(p) for p in paths if p.exists()]
    if there:
        raise ConfigError(
            f"Expected no key or certificate at {', '.join(there)}; found one. "
            "fedshield never replaces a key: move it away first (revoking or "
            "re-issuing what depends on it), or choose another folder."
        )


def _write_public(path: Path, data: bytes) -> None:
    """A certificate or public key: world-readable (the SuperNode may run as
    another user), written atomically."""
    atomic_write_bytes(path, data)
    os.chmod(path, 0o644)


def make_ca(folder: Path, name: str, *, days: int = 3650) -> CertificateAuthority:
    """A new CA in ``folder``: ``ca.pem`` (give it to every site) and ``ca.key``
    (0600; keep it offline once the SuperLink's certificate is issued)."""
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    _refuse_existing(cert_path, key_path)
    key = ec.generate_private_key(CURVE)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA384())
    )
    write_key_file(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return CertificateAuthority(cert, key)


def load_ca(folder: Path) -> CertificateAuthority:
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    missing = [str(p) for p in (cert_path, key_path) if not p.is_file()]
    if missing:
        raise ConfigError(
            f"Expected the federation's CA at {', '.join(missing)}; found nothing. "
            "Run `fedshield federation init` first, or restore the CA from its "
            "backup."
        )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"Expected an EC private key in {key_path}.")
    return CertificateAuthority(cert, key)


def server_names(hosts: list[str]) -> list[x509.GeneralName]:
    """Subject alternative names for ``hosts`` plus loopback: an IP literal as an
    IP address, anything else as a DNS name."""
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in [*hosts, *LOOPBACK]:
        host = host.strip()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if ":" in host or "/" in host or " " in host:
                raise ConfigError(
                    f"Expected a host name or IP address for the SuperLink's "
                    f"certificate; found {host!r} (give hosts without a port or "
                    "scheme, e.g. superlink.example.org or 10.0.0.5)."
                ) from None
            names.append(x509.DNSName(host))
    return names


def make_server_certificate(
    ca: CertificateAuthority, folder: Path, hosts: list[str], *, days: int = 825
) -> Path:
    """The SuperLink's ``server.pem`` and ``server.key`` (0600) in ``folder``,
    signed by ``ca``, valid for ``hosts`` and loopback."""
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    _refuse_existing(cert_path, key_path)
    if not hosts:
        raise ConfigError(
            "Expected at least one host the sites reach the SuperLink at (--host); "
            "found none."
        )
    key = ec.generate_private_key(CURVE)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(server_names(hosts)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA384())
    )
    write_key_file(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def make_site_key(folder: Path) -> SiteKey:
    """A SuperNode key pair in ``folder``: ``supernode_key`` (OpenSSH private,
    0600) and ``supernode_key.pub`` (the line the coordinator registers)."""
    private_path = folder / "supernode_key"
    public_path = folder / "supernode_key.pub"
    _refuse_existing(private_path, public_path)
    key = ec.generate_private_key(CURVE)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_key_file(private_path, private)
    _write_public(public_path, public + b"\n")
    return SiteKey(private_path, public_path, public.decode())


def read_public_key(path: Path) -> str:
    """The OpenSSH public-key line in ``path``, checked to be what ``flwr
    supernode register`` accepts (EC on a NIST curve)."""
    if not path.is_file():
        raise ConfigError(
            f"Expected a site's public key file at {path}; found nothing. The site "
            "makes it with `fedshield site keygen` and sends you supernode_key.pub."
        )
    text = path.read_text().strip()
    try:
        key = serialization.load_ssh_public_key(text.encode())
    except (ValueError, TypeError, UnicodeError, UnsupportedAlgorithm) as err:
        raise ConfigError(
            f"Expected an OpenSSH public key line (ecdsa-sha2-nistp384 AAAA...) in "
            f"{path}; found something else ({err}). Send supernode_key.pub, never "
            "the private key."
        ) from err
    nist = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, nist)):
        raise ConfigError(
            f"Expected an ECDSA key on a NIST curve (P-256/384/521) in {path}, as "
            f"Flower's SuperNode authentication requires; found {type(key).__name__}."
        )
    return text
