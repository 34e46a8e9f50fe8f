"""A deployed federation with real processes on loopback, driven only by the
operator commands of docs/deployment.md: ``federation init``, ``superlink
start``, ``federation register``, ``site start``, ``federation run``.

TLS with the federation's own CA, SuperNode authentication (only registered keys
connect), a tiny BERT, DP-SGD and secure aggregation; a site killed mid-round, the
coordinator's host killed mid-run and resumed, and bundles the sites must not
trust. Every process runs in its own process group with a deadline and is
stopped by its group id. One federation for all of it: each start of a
SuperLink, SuperNode or run costs tens of seconds on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedshield.common.sealing import PASSPHRASE_ENV, is_sealed
from fedshield.deploy.federation import (
    init_federation,
    load_federation,
    register,
    wait_for_superlink,
)
from fedshield.deploy.site import site_start_args
from fedshield.deploy.trusted_clientapp import installed_version
from fedshield.privacy.ledger import KEY_NAME as LEDGER_KEY
from fedshield.privacy.ledger import LedgerReader
from fedshield.simulations.process_tree import descendants, is_alive
from fedshield.simulations.superlink import free_port, venv_script
from tests.subprocess_env import REPO, subprocess_env
from tests.toy_data import write_reviews

pytestmark = pytest.mark.slow

APP_LINE = 'clientapp = "fedshield.simulations.apps:clientapp"'

WORDS = ("good great fine nice lovely", "bad awful poor terrible boring")


def _data(path: Path, n: int, seed: int) -> Path:
    return write_reviews(path, n, seed, {"0": WORDS[1], "1": WORDS[0]})


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


def _superlink(
    processes: Processes, fed_dir: Path, name: str = "superlink"
) -> subprocess.Popen[bytes]:
    fed = load_federation(fed_dir)
    proc = processes.start(
        name, "superlink", "start", str(fed_dir), "--bind", "127.0.0.1"
    )
    wait_for_superlink(fed, proc)
    return proc


def _site(
    processes: Processes,
    tmp_path: Path,
    fed_dir: Path,
    site: str,
    seed: int,
    policy: str = "",
    env_extra: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``fedshield site start`` for ``site`` of the federation in ``fed_dir``, on
    48 records of its own; ``policy``: more node config."""
    data = _data(tmp_path / f"{site}.csv", 48, seed=seed)
    node_config = (
        f"data-path='{data}' site-name='{site}' state-dir='{tmp_path / site}' "
        f"max-epsilon=20 {policy}"
    )
    kit = fed_dir / "sites" / site
    fed = load_federation(fed_dir)
    return processes.start(
        f"site-{site}",
        *site_start_args(fed.address, kit, node_config, free_port()),
        env_extra=env_extra,
    )


def _crash(proc: subprocess.Popen[bytes]) -> None:
    """A machine losing power: ``proc`` and every process below it, SIGKILL."""
    tree = descendants(proc.pid)
    proc.kill()
    for child in tree:
        if is_alive(child):
            os.kill(child.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _rounds(out: Path) -> list[dict[str, object]]:
    try:
        return list(json.loads((out / "summary.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return []


def _wait_rounds(out: Path, n: int, run: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while len(_rounds(out)) < n:
        assert run.poll() is None, f"the run ended before round {n}"
        assert time.monotonic() < deadline, f"round {n} did not finish in 300 s"
        time.sleep(0.5)


def _bundle(
    tmp_path: Path, name: str, edit: tuple[str, str], files: dict[str, str]
) -> Path:
    """An app bundle the coordinator builds itself: fedshield's pyproject.toml
    with ``edit`` (old, new) made, and ``files`` beside it."""
    bundle = tmp_path / name
    bundle.mkdir()
    text = (REPO / "pyproject.toml").read_text()
    assert edit[0] in text
    (bundle / "pyproject.toml").write_text(text.replace(edit[0], edit[1], 1))
    for file, content in files.items():
        (bundle / file).write_text(content)
    return bundle


def _flwr_run(bundle: Path, fed_dir: Path, overrides: str) -> str:
    """Plain ``flwr run`` of ``bundle`` (not ``federation run``, which always
    ships fedshield's own app); returns its output."""
    fed = load_federation(fed_dir)
    done = subprocess.run(
        [str(venv_script("flwr")), "run", str(bundle), fed.name, "--stream"]
        + ["--run-config", overrides],
        cwd=bundle.parent,
        env={**subprocess_env(), "FLWR_HOME": str(fed.flwr_home)},
        capture_output=True,
        text=True,
        timeout=400,
    )
    return done.stdout + done.stderr


def test_a_federations_life_strangers_a_lost_site_a_restart_and_foreign_bundles(
    tmp_path: Path, tiny_model_dir: Path, processes: Processes
) -> None:
    """One federation's life, on loopback, through the operator commands only.

    TLS with the federation's CA, SuperNode authentication: stranger d is refused
    and told why. Sites a, b, c train with DP-SGD and secure aggregation; site a
    seals its secrets. Site c's machine dies in round 2: the round completes
    without it (secure aggregation's dropout path) and names it. The
    coordinator's host dies in round 3: a new SuperLink on the same database,
    and ``resume`` finishes the run on the two sites left, a 2-site federation.
    Each site's ledger keeps one signed chain. Then the coordinator ships
    bundles of its own: code under fedshield's name never runs at a site, and a
    bundle of another version is refused by every site.
    """
    port = free_port()
    fed_dir = tmp_path / "fed"
    init_federation(fed_dir, "wards", ["localhost"], port, ["a", "b", "c", "d"])
    fed = load_federation(fed_dir)
    superlink = _superlink(processes, fed_dir)
    for site in ("a", "b", "c"):  # d is never registered
        register(fed, site, flwr=str(venv_script("flwr")))
    sites = {
        site: _site(
            processes,
            tmp_path,
            fed_dir,
            site,
            i,
            # sums of two sites are acceptable to these sites (no colluder among
            # them): what a 2-site federation needs, decided in each node config
            "secagg-max-colluders=0",
            # site a seals its secrets: the passphrase reaches its ClientApps
            env_extra={PASSPHRASE_ENV: "site a's passphrase"} if site == "a" else None,
        )
        for i, site in enumerate(("a", "b", "c", "d"))
    }
    # the stranger is refused, and its operator is told why and what to do
    assert sites["d"].wait(timeout=180) == 2
    told = processes.log("site-d")
    assert "refused this site's key" in told and "federation register" in told

    test = _data(tmp_path / "test.csv", 40, seed=9)
    out = tmp_path / "run"
    model = (
        f"data.test-path='{test}' model.source='{tiny_model_dir}' model.max-length=16"
    )
    run_config = (
        f"out-dir='{out}' {model} num-server-rounds=3 round-timeout=60 "
        "dp.target-epsilon=8 secagg.threshold=0.5"  # 2 of 3: one site may drop
    )
    run = processes.start(
        "run", "federation", "run", str(fed_dir), "--run-config", run_config
    )
    _wait_rounds(out, 1, run)
    assert set(_rounds(out)[0]["sites"]) == {"a", "b", "c"}  # type: ignore[call-overload]
    _crash(sites["c"])
    _wait_rounds(out, 2, run)
    second = _rounds(out)[1]
    assert set(second["sites"]) == {"a", "b"}, second  # type: ignore[call-overload]
    # the dead site's failure names it: not its node id, nor the SuperLink's
    assert [f["site"] for f in second["failures"]] == ["c"], second  # type: ignore[index]

    _crash(superlink)  # the ServerApp and its SuperExec with it
    assert run.wait(timeout=120) != 0  # the operator is told the run did not finish
    assert len(_rounds(out)) == 2
    _superlink(processes, fed_dir, "superlink-again")  # same database: same nodes
    resumed = processes.start(
        "resumed",
        "federation",
        "run",
        str(fed_dir),
        "--run-config",
        f"{run_config} resume=true",
    )
    assert resumed.wait(timeout=400) == 0, processes.log("resumed")[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert set(summary["rounds"][2]["sites"]) == {"a", "b"}
    for site in ("a", "b", "c"):
        with LedgerReader(tmp_path / site) as ledger:
            report = ledger.verify()
            entries = [r.entry for r in ledger.entries()]
        assert report.ok, report.problems
        rounds = [e.server_round for e in entries]
        # a site's round 3 may have been trained before the coordinator died, and
        # again after the restart: both releases are charged, never one forgotten
        expected = [1] if site == "c" else [1, 2, 3]
        assert sorted(set(rounds)) == expected and rounds == sorted(rounds), rounds
        assert len({e.run_id for e in entries}) == 1  # one run, across the restart
        epsilons = [e.epsilon for e in entries]  # composing: each one larger
        assert all(a < b for a, b in zip(epsilons, epsilons[1:], strict=False))
    # the coordinator signed its checkpoints with the federation's own key
    assert (out / "checkpoint.sig.json").is_file()
    assert stat.S_IMODE(fed.checkpoint_key.stat().st_mode) == 0o600
    assert is_sealed((tmp_path / "a" / LEDGER_KEY).read_bytes())
    assert not is_sealed((tmp_path / "b" / LEDGER_KEY).read_bytes())
    # nothing went over plain HTTP: the SuperLink served TLS only
    assert "Uvicorn running on https://" in processes.log("superlink-again")

    # The coordinator ships its own ClientApp: fedshield's id and version, but
    # components naming code of its own. The sites run their installed fedshield
    # ClientApp; the bundle's code never runs at any site.
    marker = tmp_path / "coordinator-code-ran"
    evil = _bundle(
        tmp_path,
        "evil-bundle",
        (APP_LINE, 'clientapp = "evil:app"'),
        {
            "evil.py": "from pathlib import Path\n"
            f"Path({str(marker)!r}).write_text('ran')\n"
            "from flwr.clientapp import ClientApp\napp = ClientApp()\n"
        },
    )
    evil_out = tmp_path / "evil-run"
    said = _flwr_run(evil, fed_dir, f"out-dir='{evil_out}' {model} num-server-rounds=1")
    evil_summary = json.loads((evil_out / "summary.json").read_text())
    assert evil_summary["status"] == "completed", said[-3000:]
    assert set(evil_summary["rounds"][-1]["sites"]) == {"a", "b"}
    assert not marker.exists()

    # A bundle of another fedshield version: every site refuses to run anything,
    # and the run stops with the sites' errors
    other = _bundle(
        tmp_path,
        "other-version",
        (f'version = "{installed_version()}"', 'version = "9.9.9"'),
        {},
    )
    other_out = tmp_path / "other-run"
    said = _flwr_run(
        other, fed_dir, f"out-dir='{other_out}' {model} num-server-rounds=1"
    )
    other_summary = json.loads((other_out / "summary.json").read_text())
    assert other_summary["status"] == "aborted", said[-3000:]
    # the coordinator learns why from each site's error
    assert other_summary["error"].count("Refused: nothing was run") == 2, said
    for site in ("a", "b"):
        assert "Refused: nothing was run" in processes.log(f"site-{site}")
