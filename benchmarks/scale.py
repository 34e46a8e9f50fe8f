"""How far a simulation scales: 1,000 simulated sites, 20 sampled per round.

Run (about 10 minutes on 2 CPU cores; writes benchmarks/results/scale.json):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/scale.py

Smoke run (50 sites, 5 per round, 2 rounds): ``--quick --out /tmp/scale.json``.

Both simulations run in the same invocation, one after the other, on Flower's
simulation engine (Ray, the same CPUs per ClientApp), with the same tiny random
BERT (2 layers, hidden 32, ``fedshield.models.write_tiny_bert``) and LoRA, the same
10,000 packaged snippets split iid among the sites (10 each), the same central
test set of 1,000 snippets evaluated after every round, and the same 20 sites
sampled per round:

- **ours**: ``fedshield simulate --sites 1000`` with ``fraction-train=0.02`` and
  everything else the run config's defaults: DP-SGD at every site, secure
  aggregation (SecAgg+ over the round's 20 sites), PII scrubbing, each site's
  signed ledger and release policy.
- **flower**: Flower's plain FedAvg (``flwr.serverapp.strategy.FedAvg``,
  ``fraction_train=0.02``) with a plain ClientApp: one local epoch of AdamW on the
  site's records, no DP, no secure aggregation, no scrubbing
  (``run_simulation``, in its own process). Like the ClientApps of Flower's
  examples, it builds its model and tokenizer from the model folder in every
  call (``build_model``); ours serves each call a private copy of the model its
  worker process built first (``load_model``), which is part of what is
  measured.

A round is timed at the server from sampling the sites to holding the new global
model, the central evaluation after it left out on both sides (ours:
``rounds[].seconds`` of summary.json, secure aggregation's four extra stages
included; Flower: a FedAvg that records when ``configure_train`` starts and
``aggregate_train`` ends). ``*_round_s`` is the median
over the rounds after the first, which pays Ray's and the ClientApp's start-up.
Memory: the process tree of each simulation (the command, its SuperLink, Ray's
processes and actors) is sampled every 0.5 s; ``peak_rss_gb`` is the peak of the
sum of the processes' resident sets (shared pages counted once per process, so an
upper bound), ``peak_pss_gb`` the same with shared pages split among sharers.

Headline: ``sites``, ``sampled_per_round``, ``ours_round_s``, ``flower_round_s``,
``ours_vs_flower_round``, ``peak_rss_gb`` (ours), ``flower_peak_rss_gb``. Targets:
``sites >= 1000``, ``peak_rss_gb <= 6``, ``ours_vs_flower_round <= 1.5``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRAIN_EXAMPLES = 10_000
TEST_EXAMPLES = 1000
MAX_LENGTH = 32
BATCH = 8
SEED = 42


class TreeMemory:
    """Peak summed RSS and PSS of a process and all its descendants."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._every = every
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            rss = pss = 0
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for proc in procs:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(self._every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _measured(cmd: list[str], log: Path) -> tuple[int, TreeMemory, float]:
    start = time.perf_counter()
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        memory = TreeMemory(proc.pid)
        code = proc.wait()
    memory.stop()
    return code, memory, time.perf_counter() - start


def _ours(work: Path, tiny: Path, sites: int, per_round: int, rounds: int) -> dict:
    out = work / "fedshield"
    overrides = (
        f"model.source='{tiny}' model.max-length={MAX_LENGTH} "
        f"train.batch-size={BATCH} data.train-examples={TRAIN_EXAMPLES} "
        f"data.test-examples={TEST_EXAMPLES} data.partition='iid' "
        f"fraction-train={per_round / sites!r} num-server-rounds={rounds} seed={SEED}"
    )
    cmd = [sys.executable, "-m", "fedshield.cli", "simulate", "--out", str(out)]
    cmd += ["--sites", str(sites), "--run-config", overrides]
    code, memory, wall = _measured(cmd, work / "fedshield.log")
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        summary = {}
    if code != 0 or summary.get("status") != "completed":
        raise SystemExit(f"ours did not complete (exit {code}); see {out}/flwr.log")
    seconds = [r["seconds"] for r in summary["rounds"]]
    sampled = [r["sampled"] for r in summary["rounds"]]
    return {
        "round_seconds": seconds,
        "sites_per_round": sampled,
        "accuracy": summary["rounds"][-1]["accuracy"],
        "peak_rss_gb": memory.peak_rss / 2**30,
        "peak_pss_gb": memory.peak_pss / 2**30,
        "wall_s": wall,
        "command": " ".join(cmd),
    }


def _flower(work: Path, tiny: Path, sites: int, per_round: int, rounds: int) -> dict:
    times = work / "flower_rounds.json"
    cmd = [sys.executable, __file__, "--flower-child", str(tiny), str(sites)]
    cmd += [str(per_round), str(rounds), str(times)]
    env_code, memory, wall = _measured(cmd, work / "flower.log")
    if env_code != 0 or not times.exists():
        raise SystemExit(
            f"Flower's run failed (exit {env_code}); see {work}/flower.log"
        )
    timed = json.loads(times.read_text())
    return {
        "round_seconds": timed["round_seconds"],
        "sites_per_round": timed["sites_per_round"],
        "accuracy": timed["accuracy"],
        "peak_rss_gb": memory.peak_rss / 2**30,
        "peak_pss_gb": memory.peak_pss / 2**30,
        "wall_s": wall,
    }


def _flower_child(tiny: str, sites: int, per_round: int, rounds: int, out: str) -> None:
    """Flower's plain FedAvg simulation of the same size (run in its own process)."""
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation
    from torch.utils.data import DataLoader

    from fedshield.models import ModelConfig, load_model
    from fedshield.models.evaluate import batch_inputs, evaluate_model
    from fedshield.models.loading import build_model
    from fedshield.models.state import load_trainable_state, trainable_state
    from fedshield.models.texts import tokenize
    from fedshield.simulations.datasets import default_split
    from fedshield.simulations.partition import PartitionScheme, partition_indices

    config = ModelConfig(source=tiny, max_length=MAX_LENGTH)
    split = default_split(
        seed=SEED, train_examples=TRAIN_EXAMPLES, test_examples=TEST_EXAMPLES
    )
    parts = partition_indices(
        split.train.labels, num_sites=sites, scheme=PartitionScheme.IID, seed=SEED
    )
    cpu = torch.device("cpu")

    def train(msg: Message, context: Context) -> Message:
        loaded = build_model(config)  # a ClientApp as Flower's examples write it
        model = loaded.model
        load_trainable_state(model, msg.content["arrays"].to_torch_state_dict())
        part = split.train.subset(parts[int(context.node_config["partition-id"])])
        data = tokenize(part, loaded.tokenizer, max_length=MAX_LENGTH)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        model.train()
        for batch in DataLoader(
            data, batch_size=BATCH, shuffle=True, collate_fn=data.collate
        ):
            inputs, labels = batch_inputs(batch, cpu)
            loss = torch.nn.functional.cross_entropy(model(**inputs).logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        content = RecordDict(
            {
                "arrays": ArrayRecord(trainable_state(model)),
                "metrics": MetricRecord({"num-examples": len(data)}),
            }
        )
        return Message(content=content, reply_to=msg)

    client = ClientApp()
    client.train()(train)
    starts: list[float] = []
    ends: list[float] = []
    sampled: list[int] = []

    class TimedFedAvg(FedAvg):
        """Times each round as ours is timed: from configure_train's start to the
        aggregate (central evaluation and checkpointing outside it)."""

        def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
            starts.append(time.perf_counter())
            messages = list(super().configure_train(server_round, arrays, config, grid))
            sampled.append(len(messages))
            return messages

        def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
            result = super().aggregate_train(server_round, replies)
            ends.append(time.perf_counter())
            return result

    server = ServerApp()
    result: dict[str, Any] = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        loaded = load_model(config)
        test = tokenize(split.test, loaded.tokenizer, max_length=MAX_LENGTH)

        def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            load_trainable_state(loaded.model, arrays.to_torch_state_dict())
            acc = evaluate_model(loaded.model, test, batch_size=128, device=cpu)
            result["accuracy"] = acc.accuracy
            return MetricRecord({"accuracy": acc.accuracy})

        strategy = TimedFedAvg(
            fraction_train=per_round / sites,
            fraction_evaluate=0.0,
            min_train_nodes=per_round,
            min_available_nodes=sites,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(trainable_state(loaded.model)),
            num_rounds=rounds,
            evaluate_fn=central,
        )

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=sites,
        backend_config={"client_resources": {"num_cpus": 2, "num_gpus": 0.0}},
    )
    seconds = [b - a for a, b in zip(starts, ends, strict=True)]
    Path(out).write_text(
        json.dumps(
            {
                "round_seconds": seconds,
                "sites_per_round": sampled,
                "accuracy": result.get("accuracy"),
            }
        )
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--flower-child":
        tiny, sites, per_round, rounds, out = sys.argv[2:7]
        _flower_child(tiny, int(sites), int(per_round), int(rounds), out)
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="50 sites, 5 a round, 2 rounds")
    p.add_argument("--sites", type=int, default=1000)
    p.add_argument("--per-round", type=int, default=20)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scale.json")
    p.add_argument("--work", type=Path, default=None, help="keep the runs here")
    args = p.parse_args()
    if args.quick:
        args.sites, args.per_round, args.rounds = 50, 5, 2
    from fedshield.models import write_tiny_bert

    work = args.work or Path(f"/tmp/fedshield-scale-{time.time_ns()}")
    work.mkdir(parents=True, exist_ok=False)
    tiny = write_tiny_bert(work / "tiny-bert")
    print(f"ours: {args.sites} sites, {args.per_round} a round ...", flush=True)
    ours = _ours(work, tiny, args.sites, args.per_round, args.rounds)
    print(
        f"Flower FedAvg: {args.sites} sites, {args.per_round} a round ...", flush=True
    )
    flower = _flower(work, tiny, args.sites, args.per_round, args.rounds)

    def later(seconds: list[float]) -> float:
        return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)

    ours_round, flower_round = (
        later(ours["round_seconds"]),
        later(flower["round_seconds"]),
    )
    headline = {
        "sites": args.sites,
        "sampled_per_round": min(ours["sites_per_round"]),
        "ours_round_s": round(ours_round, 2),
        "flower_round_s": round(flower_round, 2),
        "ours_vs_flower_round": round(ours_round / flower_round, 3),
        "peak_rss_gb": round(ours["peak_rss_gb"], 3),
        "peak_pss_gb": round(ours["peak_pss_gb"], 3),
        "flower_peak_rss_gb": round(flower["peak_rss_gb"], 3),
        "targets": {
            "sites": ">= 1000",
            "peak_rss_gb": "<= 6",
            "ours_vs_flower_round": "<= 1.5",
        },
    }
    result = {
        "headline": headline,
        "setup": {
            "quick": args.quick,
            "rounds": args.rounds,
            "model": "tiny random BERT (write_tiny_bert), LoRA, max length 32",
            "data": f"{TRAIN_EXAMPLES} packaged snippets iid, {TEST_EXAMPLES} test",
            "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
            "work": str(work),
        },
        "ours": ours,
        "flower": flower,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(headline, indent=2))


if __name__ == "__main__":
    main()
