"""Run the fedshield Flower app on Flower's simulation engine via ``flwr run``.

Every simulation gets its own SuperLink (superlink.py): ``flwr run`` is pointed at it
by the connection name in that SuperLink's private ``FLWR_HOME``, so it never starts
or reuses the machine-wide local SuperLink, and any number of simulations and other
SuperLinks can run side by side. This module builds the ``flwr run`` invocation,
starts it with its output in a log file, and stops its run on Ctrl-C.
"""

from __future__ import annotations

import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .process_tree import dies_with_parent
from .superlink import LaunchError, PrivateSuperLink, venv_script

__all__ = [
    "LaunchError",
    "SimulationLaunch",
    "app_dir",
    "flwr_command",
    "run_logged",
    "started_run_id",
    "stop_run",
]


def app_dir() -> Path:
    """The folder holding fedshield's pyproject.toml (the Flower app)."""
    here = Path(__file__).resolve().parent.parent
    pyproject = here / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise LaunchError(
            f"No Flower app found at {here} (expected pyproject.toml with "
            "[tool.flwr.app]). Install fedshield from its source folder with "
            "`pip install -e .` so `fedshield simulate` can find the app, or run "
            "`flwr run .` in that folder."
        )
    return here


@dataclass(frozen=True, kw_only=True)
class SimulationLaunch:
    """One ``flwr run``: its argv, environment and folder, and its SuperLink."""

    command: list[str]
    env: dict[str, str]
    cwd: Path
    connection: str  # the SuperLink connection name in env["FLWR_HOME"]


_TOKEN = re.compile(r"""(?:[^\s'"]+|'[^']*'|"[^"]*")+""")


def override_pairs(items: list[str]) -> dict[str, str]:
    """``key -> raw value`` of ``--run-config "k=v k2='a b'"`` items, split on
    whitespace outside quotes; a key given twice keeps its last value."""
    pairs: dict[str, str] = {}
    for item in items:
        for token in _TOKEN.findall(item):
            key, _, value = token.partition("=")
            pairs.pop(key.strip(), None)  # re-insert: the last one wins, in order
            pairs[key.strip()] = value.strip()
    return pairs


def flwr_command(
    *,
    superlink: PrivateSuperLink,
    overrides: list[str],
    num_sites: int,
    client_cpus: int | None = None,
    client_gpus: float | None = None,
) -> SimulationLaunch:
    """The ``flwr run`` invocation of the app on ``superlink`` with ``num_sites``.

    Every override goes into **one** ``--run-config`` string: flwr 1.41 parses each
    ``--run-config`` item as a TOML document and merges the items table by table,
    so a later item's ``audit.canary-kind`` would replace an earlier item's whole
    ``audit`` table (``audit.canaries`` silently lost).

    ``client_cpus``/``client_gpus``: what Ray reserves for each simulated site's
    ClientApp (Flower's defaults, 2 CPUs and no GPU, when None; flwr 1.41 takes
    whole CPUs); a fraction of a GPU lets several sites share one."""
    flwr = venv_script("flwr")
    cwd = app_dir()
    command = [str(flwr), "run", str(cwd), superlink.connection, "--stream"]
    pairs = override_pairs(overrides)  # one TOML document: a key at most once
    if pairs:
        command += ["--run-config", " ".join(f"{k}={v}" for k, v in pairs.items())]
    federation = [f"num-supernodes={num_sites}"]
    if client_cpus is not None:
        federation.append(f"client-resources-num-cpus={client_cpus}")
    if client_gpus is not None:
        federation.append(f"client-resources-num-gpus={client_gpus}")
    command += ["--federation-config", " ".join(federation)]
    return SimulationLaunch(
        command=command,
        env=dict(superlink.env),
        cwd=cwd,
        connection=superlink.connection,
    )


def started_run_id(log_path: Path) -> int | None:
    """The run id ``flwr run`` printed ("Successfully started run <id>"), if any."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    found = re.findall(r"Successfully started run (\d+)", text)
    return int(found[-1]) if found else None


def stop_run(launch: SimulationLaunch, run_id: int) -> None:
    """Ask the SuperLink to stop ``run_id`` (``flwr stop``), so Flower ends the run
    before its SuperLink is torn down; a stop that hangs is given up after 30 s."""
    try:
        subprocess.run(
            [launch.command[0], "stop", str(run_id), launch.connection],
            cwd=launch.cwd,
            env=launch.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pass


def run_logged(launch: SimulationLaunch, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``launch`` with stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            launch.command,
            cwd=launch.cwd,
            env=launch.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=dies_with_parent(signal.SIGTERM),  # not left streaming
        )
