"""From nothing to a finished TLS + node-authenticated federated run, timed.

Runs the command sequence of docs/deployment.md, as an operator types it (the
environment's ``fedshield`` script, its bin folder not on PATH), on loopback:

    fedshield federation init FED --name bench --host localhost --port P --site s1 ...
    fedshield superlink start FED --bind 127.0.0.1            (background)
    fedshield federation register FED s1                      (once per site)
    fedshield site start --superlink localhost:P --ca ... --key ... \\
        --node-config "data-path=... site-name=... state-dir=... max-epsilon=..."
                                                              (background, per site)
    fedshield federation run FED --run-config "out-dir=... data.test-path=... ..."

on the packaged model (all-MiniLM-L6-v2) and the packaged Rotten Tomatoes
snippets, split into one CSV per site plus a central test CSV (written before
the clock starts: they stand for data the sites already hold). Five distinct
commands. Writes benchmarks/results/deploy.json: each command with its wall
time, the total from the first command to ``federation run`` exiting, and the
run's accuracy. Every process is stopped at the end, by its process tree.

    PYTHONPATH=. .venv/bin/python benchmarks/deploy.py            # 3 sites, 2 rounds
    PYTHONPATH=. .venv/bin/python benchmarks/deploy.py --sites 2 --rounds 1 \\
        --out /tmp/deploy.json                                    # quicker
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedshield.deploy.federation import load_federation, wait_for_superlink
from fedshield.deploy.site import site_start_args
from fedshield.simulations.datasets import default_split
from fedshield.simulations.process_tree import terminate_tree
from fedshield.simulations.superlink import free_port, venv_script

RESULTS = Path(__file__).parent / "results" / "deploy.json"


def _env() -> dict[str, str]:
    """The operator's shell: this environment's scripts are not on PATH."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir
    )
    return env


def _write_csv(path: Path, texts: tuple[str, ...], labels: tuple[int, ...]) -> Path:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        out.writerows(zip(texts, labels, strict=True))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--records", type=int, default=300, help="per site")
    parser.add_argument("--test-records", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="fedshield-deploy-"))
    work.mkdir(parents=True, exist_ok=True)
    names = [f"site{i + 1}" for i in range(args.sites)]
    split = default_split(
        seed=0,
        train_examples=args.sites * args.records,
        test_examples=args.test_records,
    )
    data = {}
    for i, name in enumerate(names):
        part = split.train.subset(list(range(i * args.records, (i + 1) * args.records)))
        data[name] = _write_csv(work / f"{name}.csv", part.texts, part.labels)
    test = _write_csv(work / "test.csv", split.test.texts, split.test.labels)

    fedshield = str(venv_script("fedshield"))
    env = _env()
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    background: list[subprocess.Popen[bytes]] = []
    steps: list[dict[str, Any]] = []
    port = free_port()
    fed_dir = work / "fed"

    def command(label: str, *argv: str) -> list[str]:
        cmd = [fedshield, *argv]
        steps.append({"step": label, "command": shlex.join(["fedshield", *argv])})
        return cmd

    def run(label: str, *argv: str) -> None:
        cmd = command(label, *argv)
        start = time.monotonic()
        with (logs / f"{label}.log").open("wb") as log:
            done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        steps[-1]["seconds"] = round(time.monotonic() - start, 1)
        if done.returncode != 0:
            raise RuntimeError(f"{label} exited {done.returncode}; see {logs}")

    def start(label: str, *argv: str) -> subprocess.Popen[bytes]:
        cmd = command(label, *argv)
        log = (logs / f"{label}.log").open("wb")
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        background.append(proc)
        return proc

    out = work / "run"
    t0 = time.monotonic()
    try:
        run(
            "federation-init",
            "federation",
            "init",
            str(fed_dir),
            "--name",
            "bench",
            "--host",
            "localhost",
            "--port",
            str(port),
            *[arg for name in names for arg in ("--site", name)],
        )
        fed = load_federation(fed_dir)
        started = time.monotonic()
        superlink = start(
            "superlink-start", "superlink", "start", str(fed_dir), "--bind", "127.0.0.1"
        )
        wait_for_superlink(fed, superlink)
        steps[-1]["seconds_to_ready"] = round(time.monotonic() - started, 1)
        for name in names:
            run(f"register-{name}", "federation", "register", str(fed_dir), name)
        for name in names:
            node_config = (
                f"data-path='{data[name]}' site-name='{name}' "
                f"state-dir='{work / 'state' / name}' max-epsilon=10"
            )
            start(
                f"site-start-{name}",
                *site_start_args(
                    fed.address, fed_dir / "sites" / name, node_config, free_port()
                ),
            )
        run_config = (
            f"out-dir='{out}' data.test-path='{test}' "
            f"num-server-rounds={args.rounds} dp.target-epsilon=8"
        )
        run(
            "federation-run",
            "federation",
            "run",
            str(fed_dir),
            "--run-config",
            run_config,
        )
        total = time.monotonic() - t0
    finally:
        for proc in background:
            terminate_tree(proc)
    summary = json.loads((out / "summary.json").read_text())
    final = summary["rounds"][-1]
    result = {
        "headline": {
            "wall_s_from_nothing_to_finished_run": round(total, 1),
            "distinct_commands": 5,
            "commands_typed": len(steps),
            "status": summary["status"],
            "sites": args.sites,
            "rounds": args.rounds,
            "accuracy": final["accuracy"],
            "initial_accuracy": summary["initial"]["accuracy"],
        },
        "setup": {
            "model": "packaged all-MiniLM-L6-v2 (run config defaults: LoRA, DP-SGD, "
            "secure aggregation)",
            "data": f"packaged Rotten Tomatoes snippets, {args.records} per site, "
            f"{args.test_records} central test",
            "transport": "TLS with the federation's CA, SuperNode authentication, "
            "loopback",
            "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
            "round_seconds": [r["seconds"] for r in summary["rounds"]],
        },
        "steps": steps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["headline"], indent=2))


if __name__ == "__main__":
    main()
