"""A site's secrets at rest: sealed with the site's passphrase, attacked as the
holder of a copied disk or backup would (read the files, swap them, guess)."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from cryptography.hazmat.primitives import serialization

from fedshield.common.config import ConfigError
from fedshield.common.sealing import (
    PASSPHRASE_ENV,
    SealingError,
    is_sealed,
    seal,
    unseal,
)
from fedshield.deploy.site import reseal_secrets, secrets_status
from fedshield.privacy.ledger import KEY_NAME as LEDGER_KEY
from fedshield.privacy.ledger import (
    LedgerEntry,
    LedgerError,
    LedgerReader,
    SiteLedger,
)
from fedshield.privacy.pii import PIIError
from fedshield.privacy.pii.scrubber import KEY_NAME as PII_KEY
from fedshield.privacy.pii.scrubber import load_site_key
from tests.privacy.test_ledger import _entry as ledger_entry

PASS = "correct horse battery staple"


def _entry(epsilon: float = 1.0) -> LedgerEntry:
    return ledger_entry("run-1", int(epsilon), epsilon)


def test_a_sealed_secret_opens_only_with_its_passphrase_and_purpose() -> None:
    secret = bytes(range(32))
    blob = seal(secret, PASS.encode(), purpose="pii_key")
    assert is_sealed(blob) and secret not in blob
    assert secret.hex().encode() not in blob
    assert unseal(blob, PASS.encode(), purpose="pii_key") == secret
    with pytest.raises(SealingError, match="not the passphrase"):
        unseal(blob, b"correct horse battery stapler", purpose="pii_key")
    with pytest.raises(SealingError, match="another key copied over it"):
        unseal(blob, PASS.encode(), purpose="ledger_key.pem")
    doc = json.loads(blob)
    # any changed byte of the ciphertext fails to open (AES-GCM's tag)
    raw = bytearray(base64.b64decode(doc["ciphertext"]))
    raw[0] ^= 1
    doc["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SealingError, match="not the passphrase|changed"):
        unseal(json.dumps(doc).encode(), PASS.encode(), purpose="pii_key")
    # a damaged document is said to be one
    with pytest.raises(SealingError, match="damaged"):
        unseal(blob[:-20], PASS.encode(), purpose="pii_key")
    # each seal draws a fresh salt (no table of guesses serves two sites) and nonce
    again = json.loads(seal(secret, PASS.encode(), purpose="pii_key"))
    assert again["salt"] != doc["salt"] and again["nonce"] != json.loads(blob)["nonce"]


def test_the_site_keys_are_sealed_on_disk_when_the_site_sets_a_passphrase(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASS)
    key = load_site_key(tmp_path)
    with SiteLedger(tmp_path) as ledger:
        ledger.append(_entry())
        public = ledger.public_key
    for name in (LEDGER_KEY, PII_KEY):
        path = tmp_path / name
        assert is_sealed(path.read_bytes())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # whoever copies the disk finds neither key in it
    disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert key not in disk and b"PRIVATE KEY" not in disk
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(
            (tmp_path / LEDGER_KEY).read_bytes(), password=None
        )
    # the site reopens the same keys; the ledger goes on with the same signer
    assert load_site_key(tmp_path) == key
    with SiteLedger(tmp_path) as ledger:
        assert ledger.public_key == public
        ledger.append(_entry(2.0))
    # an auditor verifies with the public key alone, no passphrase
    monkeypatch.delenv(PASSPHRASE_ENV)
    with LedgerReader(tmp_path) as reader:
        report = reader.verify()
    assert report.ok and report.entries == 2


def test_without_the_passphrase_a_sealed_key_is_refused_never_replaced(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASS)
    load_site_key(tmp_path)
    SiteLedger(tmp_path).close()
    before = {n: (tmp_path / n).read_bytes() for n in (LEDGER_KEY, PII_KEY)}
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(PIIError, match=PASSPHRASE_ENV):
        load_site_key(tmp_path)
    with pytest.raises(LedgerError, match=PASSPHRASE_ENV):
        SiteLedger(tmp_path)
    monkeypatch.setenv(PASSPHRASE_ENV, "a different passphrase")
    with pytest.raises(PIIError, match="not the passphrase"):
        load_site_key(tmp_path)
    with pytest.raises(LedgerError, match="not the passphrase"):
        SiteLedger(tmp_path)
    # nothing the site owns was rewritten by the failed openings
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


def test_a_swapped_sealed_key_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, PASS)
    load_site_key(tmp_path)
    SiteLedger(tmp_path).close()
    (tmp_path / LEDGER_KEY).write_bytes((tmp_path / PII_KEY).read_bytes())
    with pytest.raises(LedgerError, match="another key copied over it"):
        SiteLedger(tmp_path)


def test_clear_keys_are_refused_once_a_passphrase_is_set_and_sealed_by_the_command(
    tmp_path, monkeypatch
) -> None:
    key = load_site_key(tmp_path)
    with SiteLedger(tmp_path) as ledger:
        ledger.append(_entry())
        public = ledger.public_key
    assert secrets_status(tmp_path) == {LEDGER_KEY: "in clear", PII_KEY: "in clear"}
    monkeypatch.setenv(PASSPHRASE_ENV, PASS)
    with pytest.raises(PIIError, match="seal-secrets"):
        load_site_key(tmp_path)
    with pytest.raises(ConfigError, match="seal-secrets"):
        secrets_status(tmp_path)
    done = reseal_secrets(tmp_path, to_sealed=True)
    assert done == {LEDGER_KEY: "sealed", PII_KEY: "sealed"}
    assert reseal_secrets(tmp_path, to_sealed=True) == {
        LEDGER_KEY: "already sealed",
        PII_KEY: "already sealed",
    }
    assert secrets_status(tmp_path) == {LEDGER_KEY: "sealed", PII_KEY: "sealed"}
    # the same keys: pseudonyms unchanged, the ledger's old entries still verify
    assert load_site_key(tmp_path) == key
    with SiteLedger(tmp_path) as ledger:
        assert ledger.public_key == public
        ledger.append(_entry(2.0))
        assert ledger.verify().ok
    for name in (LEDGER_KEY, PII_KEY):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    # back to clear with the passphrase, the same keys again
    assert reseal_secrets(tmp_path, to_sealed=False) == {
        LEDGER_KEY: "in clear",
        PII_KEY: "in clear",
    }
    assert (tmp_path / PII_KEY).read_bytes() == key
    monkeypatch.delenv(PASSPHRASE_ENV)
    assert load_site_key(tmp_path) == key


def test_sealing_needs_a_passphrase_of_some_length(tmp_path, monkeypatch) -> None:
    load_site_key(tmp_path)
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    with pytest.raises(ConfigError, match="unset"):
        reseal_secrets(tmp_path, to_sealed=True)
    monkeypatch.setenv(PASSPHRASE_ENV, "short")
    with pytest.raises(ConfigError, match="at least 12"):
        reseal_secrets(tmp_path, to_sealed=True)
    with pytest.raises(PIIError, match="at least 12"):
        load_site_key(tmp_path / "new")
    assert not (tmp_path / "new" / PII_KEY).exists()
    assert (tmp_path / PII_KEY).read_bytes() != b""  # untouched, still in clear
    monkeypatch.delenv(PASSPHRASE_ENV)
    assert secrets_status(tmp_path)[PII_KEY] == "in clear"


def test_the_site_commands_seal_and_check_the_secrets(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from fedshield.cli.main import app

    state = tmp_path / "state"
    key = load_site_key(state)
    data = tmp_path / "notes.csv"
    data.write_text("text,label\ngood,1\nbad,0\n")
    node_config = f"data-path='{data}' state-dir='{state}'"
    runner = CliRunner()
    monkeypatch.setenv(PASSPHRASE_ENV, PASS)
    refused = runner.invoke(app, ["site", "check", "--node-config", node_config])
    assert refused.exit_code != 0 and "seal-secrets" in refused.output
    sealed = runner.invoke(app, ["site", "seal-secrets", str(state)])
    assert sealed.exit_code == 0, sealed.output
    assert "pii_key: sealed" in sealed.output
    checked = runner.invoke(app, ["site", "check", "--node-config", node_config])
    assert checked.exit_code == 0, checked.output
    assert "pii_key sealed" in checked.output
    assert load_site_key(state) == key
    monkeypatch.setenv(PASSPHRASE_ENV, "not the passphrase it had")
    wrong = runner.invoke(app, ["site", "check", "--node-config", node_config])
    assert wrong.exit_code != 0 and "not the passphrase" in wrong.output


def test_a_blank_passphrase_a_symlinked_key_and_a_damaged_seal_are_refused(
    tmp_path, monkeypatch
) -> None:
    # a blank value (systemd's `Environment=VAR=`) never means "write in clear"
    monkeypatch.setenv(PASSPHRASE_ENV, "  ")
    with pytest.raises(PIIError, match="blank"):
        load_site_key(tmp_path / "blank")
    assert not (tmp_path / "blank" / PII_KEY).exists()
    # a key linked from elsewhere: sealing it would leave the target in clear
    monkeypatch.delenv(PASSPHRASE_ENV)
    elsewhere = tmp_path / "elsewhere"
    key = load_site_key(elsewhere)
    state = tmp_path / "state"
    state.mkdir()
    (state / PII_KEY).symlink_to(elsewhere / PII_KEY)
    monkeypatch.setenv(PASSPHRASE_ENV, PASS)
    with pytest.raises(ConfigError, match="symbolic link"):
        reseal_secrets(state, to_sealed=True)
    assert (elsewhere / PII_KEY).read_bytes() == key
    with pytest.raises(PIIError, match="symbolic link"):
        load_site_key(state)
    # a truncated seal is a damaged seal, never a key "in clear" to seal again
    sealed = tmp_path / "sealed"
    load_site_key(sealed)
    path = sealed / PII_KEY
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(PIIError, match="damaged"):
        load_site_key(sealed)
    with pytest.raises(ConfigError, match="damaged"):
        reseal_secrets(sealed, to_sealed=True)
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(PIIError, match="sealed with a passphrase"):
        load_site_key(sealed)


def test_a_sealed_document_with_other_parameters_is_refused() -> None:
    blob = json.loads(seal(bytes(32), PASS.encode(), purpose="pii_key"))
    for field, value in (("kdf", {"name": "scrypt", "n": 2**30, "r": 8, "p": 1}),
                         ("nonce", base64.b64encode(bytes(4)).decode())):  # fmt: skip
        bad = json.dumps({**blob, field: value}, indent=1).encode()
        with pytest.raises(SealingError, match="damaged"):
            unseal(bad, PASS.encode(), purpose="pii_key")
