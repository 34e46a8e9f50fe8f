"""Per-round checkpoints of the global trainable state, written atomically.

Layout in ``out_dir``: ``checkpoint.pt`` (round, global trainable state, the run's
history so far, the run config that produced it). Every write goes to a temporary
file in the same directory, is fsynced, then renamed over the old one
(``os.replace`` is atomic on POSIX), so a crash leaves the previous checkpoint
intact, never a torn one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedshield.common.layout import RunLayout
from fedshield.common.storage import atomic_write_bytes, atomic_write_json

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "atomic_write_json",
    "load_checkpoint",
    "save_checkpoint",
]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to a different run setup."""


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    state: dict[str, torch.Tensor]
    history: dict[str, Any]
    run_config: dict[str, Any]


def save_checkpoint(out_dir: Path, ckpt: Checkpoint) -> Path:
    import io

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
    path = RunLayout(out_dir).checkpoint
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(out_dir: Path) -> Checkpoint:
    path = RunLayout(out_dir).checkpoint
    if not path.is_file():
        raise CheckpointError(
            f"resume=true but {path} does not exist. Point out-dir at the directory "
            "of the run to resume, or set resume=false to start a new run."
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
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
