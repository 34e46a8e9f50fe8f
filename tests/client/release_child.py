"""A site process for the kill/restart test: guarded rounds, killed at a named point.

Run by ``tests/client/test_release.py`` as a script::

    python tests/client/release_child.py STATE_DIR MAX_EPS RUN FIRST_ROUND \\
        KILL_ROUND KILL_POINT LOG

It runs rounds ``FIRST_ROUND, FIRST_ROUND + 1, ...`` through the real
:func:`fedshield.client.release.release_round` (real ledger, real budget lock, real
Opacus RDP accountant) until the budget refuses. In round ``KILL_ROUND`` it SIGKILLs
itself at ``KILL_POINT`` (:data:`POINTS`), as abruptly as an outside ``kill -9``:
no ``finally``, no ``atexit``, no SQLite rollback. Points inside the ledger's
transaction are hit through SQLite's trace callback, which fires when a statement
*starts*, so ``entry-written`` dies with the entry row written but not the head,
and ``before-commit`` with both written but not committed.

"Sending" the update is appending ``SENT run round`` to ``LOG`` (fsynced), after
checking through a second, read-only connection that the release is committed
on the ledger: an update that left before its entry was durable is reported as
``UNSENDABLE`` (exit 3).

No torch: the site's real release path imports torch only through package
``__init__`` files and two torch modules whose torch-free names it uses
(``fedshield.privacy.dp.AccountantKind``, ``accountant_to_json``,
``fedshield.client.trainer.TrainResult``). :func:`_install_torch_free_imports` loads
those names from the real source files (by their ``ast``) and lets every other module
load unchanged, so a mutant of any of them is what this process runs. The child
prints ``READY torch=False`` once imported; the test checks it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import signal
import sqlite3
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The release of every round (sigma, q, steps): q = 1 composes in closed form, so
# the accountant costs microseconds and the test's time is the kills'.
PLANNED = (4.0, 1.0, 1)
# Where a round can die, in the order a round reaches them.
POINTS = (
    "verify",  # under the budget lock, reading the ledger to verify it
    "train",  # training, after the budget check passed
    "begin",  # opening the ledger's write transaction
    "entry-written",  # entry row inserted, signed head not yet rewritten
    "before-commit",  # entry and head written, transaction not committed
    "committed",  # release_round returned: recorded, update not yet sent
    "sent",  # update sent, next round not started
)
# Ledger statements that mark the points inside the release (prefix match).
SQL_POINTS = {
    "verify": "SELECT seq, body",
    "begin": "BEGIN IMMEDIATE",
    "entry-written": "INSERT OR REPLACE INTO head",
    "before-commit": "COMMIT",
}


def _package(name: str) -> None:
    """Register package ``name`` without running its ``__init__`` (which imports
    torch); its submodules still load from the real folder."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations is not None, name
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = module


def _source(package: str, file: str) -> Path:
    """The real file ``file`` of ``package`` (wherever it is imported from: the
    working tree, or a mutant's copy on ``PYTHONPATH``)."""
    return Path(sys.modules[package].__path__[0]) / file


def _module_from_source(name: str, path: Path, keep: set[str], env: dict) -> None:
    """Module ``name`` holding only the top-level definitions ``keep`` of the real
    file at ``path``, compiled as that file is (postponed annotations)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    body = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name in keep
    ]
    found = {node.name for node in body}
    assert found == keep, f"{path} no longer defines {sorted(keep - found)}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    module.__dict__.update(env)
    sys.modules[name] = module  # dataclasses look their module up while building
    code = compile(
        ast.Module(body=body, type_ignores=[]),
        str(path),
        "exec",
        flags=annotations.compiler_flag,  # the __future__ feature imported above
        dont_inherit=True,
    )
    exec(code, module.__dict__)


def _install_torch_free_imports() -> None:
    import json
    from dataclasses import dataclass
    from enum import StrEnum

    for name in (
        "opacus",
        "fedshield.privacy",
        "fedshield.models",
        "fedshield.client",
    ):
        _package(name)
    # opacus.accountants.accountant imports DPOptimizer only for an optimizer hook
    optimizers = types.ModuleType("opacus.optimizers")
    optimizers.DPOptimizer = type("DPOptimizer", (), {})  # type: ignore[attr-defined]
    sys.modules["opacus.optimizers"] = optimizers
    import functools
    from typing import ClassVar

    import numpy as np
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.utils import get_noise_multiplier

    from fedshield.common.config import ConfigError
    from fedshield.common.run_config import check_fields, default, read_fields

    _module_from_source(
        "fedshield.privacy.dp",
        _source("fedshield.privacy", "dp.py"),
        {
            "AccountantKind",
            "DPConfig",
            "accountant_to_json",
            "noise_for_target_epsilon",
            "_step_rdp",
            "rdp_of",
            "rdp_epsilon",
        },
        {
            "functools": functools,
            "np": np,
            "RDPAccountant": RDPAccountant,
            "compute_rdp": compute_rdp,
            "get_privacy_spent": get_privacy_spent,
            "json": json,
            "dataclass": dataclass,
            "StrEnum": StrEnum,
            "ConfigError": ConfigError,
            "ClassVar": ClassVar,
            "check_fields": check_fields,
            "default": default,
            "read_fields": read_fields,
            "get_noise_multiplier": get_noise_multiplier,
        },
    )
    from fedshield.privacy.budget import Release

    _module_from_source(
        "fedshield.client.trainer",
        _source("fedshield.client", "trainer.py"),
        {"TrainResult"},
        {"dataclass": dataclass, "Release": Release},
    )


def _die(log: Any, rnd: int, point: str) -> None:
    log.write(f"KILL {rnd} {point}\n")
    log.flush()
    os.fsync(log.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def _arm_sql_points(on_statement: Callable[[str], None]) -> None:
    """Every SQLite connection opened from now on reports each statement."""
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(*args, **kwargs)
        db.set_trace_callback(on_statement)
        return db

    sqlite3.connect = traced  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    state, max_eps, run, first, kill_round, kill_point, log_path = argv
    if kill_point not in (*POINTS, "none"):
        raise SystemExit(f"unknown kill point {kill_point!r}; one of {POINTS}")
    _install_torch_free_imports()
    from fedshield.client.release import Refused, SiteBudget, release_round
    from fedshield.client.trainer import TrainResult
    from fedshield.privacy.budget import Release
    from fedshield.privacy.dp import AccountantKind
    from fedshield.privacy.ledger import LedgerReader

    planned = Release(*PLANNED)
    budget = SiteBudget(Path(state), max_epsilon=float(max_eps), delta=1e-5)
    log = open(log_path, "a")  # noqa: SIM115 (kept open until the process dies)
    current = {"round": 0}

    def on_statement(sql: str) -> None:
        point = next((p for p, s in SQL_POINTS.items() if sql.startswith(s)), None)
        if current["round"] == int(kill_round) and point == kill_point:
            _die(log, current["round"], point)

    _arm_sql_points(on_statement)
    print(f"READY torch={'torch' in sys.modules}", flush=True)
    rnd = int(first)
    while True:
        current["round"] = rnd
        kill_here = rnd == int(kill_round)

        def train(rnd: int = rnd, kill_here: bool = kill_here) -> TrainResult:
            if kill_here and kill_point == "train":
                _die(log, rnd, "train")
            return TrainResult(num_examples=100, mean_loss=0.1, release=planned)

        out = release_round(
            budget=budget,
            run_id=run,
            server_round=rnd,
            fingerprint="fp",
            planned=planned,
            accountant=AccountantKind.RDP,
            train=train,
        )
        current["round"] = 0  # no ledger statement of the send step is a kill point
        if isinstance(out, Refused):
            log.write(f"REFUSED {rnd}\n")
            log.flush()
            print(f"DONE torch={'torch' in sys.modules}", flush=True)
            return 0
        if kill_here and kill_point == "committed":
            _die(log, rnd, "committed")
        with LedgerReader(Path(state)) as ledger:
            recorded = {
                (r.entry.run_id, r.entry.server_round) for r in ledger.entries()
            }
        if (run, rnd) not in recorded:
            log.write(f"UNSENDABLE {rnd}\n")
            log.flush()
            return 3
        log.write(f"SENT {run} {rnd}\n")
        log.flush()
        os.fsync(log.fileno())
        if kill_here and kill_point == "sent":
            _die(log, rnd, "sent")
        rnd += 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
