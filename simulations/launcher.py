"""Run the fedshield Flower app on Flower's simulation engine via ``flwr run``.

``flwr run`` (Flower >= 1.4x) starts a managed local SuperLink in simulation mode
the first time and reuses it afterwards. That SuperLink would install each app's
dependencies into a fresh environment with ``uv sync`` (pulling torch from the
registry); we already run inside the environment that has them, so it must start
with ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``. A SuperLink that is already
running without it is reported, never killed: it may be the user's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LaunchError",
    "SimulationLaunch",
    "app_dir",
    "check_local_superlink",
    "flwr_command",
    "run_logged",
    "started_run_id",
    "stop_run",
]

DISABLE_INSTALL = "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"


class LaunchError(RuntimeError):
    """The simulation cannot be started; the message says why and what to do."""


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


def _superlink_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"flower-superlink") for part in cmd[:2]):
            pids.append(int(entry.name))
    return pids


def check_local_superlink() -> None:
    """Refuse to reuse a running SuperLink that would reinstall dependencies."""
    for pid in _superlink_pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            interpreter = argv[0].decode(errors="replace")
        except (OSError, IndexError):
            interpreter = ""
        prefix = str(Path(sys.prefix))
        if interpreter and not interpreter.startswith(prefix + os.sep):
            raise LaunchError(
                f"A Flower SuperLink (pid {pid}) from another Python environment "
                f"({interpreter}) is running; runs would execute with that "
                f"environment's packages, not this one's ({prefix}). Stop it "
                f"(`kill {pid}`) and run again."
            )
        if f"{DISABLE_INSTALL}=1".encode() not in environ:
            raise LaunchError(
                f"A Flower SuperLink (pid {pid}) is already running without "
                f"{DISABLE_INSTALL}=1, so it would try to install torch and the other "
                "dependencies into a new environment for every run. Stop it "
                f"(`kill {pid}`) and run again: fedshield then starts its own local "
                "SuperLink with runtime installation disabled."
            )


@dataclass(frozen=True)
class SimulationLaunch:
    command: list[str]
    env: dict[str, str]
    cwd: Path


def flwr_command(*, overrides: list[str], num_sites: int) -> SimulationLaunch:
    """The ``flwr run`` invocation (and environment) for one simulation."""
    bin_dir = Path(sys.executable).parent
    flwr = bin_dir / "flwr"
    if not flwr.exists():
        found = shutil.which("flwr")
        if found is None:
            raise LaunchError(
                "The `flwr` command is not installed in this environment. Install "
                "fedshield's dependencies (`make install`)."
            )
        flwr = Path(found)
    env = dict(os.environ)
    env[DISABLE_INSTALL] = "1"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    cwd = app_dir()
    command = [str(flwr), "run", str(cwd), "--stream"]
    for item in overrides:
        command += ["--run-config", item]
    command += ["--federation-config", f"num-supernodes={num_sites}"]
    return SimulationLaunch(command=command, env=env, cwd=cwd)


def started_run_id(log_path: Path) -> int | None:
    """The run id ``flwr run`` printed ("Successfully started run <id>"), if any."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    found = re.findall(r"Successfully started run (\d+)", text)
    return int(found[-1]) if found else None


def stop_run(launch: SimulationLaunch, run_id: int) -> None:
    """Ask the local SuperLink to stop ``run_id`` (killing ``flwr run`` does not)."""
    subprocess.run(
        [launch.command[0], "stop", str(run_id)],
        cwd=launch.cwd,
        env=launch.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )


def run_logged(launch: SimulationLaunch, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``launch`` with stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen(
        launch.command,
        cwd=launch.cwd,
        env=launch.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
