"""Does one site's DP-SGD learn, and do its gradient canaries keep their power?
One training (``client.trainer.train_site``, book-keeping clipping) of the
packaged MiniLM on the default split, at the sigma that makes the run epsilon
``--eps`` (delta 1e-5), with gradient canaries in; prints test accuracy, the
majority class's share, the canaries' score SNR per parameter group and the
one-run audit. How the settings of ``benchmarks/audit.py`` were chosen
(docs/audit.md, "Measured").

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/dp_utility.py \\
        --finetune full --n 1000 --batch 64 --epochs 4 --lr 5e-5 --head-lr 0.01

``--noise 0.25`` adds a quarter of the reported noise (``benchmarks/broken_dp``);
``--noise 0`` clips without noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "broken_dp"))


def main() -> None:
    from weaken import weakened

    from fedshield.client.trainer import TrainConfig, train_site
    from fedshield.models import FinetuneMode, ModelConfig, load_model
    from fedshield.models.evaluate import evaluate_model
    from fedshield.models.texts import tokenize
    from fedshield.privacy.audit import (
        AuditConfig,
        audit_guesses,
        gradient_canary_scores,
        make_gradient_canaries,
        trainable_sizes,
        trainable_vector,
    )
    from fedshield.privacy.budget import plan_release
    from fedshield.privacy.dp import DPConfig, GradSampleMode
    from fedshield.simulations.datasets import default_split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--finetune", choices=["full", "lora"], default="full")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--head-lr", type=float, default=0.01)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--canaries", type=int, default=8000)
    p.add_argument("--guess-fraction", type=float, default=0.1)
    p.add_argument("--eps", type=float, default=2.0)
    args = p.parse_args()
    torch.set_num_threads(2)
    split = default_split(seed=0, train_examples=args.n, test_examples=500)
    loaded = load_model(
        ModelConfig(finetune=FinetuneMode(args.finetune), max_length=32)
    )
    train = tokenize(split.train, loaded.tokenizer, max_length=32)
    test = tokenize(split.test, loaded.tokenizer, max_length=32)
    majority = max(np.bincount(split.test.labels)) / len(split.test)
    dp = DPConfig(target_epsilon=args.eps, max_grad_norm=1.0, delta=1e-5)
    planned = plan_release(
        dp,
        num_examples=args.n,
        batch_size=args.batch,
        local_epochs=args.epochs,
        planned_rounds=1,
        server_round=1,
        delta=1e-5,
        history=[],
    )
    model = loaded.model
    initial = trainable_vector(model)
    canaries = make_gradient_canaries(
        count=args.canaries, seed=11, site_index=0, num_sites=1, clip_norm=1.0
    )
    with weakened(args.noise):
        train_site(
            model=model,
            dataset=train,
            train_cfg=TrainConfig(
                batch_size=args.batch,
                local_epochs=args.epochs,
                lr=args.lr,
                head_lr=args.head_lr,
            ),
            dp_cfg=dp,
            mode=GradSampleMode.BOOKKEEPING,
            noise_multiplier=planned.noise_multiplier,
            seed=1,
            canaries=canaries,
        )
    result = evaluate_model(model, test, batch_size=128, device=torch.device("cpu"))
    coords = canaries.coordinates(initial.size)
    scores = gradient_canary_scores(
        initial, trainable_vector(model), coords, sizes=trainable_sizes(model)
    )
    included = np.asarray(canaries.included)
    names = np.concatenate(
        [[n] * p.numel() for n, p in model.named_parameters() if p.requires_grad]
    )

    def snr(mask: np.ndarray) -> float:
        ins, outs = scores[mask & included], scores[mask & ~included]
        return float((ins.mean() - outs.mean()) / outs.std())

    groups = {
        key: round(snr(np.array([key in names[c] for c in coords])), 3)
        for key in ("lora_A", "lora_B", "classifier", "embeddings")
        if sum(key in names[c] for c in coords) > 10
    }
    k_plus, k_minus = AuditConfig(
        canaries=canaries.count, guess_fraction=args.guess_fraction
    ).guesses
    audit = audit_guesses(
        scores, canaries.included, k_plus=k_plus, k_minus=k_minus, delta=1e-5
    )
    print(
        json.dumps(
            {
                **vars(args),
                "sigma": planned.noise_multiplier,
                "accuracy": result.accuracy,
                "majority": majority,
                "snr": round(snr(np.ones(coords.size, dtype=bool)), 3),
                "snr_by_group": groups,
                "correct": audit.correct,
                "guesses": audit.guesses,
                "eps_lb": audit.empirical_epsilon,
                "ceiling": audit.ceiling,
            }
        )
    )


if __name__ == "__main__":
    main()
