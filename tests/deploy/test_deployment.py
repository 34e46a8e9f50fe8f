"""A deployed federation with real processes on loopback, driven only by the
operator commands of docs/deployment.md: ``federation init``, ``superlink
start``, ``federation register``, ``site start``, ``federation run``.

TLS with the federation's own CA, SuperNode authentication (only registered keys
connect), a tiny BERT, DP-SGD and secure aggregation. Every process runs in its
own process group with a deadline and is stopped by its group id.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedshield.common.sealing import PASSPHRASE_ENV, is_sealed
from fedshield.deploy.federation import init_federation, load_federation, register
from fedshield.privacy.ledger import KEY_NAME as LEDGER_KEY
from fedshield.privacy.ledger import LedgerReader
from fedshield.simulations.superlink import free_port, venv_script
from tests.subprocess_env import REPO, subprocess_env

pytestmark = pytest.mark.slow

WORDS = ("good great fine nice lovely", "bad awful poor terrible boring")


def _data(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        for _ in range(n):
            label = rng.randint(0, 1)
            words = WORDS[1 - label].split()
            out.writerow([" ".join(rng.choice(words) for _ in range(6)), label])
    return path


class Processes:
    """Processes started in their own groups, all stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, *args: str, env_extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        env = {**subprocess_env(), **(env_extra or {})}
        # as an operator runs `.venv/bin/fedshield` without activating the venv
        # (and as CI runs the suite): this environment's scripts are not on PATH
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(
            p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedshield.cli", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def print_logs(self, tail: int = 4000) -> None:
        """Each process's log tail, shown by pytest when a test fails."""
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace")
            print(f"----- {log.name} (last {tail} characters) -----\n{text[-tail:]}")

    def stop_all(self) -> None:
        for proc in self.started:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    continue
            try:  # whatever the group left behind
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
        procs.print_logs()


def _wait_https(port: int, ca: Path, proc: subprocess.Popen[bytes]) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the SuperLink exited"
        try:
            with opener.open(f"https://localhost:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError("the SuperLink did not answer over TLS within 90 s")


def test_a_tls_node_authenticated_federation_trains_and_refuses_strangers(
    tmp_path: Path, tiny_model_dir: Path, processes: Processes
) -> None:
    port = free_port()
    fed_dir = tmp_path / "fed"
    init_federation(fed_dir, "clinics", ["localhost"], port, ["a", "b", "c", "d"])
    fed = load_federation(fed_dir)
    superlink = processes.start(
        "superlink", "superlink", "start", str(fed_dir), "--bind", "127.0.0.1"
    )
    _wait_https(port, fed.ca_cert, superlink)
    flwr = str(venv_script("flwr"))
    for site in ("a", "b", "c"):  # d is never registered
        register(fed, site, flwr=flwr)

    sites = {}
    for i, site in enumerate(("a", "b", "c", "d")):
        kit = fed_dir / "sites" / site
        data = _data(tmp_path / f"{site}.csv", 48, seed=i)
        node_config = (
            f"data-path='{data}' site-name='{site}' state-dir='{tmp_path / site}' "
            "max-epsilon=20"
        )
        sites[site] = processes.start(
            f"site-{site}",
            "site",
            "start",
            "--superlink",
            f"localhost:{port}",
            "--ca",
            str(kit / "ca.pem"),
            "--key",
            str(kit / "supernode_key"),
            "--node-config",
            node_config,
            "--port",
            str(free_port()),
            # site a seals its secrets: the passphrase reaches its ClientApp
            env_extra={PASSPHRASE_ENV: "site a's passphrase"} if site == "a" else None,
        )

    # the stranger is refused, and its operator is told why and what to do
    assert sites["d"].wait(timeout=180) == 2
    told = processes.log("site-d")
    assert "refused this site's key" in told and "federation register" in told

    test = _data(tmp_path / "test.csv", 40, seed=9)
    out = tmp_path / "run"
    run = processes.start(
        "run",
        "federation",
        "run",
        str(fed_dir),
        "--run-config",
        f"out-dir='{out}' data.test-path='{test}' model.source='{tiny_model_dir}' "
        "model.max-length=16 num-server-rounds=2 round-timeout=240 "
        "dp.target-epsilon=8",
    )
    assert run.wait(timeout=600) == 0, processes.log("run")[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert len(summary["rounds"]) == 2
    assert set(summary["rounds"][-1]["sites"]) == {"a", "b", "c"}
    for site in ("a", "b", "c"):  # each site's ledger: every entry intact
        with LedgerReader(tmp_path / site) as ledger:
            report = ledger.verify()
        assert report.ok and report.entries >= 2, report.problems
    # the coordinator signed its checkpoints with the federation's own key
    assert (out / "checkpoint.sig.json").is_file()
    assert stat.S_IMODE(fed.checkpoint_key.stat().st_mode) == 0o600
    assert is_sealed((tmp_path / "a" / LEDGER_KEY).read_bytes())
    assert not is_sealed((tmp_path / "b" / LEDGER_KEY).read_bytes())
    # nothing went over plain HTTP: the SuperLink served TLS only
    assert "Uvicorn running on https://" in processes.log("superlink")

    # A coordinator ships its own ClientApp in the bundle: fedshield's id and
    # version, but components naming code of its own. The sites run their
    # installed fedshield ClientApp; the bundle's code never runs at any site.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    marker = tmp_path / "coordinator-code-ran"
    pyproject = (
        (REPO / "pyproject.toml")
        .read_text()
        .replace(
            'clientapp = "fedshield.simulations.apps:clientapp"',
            'clientapp = "evil:app"',
        )
    )
    assert 'clientapp = "evil:app"' in pyproject
    (bundle / "pyproject.toml").write_text(pyproject)
    (bundle / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from flwr.clientapp import ClientApp\napp = ClientApp()\n"
    )
    evil_out = tmp_path / "evil-run"
    overrides = (
        f"out-dir='{evil_out}' data.test-path='{test}' model.source='{tiny_model_dir}' "
        "model.max-length=16 num-server-rounds=1 round-timeout=240"
    )
    env = {**subprocess_env(), "FLWR_HOME": str(fed.flwr_home)}
    shipped = subprocess.run(
        [flwr, "run", str(bundle), fed.name, "--stream", "--run-config", overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    evil_summary = json.loads((evil_out / "summary.json").read_text())
    assert evil_summary["status"] == "completed", shipped.stdout[-3000:]
    assert set(evil_summary["rounds"][-1]["sites"]) == {"a", "b", "c"}
    assert not marker.exists()
