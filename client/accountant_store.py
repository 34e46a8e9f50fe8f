"""Where a site keeps its DP accountant between rounds and across restarts.

The accountant history (``[[sigma, q, steps], ...]``) is written atomically to
``<state-dir>/accountants/<run-key>.json`` after every round, before the update is
sent. ``run-key`` is minted by the server at the start of a run and kept in its
checkpoint, so a resumed run finds the same accountant and epsilon keeps composing.

State dir: node config ``state-dir`` if set; in simulation ``<out-dir>/sites/<site>``
(the server's out-dir, same machine); otherwise ``~/.fedshield/sites/<site>``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from privacy.storage import atomic_write_bytes

__all__ = ["AccountantStore"]

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class AccountantStore:
    def __init__(self, state_dir: Path, run_key: str) -> None:
        if not _SAFE.match(run_key):
            raise ValueError(
                f"run-key {run_key!r} from the server is not a safe file name "
                "(expected 1-128 characters of [A-Za-z0-9_.-])."
            )
        self.path = Path(state_dir) / "accountants" / f"{run_key}.json"

    @classmethod
    def for_site(
        cls, *, node_config: dict[str, Any], train_config: dict[str, Any], site: str
    ) -> AccountantStore:
        run_key = str(train_config.get("run-key", ""))
        if "state-dir" in node_config:
            base = Path(str(node_config["state-dir"])).expanduser()
        elif "partition-id" in node_config and train_config.get("out-dir"):
            base = Path(str(train_config["out-dir"])) / "sites" / site
        else:
            base = Path.home() / ".fedshield" / "sites" / site
        return cls(base, run_key)

    def load(self) -> str | None:
        if not self.path.is_file():
            return None
        text = self.path.read_text(encoding="utf-8")
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"The site's accountant file {self.path} is corrupt ({err.msg}). It is "
                "left in place; restore it from a backup, or start a new run."
            ) from err
        return text

    def save(self, payload: str) -> None:
        atomic_write_bytes(self.path, payload.encode("utf-8"))
