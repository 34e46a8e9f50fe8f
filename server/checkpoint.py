"""Per-round checkpoints of the global trainable state, written atomically, and
signed when the coordinator names a signing key.

Layout in ``out_dir``: ``checkpoint.pt`` (round, global trainable state, the run's
history so far, the run config that produced it). Every write goes to a temporary
file in the same directory, is fsynced, then renamed over the old one
(``os.replace`` is atomic on POSIX), so a crash leaves the previous checkpoint
intact, never a torn one.

Signed checkpoints (run config ``checkpoint.signing-key``: an Ed25519 key on the
coordinator's host, kept apart from ``out-dir`` and sealed at rest like a site's
keys, :mod:`fedshield.common.sealing`). Whoever can write ``out-dir`` (a shared
volume, a backup restored by someone else) could otherwise hand a resumed run a
model of their own, a shortened history or another run's state. With the key set:

- ``checkpoint.sig.json`` holds Ed25519 signatures over the SHA-256 of
  ``checkpoint.pt``'s bytes (with a context tag). It is written first, holding the
  signature of the checkpoint on disk and of the one about to replace it, so a
  crash between the two writes still resumes the previous checkpoint.
- ``resume`` verifies with the key the coordinator names now, never with a key
  found in ``out-dir``: a changed byte, a missing signature, or one made by
  another key is refused; so is a signed checkpoint resumed without the key.
- Not covered: rolling back to an older checkpoint of the same run with its own
  signature file (the sites' ledgers still count every round they trained).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedshield.common.layout import RunLayout
from fedshield.common.sealing import load_signing_key
from fedshield.common.storage import atomic_write_bytes, atomic_write_json

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "atomic_write_json",
    "checkpoint_signer",
    "load_checkpoint",
    "save_checkpoint",
]

_CONTEXT = b"fedshield-checkpoint-v1:"
_FORMAT = "fedshield-checkpoint-signatures-v1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to a different run setup."""


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    state: dict[str, torch.Tensor]
    history: dict[str, Any]
    run_config: dict[str, Any]


def checkpoint_signer(path: Path) -> Ed25519PrivateKey:
    """The coordinator's checkpoint signing key at ``path`` (made on first use)."""
    return load_signing_key(
        path,
        error=CheckpointError,
        why="anyone with it can sign a checkpoint that a resumed run trusts",
    )


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _signed_message(digest: str) -> bytes:
    return _CONTEXT + bytes.fromhex(digest)


def _signatures(layout: RunLayout) -> dict[str, str]:
    path = layout.checkpoint_signatures
    try:
        doc = json.loads(path.read_text())
        sigs = doc["signatures"]
        if doc["format"] != _FORMAT or not isinstance(sigs, dict):
            raise ValueError(doc["format"])
        return {str(k): str(v) for k, v in sigs.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"Expected checkpoint signatures in {path}; found an unreadable file "
            f"({err!r}). Restore it with the checkpoint from a backup."
        ) from err


def save_checkpoint(
    out_dir: Path, ckpt: Checkpoint, *, signer: Ed25519PrivateKey | None = None
) -> Path:
    """Write ``ckpt`` atomically; with ``signer``, sign it first (module doc)."""
    buf = io.BytesIO()
    torch.save(
        {
            "server_round": ckpt.server_round,
            "state": dict(ckpt.state),
            "history": ckpt.history,
            "run_config": ckpt.run_config,
        },
        buf,
    )
    data = buf.getvalue()
    layout = RunLayout(out_dir)
    path = layout.checkpoint
    if signer is not None:
        kept = {}
        if path.is_file():  # the checkpoint on disk stays resumable until replaced
            current = _digest(path.read_bytes())
            previous = _signatures(layout).get(current)
            if previous is not None:
                kept[current] = previous
        digest = _digest(data)
        kept[digest] = base64.b64encode(signer.sign(_signed_message(digest))).decode()
        atomic_write_json(
            layout.checkpoint_signatures, {"format": _FORMAT, "signatures": kept}
        )
    atomic_write_bytes(path, data)
    return path


def _verify(layout: RunLayout, data: bytes, verifier: Ed25519PublicKey | None) -> None:
    signed = layout.checkpoint_signatures.exists()
    if verifier is None:
        if signed:
            raise CheckpointError(
                f"The checkpoint in {layout.root} is signed, but this run names no "
                "`checkpoint.signing-key`. Resume with the key that signed it, so "
                "that a checkpoint changed since is refused."
            )
        return
    if not signed:
        raise CheckpointError(
            f"Expected a signed checkpoint in {layout.root} "
            f"({layout.checkpoint_signatures.name}), as `checkpoint.signing-key` is "
            "set; found none. It was written without signing, or its signature was "
            "removed: resume only a checkpoint you can vouch for, or start a new run."
        )
    digest = _digest(data)
    signature = _signatures(layout).get(digest)
    if signature is None:
        raise CheckpointError(
            f"The checkpoint {layout.checkpoint} matches none of its signatures: it "
            "changed after the coordinator wrote it. Restore it from a backup, or "
            "start a new run."
        )
    try:
        verifier.verify(base64.b64decode(signature), _signed_message(digest))
    except (InvalidSignature, ValueError) as err:
        raise CheckpointError(
            f"The checkpoint {layout.checkpoint} is not signed by the key in "
            "`checkpoint.signing-key`: someone else wrote it. Restore it from a "
            "backup, or start a new run."
        ) from err


def load_checkpoint(
    out_dir: Path, *, verifier: Ed25519PublicKey | None = None
) -> Checkpoint:
    """The checkpoint in ``out_dir``; with ``verifier``, only if signed by its key
    (and a signed one is refused without it)."""
    layout = RunLayout(out_dir)
    path = layout.checkpoint
    if not path.is_file():
        raise CheckpointError(
            f"resume=true but {path} does not exist. Point out-dir at the directory "
            "of the run to resume, or set resume=false to start a new run."
        )
    data = path.read_bytes()
    _verify(layout, data, verifier)
    try:
        raw: dict[str, Any] = torch.load(
            io.BytesIO(data), map_location="cpu", weights_only=True
        )
    except Exception as err:
        raise CheckpointError(
            f"Checkpoint {path} could not be read ({type(err).__name__}: {err}). It "
            "may be from another fedshield version; start a new run in another out-dir."
        ) from err
    return Checkpoint(
        server_round=int(raw["server_round"]),
        state=dict(raw["state"]),
        history=raw["history"],
        run_config=raw["run_config"],
    )
