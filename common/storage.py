"""Durable, atomic writes for privacy-relevant state (summaries, checkpoints,
reports), and key files readable by their owner only.

Write to a temporary file in the target's directory, fsync, then ``os.replace``
(atomic on POSIX): a crash leaves the previous version intact, never a torn file.
A key file is created with ``O_EXCL`` and mode 0600 (never over an existing key)
and refused when others may read it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .schema import epsilon_to_json

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "json_safe",
    "read_key_file",
    "write_key_file",
]


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON: an infinite epsilon (a release without DP) as the
    string ``"inf"`` (:func:`schema.epsilon_to_json`, as the ledger stores it), any
    other non-finite float (an accuracy not yet measured) as None."""
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return epsilon_to_json(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically. The new file has mode 0600
    (mkstemp's), so a key file rewritten in place stays its owner's only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable: without it, a power cut may keep the
    old name's file, or apply two renames out of order (a checkpoint and its
    signature)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    )


def read_key_file(path: Path, *, error: type[Exception], why: str) -> bytes | None:
    """The bytes of key file ``path``, or None when it does not exist; raises
    ``error`` when its mode lets others read it (``why``: what a leak allows)."""
    if not path.exists():
        return None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise error(
            f"The key file {path} is readable by others (mode {mode:o}). Run "
            f"`chmod 600 {path}`; {why}."
        )
    return path.read_bytes()


def write_key_file(path: Path, data: bytes) -> None:
    """Create key file ``path`` (mode 0600, fsynced); never replaces a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
