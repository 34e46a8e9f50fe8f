"""Local training at one site: DP-SGD (or plain SGD for comparison) for E epochs.

The round's release ``(sigma, q, steps)`` is planned before training (and checked
against the site's budget by the caller); training returns the release its
accountant actually recorded, which the caller compares with the plan before the
update may leave. Runs on the site's GPU when it has one, else on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from fedshield.common.config import ConfigError
from fedshield.common.device import forward_precision, pick_device
from fedshield.common.run_config import check_fields, default, read_fields
from fedshield.models import is_head_parameter
from fedshield.models.embeddings import input_embedding, logits_of
from fedshield.models.lm import TokenizedRecords
from fedshield.models.texts import TokenizedTexts, batch_inputs
from fedshield.privacy.adversarial import (
    AdversarialConfig,
    AdversarialMethod,
    attack_deltas,
    fgm_in_parts,
    objective,
)
from fedshield.privacy.audit.gradient_canaries import CanaryInjector, GradientCanaries
from fedshield.privacy.budget import Release
from fedshield.privacy.dp import (
    DPConfig,
    GradSampleMode,
    PerSampleLoss,
    PrivateTraining,
    classification_loss,
    make_non_private,
    make_private,
)

__all__ = ["TrainConfig", "TrainResult", "adversarial_backward", "train_site"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation settings (AdamW) of every site.

    Two learning rates: ``lr`` for the encoder's trainable weights (LoRA adapters or
    the whole encoder) and ``head_lr`` for the task head. Under DP-SGD the noise on
    tens of thousands of encoder coordinates perturbs the features the head reads,
    so the encoder moves slowly while the randomly initialised head moves fast.
    Measured (one site, 1,000 snippets, one epoch, sigma 0.8): encoder = head =
    2e-3: 0.56 accuracy; encoder 2e-4, head 5e-2: 0.63; the default demo (3 rounds,
    4 sites, encoder 2e-4, head 3e-2) reaches 0.70.
    """

    local_epochs: int = default("train.local-epochs")
    batch_size: int = default("train.batch-size")
    lr: float = default("train.lr")
    head_lr: float = default("train.head-lr")  # 0 = same as lr
    weight_decay: float = default("train.weight-decay")

    KEYS: ClassVar[dict[str, str]] = {
        "local_epochs": "train.local-epochs",
        "batch_size": "train.batch-size",
        "lr": "train.lr",
        "head_lr": "train.head-lr",
        "weight_decay": "train.weight-decay",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> TrainConfig:
        return cls(**read_fields(run_config, cls.KEYS))


@dataclass(frozen=True)
class TrainResult:
    """What one site's round produced (besides the updated parameters)."""

    num_examples: int
    mean_loss: float
    release: Release  # what the accountant recorded (sigma = 0 without DP)

    @property
    def steps(self) -> int:
        return self.release.steps


def train_site(
    *,
    model: torch.nn.Module,
    dataset: TokenizedTexts | TokenizedRecords,
    train_cfg: TrainConfig,
    dp_cfg: DPConfig,
    mode: GradSampleMode,
    noise_multiplier: float,
    seed: int,
    device: torch.device | None = None,
    canaries: GradientCanaries | None = None,
    per_sample_loss: PerSampleLoss = classification_loss,
    adversarial: AdversarialConfig | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``dataset`` with DP-SGD at ``noise_multiplier``
    (ignored without DP); return metrics and the release this round made.

    ``canaries``: white-box audit canaries (simulation only), sampled into each
    step like records (:class:`~fedshield.privacy.audit.CanaryInjector`).
    ``per_sample_loss``: each record's loss, the task's
    (:func:`fedshield.models.tasks.per_sample_loss`). ``adversarial``: train on
    each record's adversarial objective (:mod:`fedshield.privacy.adversarial`),
    clipped per record like the clean loss, priced the same."""
    device = device or pick_device()
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=train_cfg.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=dataset.collate,
    )
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"params": [p for n, p in named if not is_head_parameter(n)]},
        {
            "params": [p for n, p in named if is_head_parameter(n)],
            "lr": train_cfg.head_lr or train_cfg.lr,
        },
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=train_cfg.lr,
        weight_decay=train_cfg.weight_decay,
    )
    engine: PrivacyEngine | None = None
    if dp_cfg.enabled:
        engine = PrivacyEngine(accountant=dp_cfg.accountant.value)  # this round only
        private: PrivateTraining = make_private(
            engine=engine,
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=dp_cfg.max_grad_norm,
            mode=mode,
            per_sample_loss=per_sample_loss,
            several_calls=adversarial is not None and adversarial.enabled,
        )
    else:
        private = make_non_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            per_sample_loss=per_sample_loss,
        )

    injector = _canary_injector(canaries, model, private, seed)
    # Opacus computes per-sample norms in the forward's dtype: a bf16 norm rounded
    # down would let a record exceed C. Book-keeping clips from float32 copies.
    bk_or_none = private.mode in (GradSampleMode.BOOKKEEPING, None)
    precision = forward_precision(device) if bk_or_none else contextlib.nullcontext()
    total_loss, steps, loss_batches = 0.0, 0, 0
    attack_generator = torch.Generator().manual_seed(seed ^ 0xAD5)  # random starts
    for _ in range(train_cfg.local_epochs):
        for batch in private.data_loader:
            inputs, labels = batch_inputs(batch, device)
            private.optimizer.zero_grad(set_to_none=True)
            records = labels.shape[0]  # labels: (b,) or, causal LM, (b, t)
            if records == 0:  # an empty Poisson batch
                _empty_step(private, injector)
                steps += 1
                continue
            if adversarial is not None and adversarial.enabled:
                loss = adversarial_backward(
                    private,
                    model,
                    inputs,
                    labels,
                    per_sample_loss=per_sample_loss,
                    cfg=adversarial,
                    params=[p for _, p in named],
                    generator=attack_generator,
                    precision=precision,
                )
            else:
                with precision:  # bf16 autocast on a GPU under book-keeping only
                    logits = private.module(**inputs).logits  # (b, labels)/(b, t, V)
                loss = private.backward(logits, labels)
            if injector is not None:  # after clipping, before the noise
                injector.add(records)
            private.optimizer.step()
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"Training loss became {loss} at step {steps + 1}. Lower train.lr "
                    "or check the site's data; the round's update is not sent."
                )
            total_loss += loss
            loss_batches += 1
            steps += 1
    private.close()
    return TrainResult(
        num_examples=len(dataset),
        mean_loss=total_loss / max(loss_batches, 1),
        release=_recorded_release(engine, private, steps),
    )


def adversarial_backward(
    private: PrivateTraining,
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    per_sample_loss: PerSampleLoss,
    cfg: AdversarialConfig,
    params: list[torch.nn.Parameter],
    generator: torch.Generator,
    precision: contextlib.AbstractContextManager[Any],
) -> float:
    """One step's backward on each record's adversarial objective: the attack's
    inner passes (parameters frozen, no per-sample capture), then the objective's
    1 + K model calls, clipped per record in one backward. FGM with a clean part
    takes its direction from that clean part's own backward where the mode can
    clip several backward passes as one (book-keeping, no DP): one pass fewer."""
    embedding = input_embedding(model)
    logits = logits_of(private.module, inputs, embedding)

    def loss_of(delta: torch.Tensor | None) -> torch.Tensor:
        return per_sample_loss(logits(delta), labels)

    with torch.no_grad():
        like = embedding(inputs["input_ids"])
    mask = inputs["attention_mask"]
    fgm_mixed = cfg.method is AdversarialMethod.FGM and cfg.mix < 1.0
    if fgm_mixed and private.backward_parts is not None:

        def precise_loss_of(delta: torch.Tensor | None) -> torch.Tensor:
            with precision:  # the forward only; each backward runs outside it
                return loss_of(delta)

        with private.backward_parts() as backward_part:
            per_record = fgm_in_parts(precise_loss_of, like, mask, cfg, backward_part)
        return float(per_record.mean())
    with precision:
        with private.attack_context():
            deltas = attack_deltas(
                loss_of, like, mask, cfg, generator=generator, params=params
            )
        per_record = objective(loss_of, deltas, cfg.mix)
    return private.backward_losses(per_record)


def _recorded_release(
    engine: PrivacyEngine | None, private: PrivateTraining, steps: int
) -> Release:
    """The round's release as the accountant saw it (one (sigma, q) per round)."""
    if engine is None:
        return Release(0.0, private.sample_rate, steps)
    history = engine.accountant.history  # [(sigma, q, steps), ...], merged runs
    params = {(float(s), float(q)) for s, q, _ in history}
    if len(params) != 1:
        raise RuntimeError(
            f"The round's accountant recorded {history}; expected one (sigma, q)."
        )
    sigma, q = params.pop()
    return Release(sigma, q, sum(int(n) for _, _, n in history))


def _empty_step(
    private: PrivateTraining, injector: CanaryInjector | None = None
) -> None:
    """DP-SGD on an empty Poisson batch: noise sigma C on a zero clipped sum,
    applied and accounted like any step, in every mode (HF models cannot forward
    B = 0, so the zero sum is set, not computed). Accounting a step that applied
    no noise would make the update reveal which steps had members."""
    private.empty_backward()
    if injector is not None:  # canaries are sampled like records, here too
        injector.add(0)
    private.optimizer.step()


def _canary_injector(
    canaries: GradientCanaries | None,
    model: torch.nn.Module,
    private: PrivateTraining,
    seed: int,
) -> CanaryInjector | None:
    """The injector of ``canaries`` into this round's steps, or None. Opacus'
    hooks mode clips per-sample gradients inside ``step()``, after any gradient
    we could add, so it cannot take them."""
    if canaries is None:
        return None
    if private.mode is GradSampleMode.HOOKS:
        raise ConfigError(
            'audit.canary-kind="gradient" needs book-keeping or Opacus ghost '
            "clipping; this training uses Opacus' hooks mode (the model's layers, "
            "or adversarial training under ghost clipping, chose it), whose "
            "clipping runs inside the optimizer step, after the canaries would be "
            "added. Train with the default mode or plant record canaries."
        )
    return CanaryInjector(
        canaries,
        model,
        sample_rate=private.sample_rate,
        generator=torch.Generator().manual_seed(seed ^ 0x9C),
        per_record_mean=private.mode is None,  # without DP: a batch mean
    )
