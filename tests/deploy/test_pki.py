"""The federation's keys: a CA, a SuperLink certificate that verifies for every
host named (loopback included), SuperNode keys in the format Flower loads, all
private keys 0600, and no key ever overwritten."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store

from fedshield.common.config import ConfigError
from fedshield.deploy.pki import (
    load_ca,
    make_ca,
    make_server_certificate,
    make_site_key,
    read_public_key,
)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_certificate_verifies_for_each_host_and_loopback(tmp_path) -> None:
    ca = make_ca(tmp_path / "ca", "test")
    cert_path = make_server_certificate(
        ca, tmp_path / "sl", ["fl.example.org", "10.1.2.3"]
    )
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    store = Store(
        [x509.load_pem_x509_certificate((tmp_path / "ca/ca.pem").read_bytes())]
    )
    for host in ("fl.example.org", "localhost"):
        verifier = PolicyBuilder().store(store).build_server_verifier(DNSName(host))
        verifier.verify(cert, [])
    for ip in ("10.1.2.3", "127.0.0.1"):
        verifier = (
            PolicyBuilder()
            .store(store)
            .build_server_verifier(IPAddress(ipaddress.ip_address(ip)))
        )
        verifier.verify(cert, [])
    other = PolicyBuilder().store(store).build_server_verifier(DNSName("evil.org"))
    with pytest.raises(Exception, match="(?i)subject|name|match"):
        other.verify(cert, [])
    assert _mode(tmp_path / "ca/ca.key") == 0o600
    assert _mode(tmp_path / "sl/server.key") == 0o600
    assert _mode(tmp_path / "ca/ca.pem") == _mode(cert_path) == 0o644


def test_a_certificate_from_another_ca_does_not_verify(tmp_path) -> None:
    ours = make_ca(tmp_path / "ours", "ours")
    theirs = make_ca(tmp_path / "theirs", "theirs")
    forged = make_server_certificate(theirs, tmp_path / "forged", ["localhost"])
    store = Store([ours.certificate])
    verifier = PolicyBuilder().store(store).build_server_verifier(DNSName("localhost"))
    with pytest.raises(Exception, match="(?i)issuer|candidates|chain"):
        verifier.verify(x509.load_pem_x509_certificate(forged.read_bytes()), [])


def test_site_key_is_an_openssh_p384_key_flower_can_load(tmp_path) -> None:
    key = make_site_key(tmp_path / "site")
    assert _mode(key.private_path) == 0o600
    assert _mode(key.public_path) == 0o644
    private = serialization.load_ssh_private_key(key.private_path.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert key.public_line.startswith("ecdsa-sha2-nistp384 ")
    assert read_public_key(key.public_path) == key.public_line
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert public.decode() == key.public_line


def test_no_key_is_ever_overwritten(tmp_path) -> None:
    ca = make_ca(tmp_path / "ca", "test")
    before = (tmp_path / "ca/ca.key").read_bytes()
    with pytest.raises(ConfigError, match="never replaces a key"):
        make_ca(tmp_path / "ca", "test")
    assert (tmp_path / "ca/ca.key").read_bytes() == before
    make_server_certificate(ca, tmp_path / "sl", ["localhost"])
    with pytest.raises(ConfigError, match="never replaces a key"):
        make_server_certificate(ca, tmp_path / "sl", ["localhost"])
    make_site_key(tmp_path / "s")
    with pytest.raises(ConfigError, match="never replaces a key"):
        make_site_key(tmp_path / "s")
    assert load_ca(tmp_path / "ca").certificate == ca.certificate


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not a key", "OpenSSH public key line"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "OpenSSH public key line"),
    ],
)
def test_a_wrong_public_key_file_is_refused(tmp_path, content, message) -> None:
    path = tmp_path / "k.pub"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_public_key(path)


def test_a_non_nist_public_key_is_refused(tmp_path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    line = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    path = tmp_path / "ed.pub"
    path.write_bytes(line)
    with pytest.raises(ConfigError, match="NIST curve"):
        read_public_key(path)
    with pytest.raises(ConfigError, match="found nothing"):
        read_public_key(tmp_path / "missing.pub")


def test_a_host_with_a_port_or_scheme_is_refused(tmp_path) -> None:
    ca = make_ca(tmp_path / "ca", "test")
    with pytest.raises(ConfigError, match="without a port or scheme"):
        make_server_certificate(ca, tmp_path / "sl", ["https://fl.example.org"])
