"""One DP-SGD training of the tiny BERT with white-box gradient canaries, the
noise actually added optionally weakened (``weaken.py``): what
``tests/privacy/test_gradient_canaries.py`` audits and what
``benchmarks/canary_power.py`` measures. Test and benchmark code only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from weaken import weakened

from fedshield.client.trainer import TrainConfig, train_site
from fedshield.models import FinetuneMode, ModelConfig, load_model
from fedshield.models.texts import LabeledTexts, tokenize
from fedshield.privacy.audit import (
    GradientCanaries,
    gradient_canary_scores,
    make_gradient_canaries,
    trainable_sizes,
    trainable_vector,
)
from fedshield.privacy.budget import Release, plan_release
from fedshield.privacy.dp import DPConfig, GradSampleMode


@dataclass(frozen=True)
class CanaryRound:
    scores: np.ndarray  # one per canary
    canaries: GradientCanaries
    planned: Release  # what the accountant planned (and recorded)
    recorded: Release
    trainable: int


def canary_round(
    model_dir: Path,
    *,
    finetune: FinetuneMode = FinetuneMode.FULL,
    noise_factor: float = 1.0,
    records: int = 200,
    batch: int = 20,
    epochs: int = 10,
    canaries: int = 2000,
    claim: float = 2.0,
    seed: int = 5,
) -> CanaryRound:
    """Train at the sigma that makes one round epsilon = ``claim`` (delta 1e-5),
    ``canaries`` gradient canaries in (at most half the trainable values), the
    noise actually added times ``noise_factor``; return the canaries' scores."""
    dp = DPConfig(target_epsilon=claim, max_grad_norm=1.0, delta=1e-5)
    planned = plan_release(
        dp,
        num_examples=records,
        batch_size=batch,
        local_epochs=epochs,
        planned_rounds=1,
        server_round=1,
        delta=1e-5,
        history=[],
    )
    loaded = load_model(ModelConfig(source=str(model_dir), finetune=finetune))
    texts = tuple(
        f"review {i} was {'great' if i % 2 else 'awful'}" for i in range(records)
    )
    dataset = tokenize(
        LabeledTexts(texts=texts, labels=tuple(i % 2 for i in range(records))),
        loaded.tokenizer,
        max_length=16,
    )
    initial = trainable_vector(loaded.model)
    planted = make_gradient_canaries(
        count=min(canaries, initial.size // 2),
        seed=11,
        site_index=0,
        num_sites=1,
        clip_norm=1.0,
    )
    with weakened(noise_factor):
        result = train_site(
            model=loaded.model,
            dataset=dataset,
            train_cfg=TrainConfig(batch_size=batch, local_epochs=epochs),
            dp_cfg=dp,
            mode=GradSampleMode.BOOKKEEPING,
            noise_multiplier=planned.noise_multiplier,
            seed=seed,
            canaries=planted,
        )
    scores = gradient_canary_scores(
        initial,
        trainable_vector(loaded.model),
        planted.coordinates(initial.size),
        sizes=trainable_sizes(loaded.model),
    )
    return CanaryRound(
        scores=scores,
        canaries=planted,
        planned=planned,
        recorded=result.release,
        trainable=int(initial.size),
    )
