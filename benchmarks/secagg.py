"""Round time of secure aggregation: ours vs plain aggregation vs Flower's SecAgg+.

Run (a few minutes on 2 CPU cores; writes benchmarks/results/secagg.json):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/secagg.py

Smoke run (seconds of work, plus Ray start-up per configuration; 3 sites is the
fewest a threshold of 0.5 allows, one actor imports the ClientApp once):

    PYTHONPATH=. .venv/bin/python benchmarks/secagg.py --sites 3 --size 10 \\
        --rounds 1 --actors 1 --out /tmp/secagg.json

Workload: each of n sites (``--sites``, default 10 and 20) returns a fixed update of
``--size`` float32 values (default 1,000,000) drawn uniformly from [-0.5, 0.5]; the
server aggregates it ``--rounds`` times (default 4). All three run on Flower's
simulation engine (``run_simulation``, Ray, one CPU per ClientApp; ``--actors``
caps the actors, default one per CPU core) in this process:

- ``plain``: our Message-API round without secure aggregation (train messages out,
  updates back, weighted mean).
- ``ours``: the same round with :mod:`server.secagg` and :mod:`client.secagg_mod`
  (SecAgg+, every site shares with every other, the default threshold 0.67, 24-bit
  quantization, ChaCha20 masks from 256-bit seeds).
- ``ours_ddp``: ``ours`` with distributed client-level DP on: each site adds its
  Skellam noise share (:mod:`privacy.distributed_dp`) before masking, and the
  modulus gets the headroom the noise needs (clip norm 1000 and z = 0.001 here, so
  that the decoded mean stays comparable with the plain one).
- ``flower``: Flower 1.41's legacy ``DefaultWorkflow(fit_workflow=
  SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=0.5))`` with
  ``secaggplus_mod`` and a NumPyClient (its defaults: 22-bit quantization, 2^32
  modulus, masks from ``np.random.RandomState`` with 32-bit seeds).

A round is timed at the server from sending the first message to holding the
aggregate (Flower: ``configure_fit`` to ``aggregate_fit`` of a timing FedAvg). We
report the median over rounds after the first (the first pays Ray actor start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fedshield.client.secagg_mod import secagg_mod  # noqa: E402
from fedshield.models import arrays_to_state, state_to_arrays  # noqa: E402
from fedshield.privacy.client_dp import ClientDPConfig  # noqa: E402
from fedshield.privacy.secagg import SecAggConfig  # noqa: E402
from fedshield.server.rounds import collect_replies  # noqa: E402
from fedshield.server.secagg import prepare_setup, secure_sum  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "secagg.json"
SETTINGS: dict[str, Any] = {}  # filled by main() before each simulation
TIMES: list[float] = []


def _update(node_id: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(node_id % (2**32))
    return rng.uniform(-0.5, 0.5, size).astype(np.float32)


DDP_RUN_CONFIG = {  # what the sites read from the run config in ``ours_ddp``
    "client-dp.enabled": True,
    "client-dp.clip-norm": 1000.0,
    "client-dp.noise-multiplier": 0.001,
    "secagg.quantization-bits": 24,
}


def _train(msg: Message, context: Context) -> Message:
    # numpy and flwr only: a Ray actor running the plain ClientApp need not import
    # torch or our models package (seconds per actor)
    size = int(str(msg.content.config_records["config"]["size"]))
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(_update(context.node_id, size))}),
            "metrics": MetricRecord({"num-examples": 100}),
            "site": ConfigRecord({"name": f"node-{context.node_id}"}),
        }
    )
    return Message(content=content, reply_to=msg)


plain_client = ClientApp()
plain_client.train()(_train)
ours_client = ClientApp(mods=[secagg_mod])
ours_client.train()(_train)


def _ddp_run_config(msg: Message, context: Context, call_next: Any) -> Message:
    """The run config a ``flwr run`` with client-level DP on would give the sites
    (``run_simulation`` takes none)."""
    with_dp = Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config=context.node_config,
        state=context.state,  # the same state: the mod's round lives on in it
        run_config={**context.run_config, **DDP_RUN_CONFIG},
    )
    return call_next(msg, with_dp)


ddp_client = ClientApp(mods=[_ddp_run_config, secagg_mod])
ddp_client.train()(_train)

message_server = ServerApp()


def _wait_for_nodes(grid: Grid, n: int) -> list[int]:
    while len(nodes := list(grid.get_node_ids())) < n:
        time.sleep(0.2)
    return sorted(nodes)[:n]


@message_server.main()
def _message_main(grid: Grid, context: Context) -> None:
    n, size, rounds, mode = (SETTINGS[k] for k in ("sites", "size", "rounds", "mode"))
    nodes = _wait_for_nodes(grid, n)
    template = {"w": torch.zeros(size)}
    cfg = SecAggConfig(enabled=True, num_shares=1.0)  # the default threshold
    client_dp = ClientDPConfig.from_run_config(
        DDP_RUN_CONFIG if mode == "ours_ddp" else {}
    )

    def collect(msgs: list[Message]) -> list[Message]:
        return collect_replies(grid, msgs, timeout=600, progress=lambda d, t: None)

    for rnd in range(1, rounds + 1):
        start = time.perf_counter()
        content = RecordDict(
            {
                "arrays": state_to_arrays(template),
                "config": ConfigRecord({"server-round": rnd, "size": size}),
            }
        )
        messages = [
            Message(content=content, dst_node_id=node, message_type="train")
            for node in nodes
        ]
        if mode in ("ours", "ours_ddp"):
            messages, params = prepare_setup(
                messages, cfg=cfg, global_state=template, client_dp=client_dp
            )
            replies = collect(messages)
            result = secure_sum(
                setup_replies=replies,
                params=params,
                node_ids=nodes,
                collect=collect,
                group=str(rnd),
                template=template,
                noised=client_dp.enabled,
            )
            mean = result.total["w"] / len(result.survivors)
        else:
            replies = collect(messages)
            deltas = [
                arrays_to_state(r.content.array_records["arrays"])["w"] for r in replies
            ]
            mean = torch.stack(deltas).mean(0)
        TIMES.append(time.perf_counter() - start)
        expected = np.mean([_update(node, size) for node in nodes], axis=0)
        SETTINGS["max_error"] = max(
            SETTINGS.get("max_error", 0.0),
            float(np.abs(mean.numpy() - expected).max()),
        )


def _flower_apps() -> tuple[Any, Any]:
    """Flower's legacy SecAgg+ server and client (imported only when measured)."""
    import flwr.client as fl_client
    import flwr.common as fl_common
    import flwr.server as fl_server
    from flwr.client.mod import secaggplus_mod
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    class BenchClient(fl_client.NumPyClient):
        def __init__(self, node_id: int) -> None:
            self.node_id = node_id

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            return [_update(self.node_id, SETTINGS["size"])], 100, {}

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            SETTINGS["t0"] = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            out = super().aggregate_fit(server_round, results, failures)
            TIMES.append(time.perf_counter() - SETTINGS["t0"])
            return out

    client = fl_client.ClientApp(
        client_fn=lambda context: BenchClient(context.node_id).to_client(),
        mods=[secaggplus_mod],
    )
    server = fl_server.ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        n, size = SETTINGS["sites"], SETTINGS["size"]
        strategy = TimedFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=fl_common.ndarrays_to_parameters(
                [np.zeros(size, dtype=np.float32)]
            ),
        )
        legacy = fl_server.LegacyContext(
            context=context,
            config=fl_server.ServerConfig(num_rounds=SETTINGS["rounds"]),
            strategy=strategy,
        )
        workflow = DefaultWorkflow(
            fit_workflow=SecAggPlusWorkflow(
                num_shares=1.0, reconstruction_threshold=0.5
            )
        )
        workflow(grid, legacy)

    return server, client


def measure(
    mode: str, *, sites: int, size: int, rounds: int, actors: int | None = None
) -> dict[str, Any]:
    from flwr.simulation import run_simulation

    SETTINGS.clear()
    SETTINGS.update(sites=sites, size=size, rounds=rounds, mode=mode)
    TIMES.clear()
    if mode == "flower":
        server, client = _flower_apps()
    else:
        server = message_server
        client = {"plain": plain_client, "ours": ours_client}.get(mode, ddp_client)
    backend: dict[str, Any] = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    if actors is not None:  # Ray gets this many CPUs: one actor each
        backend["init_args"] = {"num_cpus": actors}
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=sites,
        backend_config=backend,
    )
    if len(TIMES) != rounds:
        raise RuntimeError(f"{mode}: {len(TIMES)} of {rounds} rounds finished")
    timed = TIMES[1:] if rounds > 1 else TIMES
    return {
        "round_seconds": [round(t, 4) for t in TIMES],
        "median_seconds": statistics.median(timed),
        "max_abs_error": SETTINGS.get("max_error"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--actors", type=int, default=None, help="Ray actors (default: one per core)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for n in args.sites:
        for mode in ("plain", "ours", "ours_ddp", "flower"):
            print(f"n={n} {mode} ...", flush=True)
            results.setdefault(f"n{n}", {})[mode] = measure(
                mode, sites=n, size=args.size, rounds=args.rounds, actors=args.actors
            )
            print(f"  {results[f'n{n}'][mode]}", flush=True)
    headline: dict[str, float] = {}
    for n in args.sites:
        r = results[f"n{n}"]
        ours = r["ours"]["median_seconds"]
        headline[f"ours_vs_flower_n{n}"] = round(
            ours / r["flower"]["median_seconds"], 3
        )
        headline[f"ours_vs_plain_n{n}"] = round(ours / r["plain"]["median_seconds"], 3)
        headline[f"ours_ddp_vs_flower_n{n}"] = round(
            r["ours_ddp"]["median_seconds"] / r["flower"]["median_seconds"], 3
        )
    doc = {
        "headline": headline,
        "config": {
            "sites": args.sites,
            "size": args.size,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "actors": args.actors,  # None: Ray's default, one per CPU it detects
            "ours": "SecAgg+ complete graph, threshold 0.67, 24-bit, ChaCha20 masks, "
            "consistency check",
            "flower": "SecAggPlusWorkflow(num_shares=1.0, "
            "reconstruction_threshold=0.5)",
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(headline, indent=2))


if __name__ == "__main__":
    main()
