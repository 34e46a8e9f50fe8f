"""How much of the DP gap a frozen encoder leaves: DP-SGD on the head alone.

Run (about 3 minutes on 2 CPU cores; writes benchmarks/results/utility_probe.json):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/utility_probe.py

``benchmarks/utility.py`` finds federated DP-SGD at epsilon 8 about 0.05 below the
centralized non-private model, with LoRA adapters and the head trained. This
probe asks what the encoder's adaptation is worth under DP. It embeds the same
snippets once with the frozen packaged MiniLM (mean pooling, 64 tokens: the
default model's features), then trains only the linear head
(384 x 2 + 2 weights), on the same sites as ``fedshield sweep --sites 4``
(Dirichlet(1), seed 42, 3 rounds of one local epoch, batch 32, AdamW at
``train.head-lr`` 0.03, clipping norm 1, each site's sigma calibrated by
``privacy.dp.noise_for_target_epsilon`` as ``dp.target-epsilon`` does), in
plain torch: per-record gradients of a linear layer are exact and cheap.
Differences from the real run: no PII injection or scrubbing, no secure
aggregation (it changes no number here), the head's dropout off.

Headline, each the mean over :data:`SEEDS` seeds (noise and sampling) with its
sample std: ``head_central_nondp`` (one site holding everything, no DP),
``head_fed_nondp``, ``head_fed_eps1``, ``head_fed_eps3``, ``head_fed_eps8``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
SEEDS = 5
ROUNDS = 3
BATCH = 32
LR = 0.03
CLIP = 1.0
DELTA = 1e-5


def _embed(texts: tuple[str, ...]) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    from fedshield.models.loading import packaged_model_path

    path = packaged_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = tokenizer(
                list(texts[i : i + 64]),
                truncation=True,
                max_length=64,
                padding=True,
                return_tensors="pt",
            )
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def _train(
    x: torch.Tensor,
    y: torch.Tensor,
    sites: list[list[int]],
    epsilon: float | None,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """FedAvg (example-weighted) of the sites' head after ROUNDS rounds of one
    local epoch of (DP-)SGD with AdamW; the sigmas used."""
    from fedshield.privacy.dp import AccountantKind, noise_for_target_epsilon

    gen = torch.Generator().manual_seed(seed)
    classes = int(y.max()) + 1
    w, b = torch.zeros(x.shape[1], classes), torch.zeros(classes)
    sigmas = []
    for _ in range(ROUNDS):
        updates = []
        for idx in sites:
            part = torch.tensor(idx)
            n = len(part)
            q = 1 / math.ceil(n / BATCH)
            steps = int(1 / q)  # Opacus' Poisson sampler: int(1/q) steps an epoch
            sigma = 0.0
            if epsilon is not None:
                sigma = noise_for_target_epsilon(
                    target_epsilon=epsilon,
                    delta=DELTA,
                    sample_rate=q,
                    steps=steps * ROUNDS,
                    accountant=AccountantKind.RDP,
                )
                sigmas.append(sigma)
            lw, lb = w.clone().requires_grad_(), b.clone().requires_grad_()
            opt = torch.optim.AdamW([lw, lb], lr=LR, weight_decay=0.0)
            for _ in range(steps):
                chosen = part[torch.rand(n, generator=gen) < q]
                xs, ys = x[chosen], y[chosen]
                probs = torch.softmax(xs @ lw.detach() + lb.detach(), dim=1)
                dlogits = probs - torch.nn.functional.one_hot(ys, classes).float()
                gw = xs[:, :, None] * dlogits[:, None, :]  # per-record gradients
                if epsilon is None:
                    size = max(len(chosen), 1)
                    lw.grad, lb.grad = gw.sum(0) / size, dlogits.sum(0) / size
                else:  # clip each record to CLIP, add N(0, (sigma CLIP)^2), / B
                    norms = (gw.square().sum((1, 2)) + dlogits.square().sum(1)).sqrt()
                    factor = (CLIP / (norms + 1e-6)).clamp(max=1.0)
                    noise_w = torch.randn(lw.shape, generator=gen) * sigma * CLIP
                    noise_b = torch.randn(lb.shape, generator=gen) * sigma * CLIP
                    lw.grad = ((gw * factor[:, None, None]).sum(0) + noise_w) / BATCH
                    lb.grad = ((dlogits * factor[:, None]).sum(0) + noise_b) / BATCH
                opt.step()
            updates.append((lw.detach(), lb.detach(), n))
        total = sum(n for *_, n in updates)
        w = sum(uw * n for uw, _, n in updates) / total  # type: ignore[assignment]
        b = sum(ub * n for _, ub, n in updates) / total  # type: ignore[assignment]
    return w, b, sigmas


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/utility_probe.json"
    )
    p.add_argument("--seeds", type=int, default=SEEDS)
    args = p.parse_args()
    from fedshield.simulations.scenario import Scenario

    start = time.perf_counter()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    scenario = Scenario.from_run_config({})
    split = scenario.data.split()
    train_parts, _ = scenario.partitions(4)
    x, y = _embed(split.train.texts), torch.tensor(split.train.labels)
    xt, yt = _embed(split.test.texts), torch.tensor(split.test.labels)
    runs: dict[str, Any] = {}
    settings: list[tuple[str, list[list[int]], float | None]] = [
        ("head_central_nondp", [list(range(len(y)))], None),
        ("head_fed_nondp", [list(p) for p in train_parts], None),
        *[
            (f"head_fed_eps{e:g}", [list(p) for p in train_parts], e)
            for e in (1.0, 3.0, 8.0)
        ],
    ]
    for name, sites, epsilon in settings:
        accs, sigmas = [], []
        for seed in range(args.seeds):
            w, b, used = _train(x, y, sites, epsilon, seed)
            accs.append(float(((xt @ w + b).argmax(1) == yt).float().mean()))
            sigmas += used
        runs[name] = {
            "accuracy_mean": round(statistics.mean(accs), 4),
            "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0,
            "accuracies": accs,
            "sigma_range": [min(sigmas), max(sigmas)] if sigmas else None,
        }
        print(
            f"{name}: {runs[name]['accuracy_mean']:.4f} ± {runs[name]['accuracy_std']}"
        )
    result = {
        "headline": {k: v["accuracy_mean"] for k, v in runs.items()},
        "runs": runs,
        "setup": {
            "sites": 4,
            "rounds": ROUNDS,
            "batch": BATCH,
            "head_lr": LR,
            "clip": CLIP,
            "delta": DELTA,
            "seeds": args.seeds,
            "train_examples": len(y),
            "test_examples": len(yt),
            "machine": f"{platform.machine()}, {platform.platform()}",
            "wall_s": round(time.perf_counter() - start, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
