"""``fedshield simulate`` runs on a SuperLink of its own beside an unrelated one.

An unrelated simulation SuperLink, with its own FLWR_HOME, listens where a user's
(or plain ``flwr run``'s) would: Flower's default local port 39091, or a free port
when that one is taken. A one-round, two-site simulation with a tiny BERT must
finish; the unrelated SuperLink must still answer and have received no run; and the
simulation's own SuperLink and everything it started must be gone."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fedshield.simulations.process_tree import terminate_tree
from fedshield.simulations.superlink import free_port, venv_script

pytestmark = pytest.mark.slow  # a whole simulation (make test-fast skips it)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 39091  # flwr run's local SuperLink (flwr/cli/constant.py)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _healthy(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/health"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _processes_mentioning(port: int) -> list[str]:
    """Command lines of live processes bound to or pointed at 127.0.0.1:``port``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        bound = "flower-superlink" in " ".join(argv[:2]) and str(port) in argv
        if bound or any(arg.endswith(f"127.0.0.1:{port}") for arg in argv):
            found.append(" ".join(argv))
    return found


@pytest.fixture()
def unrelated_superlink(tmp_path: Path):
    port = DEFAULT_PORT if _is_free(DEFAULT_PORT) else free_port()
    home, log = tmp_path / "unrelated-home", tmp_path / "unrelated.log"
    home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # as a user would: dependency installs allowed
            [str(venv_script("flower-superlink")), "--insecure", "--simulation"]
            + ["--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not _healthy(port):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield proc, port, log
    finally:
        terminate_tree(proc)


def test_simulation_runs_on_its_own_superlink_beside_an_unrelated_one(
    tmp_path: Path, tiny_model_dir: Path, unrelated_superlink
) -> None:
    other, other_port, other_log = unrelated_superlink
    out = tmp_path / "run"
    overrides = (
        f"model.source='{tiny_model_dir}' model.max-length=16 train.batch-size=8 "
        "data.train-examples=40 data.test-examples=16 num-server-rounds=1 "
        "secagg.enabled=false"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fedshield.cli", "simulate", "--out", str(out)]
        + ["--sites", "2", "--run-config", overrides],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert sorted(summary["sites"]) == ["site-0", "site-1"]  # num-supernodes=2

    # the unrelated SuperLink still runs, answers, and never saw a run
    assert other.poll() is None and _healthy(other_port)
    assert "start-run" not in other_log.read_text()

    # the simulation's own SuperLink listened elsewhere and is gone, children too
    (own,) = set(re.findall(r"Runtime HTTP API on 127\.0\.0\.1:(\d+)", _log(out)))
    assert int(own) != other_port
    assert "start-run" in _log(out)
    assert _processes_mentioning(int(own)) == []


def _log(out: Path) -> str:
    return (out / "superlink.log").read_text(errors="replace")
