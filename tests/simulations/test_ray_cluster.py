"""``fedshield simulate --ray-address``: the sites run on an existing Ray cluster,
here a head started with ``ray start --head`` on loopback, in its own temporary
folder, stopped with all its descendants whatever the test does."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedshield.simulations.process_tree import terminate_tree
from fedshield.simulations.superlink import free_port, venv_script
from tests.subprocess_env import fedshield_cli, subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_head(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    port = free_port()
    # a short folder: Ray's socket paths must stay under 108 bytes
    temp = Path(f"/tmp/fs-ray-{os.getpid()}-{port}")
    log = (tmp_path_factory.mktemp("ray") / "head.log").open("wb")
    head = subprocess.Popen(
        [str(venv_script("ray")), "start", "--head", "--block",
         "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--num-cpus", "2", "--include-dashboard", "false",
         "--disable-usage-stats", "--temp-dir", str(temp)],
        env={**subprocess_env(), "RAY_ADDRESS": ""},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, "ray start --head exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray head did not start"
                time.sleep(1)
        yield f"127.0.0.1:{port}", temp
    finally:
        terminate_tree(head)  # the head with its raylet, GCS and workers
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_simulation_runs_its_sites_on_an_existing_ray_cluster(
    ray_head: tuple[str, Path], tmp_path: Path, tiny_model_dir: Path
) -> None:
    address, temp = ray_head
    out = tmp_path / "run"
    proc = fedshield_cli(
        "simulate", "--out", str(out), "--sites", "2", "--ray-address", address,
        "--client-cpus", "1", "--run-config",
        f"model.source='{tiny_model_dir}' model.max-length=16 num-server-rounds=1 "
        "data.train-examples=60 data.test-examples=20 min-train-sites=1 "
        "secagg.enabled=false",
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert set(summary["rounds"][0]["sites"]) == {"site-0", "site-1"}
    # the simulation's Ray driver joined the head given (its log is in that
    # cluster's session folder), not a private Ray of its own
    drivers = list((temp / "session_latest" / "logs").glob("python-core-driver-*"))
    assert drivers, sorted(p.name for p in (temp / "session_latest" / "logs").iterdir())


def test_an_address_where_no_head_answers_is_refused_before_the_run(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = fedshield_cli(
        "simulate", "--out", str(tmp_path / "run"), "--ray-address",
        f"127.0.0.1:{port}", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "No Ray head answers" in proc.stdout and "ray start --head" in proc.stdout
    assert not (tmp_path / "run" / "summary.json").exists()
