"""Sample-level DP-SGD for one site: configuration, Opacus setup, noise calibration.

Mechanism (Abadi et al. 2016). Each step draws a Poisson-sampled batch B (every
record of the site's n records is included independently with rate q = 1/ceil(n/b)),
clips each per-sample gradient to L2 norm C, adds Gaussian noise and averages::

    g = (sum_{i in B} g_i * min(1, C / ||g_i||) + N(0, sigma^2 C^2 I)) / (q n)

Sensitivity of the clipped sum to adding/removing one record is C, so each step is a
subsampled Gaussian mechanism with noise multiplier sigma. Each round's steps are one
*release* ``(sigma, q, steps)``; the site's ledger (:mod:`privacy.ledger`) keeps
every release, and :mod:`privacy.budget` composes them with an Opacus accountant
(RDP or PRV) over every round of every run on the same data, never resetting per
round or per run.

What epsilon means here: (epsilon, delta)-DP at the *record* level under the
add/remove-one-record neighbouring relation on the site's dataset, with delta the
site's (node config ``delta``, else ``dp.delta``). It does not protect the site's
participation as a whole; client-level DP (:mod:`privacy.client_dp`) does that.

Per-sample gradient modes (chosen by measurement, see benchmarks/dp_overhead.py):
book-keeping clipping (ours, one backward pass, norms via the ghost-norm identity)
for LoRA and full fine-tuning alike; Opacus' ghost clipping where a model has
trainable layers book-keeping does not support. Materialising per-sample gradients
(Opacus hooks) costs 5.4x the non-DP step for full fine-tuning of MiniLM.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch.utils.data import DataLoader

from fedshield.common.config import ConfigError
from fedshield.common.run_config import check_fields, default, read_fields
from fedshield.models.config import FinetuneMode

__all__ = [
    "AccountantKind",
    "DPConfig",
    "GradSampleMode",
    "PrivateTraining",
    "accountant_to_json",
    "default_grad_sample_mode",
    "make_private",
    "make_non_private",
    "noise_for_target_epsilon",
]

logger = logging.getLogger(__name__)


class AccountantKind(StrEnum):
    """Opacus accountants: Renyi DP (Mironov 2017) or PRV (Gopi et al. 2021)."""

    RDP = "rdp"
    PRV = "prv"


class GradSampleMode(StrEnum):
    """How per-sample gradients (or just their norms) are obtained."""

    HOOKS = "hooks"  # Opacus: materialise per-sample gradients
    GHOST = "ghost"  # Opacus: ghost-norm + second backward (fast gradient clipping)
    BOOKKEEPING = "bookkeeping"  # ours: ghost-norm + one backward (Bu et al. 2023)


@dataclass(frozen=True)
class DPConfig:
    """Sample-level DP-SGD settings of a run.

    Attributes:
        enabled: train with DP-SGD; False trains without privacy (for comparison).
        noise_multiplier: sigma; used when ``target_epsilon`` is 0.
        target_epsilon: if > 0, each site derives sigma so that the whole planned
            run (all rounds x local epochs) reaches exactly this epsilon at ``delta``.
        max_grad_norm: per-sample clipping norm C.
        delta: the delta of every reported (epsilon, delta).
        accountant: which Opacus accountant composes the steps.
    """

    enabled: bool = default("dp.enabled")
    noise_multiplier: float = default("dp.noise-multiplier")
    target_epsilon: float = default("dp.target-epsilon")
    max_grad_norm: float = default("dp.max-grad-norm")
    delta: float = default("dp.delta")
    accountant: AccountantKind = AccountantKind(default("dp.accountant"))

    KEYS: ClassVar[dict[str, str]] = {
        "enabled": "dp.enabled",
        "noise_multiplier": "dp.noise-multiplier",
        "target_epsilon": "dp.target-epsilon",
        "max_grad_norm": "dp.max-grad-norm",
        "delta": "dp.delta",
        "accountant": "dp.accountant",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)
        if self.enabled and self.target_epsilon == 0 and not self.noise_multiplier > 0:
            raise ConfigError(
                f"`dp.noise-multiplier` must be > 0. Found {self.noise_multiplier}. "
                "Set a positive noise multiplier, a dp.target-epsilon, or "
                "dp.enabled=false for a non-private comparison run."
            )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> DPConfig:
        return cls(
            **read_fields(run_config, cls.KEYS, convert={"accountant": AccountantKind})
        )


def default_grad_sample_mode(finetune: FinetuneMode) -> GradSampleMode:
    """The mode measured best for each trainable set (``make bench-dp``).

    ``benchmarks/dp_overhead.py``, MiniLM, batch 32, length 64, 2 CPU cores, step time
    over the non-DP step (quiet machine): full fine-tuning: book-keeping 1.57x,
    Opacus ghost 2.00x, Opacus hooks 5.39x; LoRA r=8: hooks 1.02x, book-keeping
    1.06x (a tie within run-to-run noise; an earlier run had 0.94x vs 1.01x), ghost
    1.58x. Book-keeping uses the least memory (full 1.28x, LoRA 1.01x vs hooks
    1.08x), so it is the default for both. Models with trainable layers it does not
    support fall back to Opacus ghost clipping in :func:`make_private`.
    """
    del finetune  # the same mode wins for both trainable sets
    return GradSampleMode.BOOKKEEPING


def noise_for_target_epsilon(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantKind,
) -> float:
    """Smallest sigma whose ``steps`` subsampled-Gaussian steps at rate
    ``sample_rate`` stay within ``(target_epsilon, delta)`` (Opacus' search)."""
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant.value,
        )
    )


def accountant_to_json(accountant: IAccountant) -> str:
    """Serialise an accountant's full history: ``[[sigma, q, steps], ...]``."""
    return json.dumps(
        {
            "mechanism": accountant.mechanism(),
            "history": [[float(s), float(q), int(n)] for s, q, n in accountant.history],
        }
    )


@dataclass(frozen=True)
class PrivateTraining:
    """What the training loop needs, identical in shape for every mode.

    Loop: ``optimizer.zero_grad(); loss = backward(logits, labels);
    optimizer.step()``; ``backward`` returns the batch's mean loss as a float.
    An empty batch (possible under Poisson sampling): ``empty_backward()`` then
    ``optimizer.step()``, which adds the noise and records the step. ``close()``
    detaches every hook from the caller's module.
    """

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: DataLoader
    backward: Callable[[torch.Tensor, torch.Tensor], float]
    mode: GradSampleMode | None
    noise_multiplier: float
    sample_rate: float
    # An empty Poisson batch still takes a DP step (noise only); None = skip it.
    empty_backward: Callable[[], None] | None = None
    close: Callable[[], None] = lambda: None


def _mean_ce_backward(logits: torch.Tensor, labels: torch.Tensor) -> float:
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return float(loss.detach())


def make_non_private(
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
) -> PrivateTraining:
    """The same interface without privacy (shuffled batches, no clipping/noise)."""
    return PrivateTraining(
        module=module,
        optimizer=optimizer,
        data_loader=data_loader,
        backward=_mean_ce_backward,
        mode=None,
        noise_multiplier=0.0,
        sample_rate=1.0 / max(len(data_loader), 1),
    )


def _make_private_bookkeeping(
    *,
    engine: PrivacyEngine,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
) -> PrivateTraining:
    from .bookkeeping import make_private_bookkeeping

    bk = make_private_bookkeeping(
        engine=engine,
        module=module,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
    )

    def bk_backward(logits: torch.Tensor, labels: torch.Tensor) -> float:
        per_sample = F.cross_entropy(logits, labels, reduction="none")  # (b,)
        bk.backward(per_sample)
        return float(per_sample.detach().mean())

    return PrivateTraining(
        module=bk.module,
        optimizer=bk.optimizer,
        data_loader=bk.data_loader,
        backward=bk_backward,
        mode=GradSampleMode.BOOKKEEPING,
        noise_multiplier=noise_multiplier,
        sample_rate=1.0 / len(data_loader),
        empty_backward=lambda: bk.backward(torch.zeros(0)),
        close=bk.remove,
    )


def make_private(
    *,
    engine: PrivacyEngine,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    mode: GradSampleMode,
) -> PrivateTraining:
    """Wrap model, optimizer and loader for DP-SGD with Poisson sampling.

    ``engine`` carries the site's accountant (restored from earlier rounds); every
    optimizer step is recorded in it.
    """
    if not noise_multiplier > 0:
        raise ConfigError(f"noise multiplier must be > 0. Found {noise_multiplier}.")
    if mode is GradSampleMode.BOOKKEEPING:
        from .bookkeeping import UnsupportedTrainableModuleError

        try:
            return _make_private_bookkeeping(
                engine=engine,
                module=module,
                optimizer=optimizer,
                data_loader=data_loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
            )
        except UnsupportedTrainableModuleError as err:
            logger.warning(
                "Book-keeping clipping does not support this model (%s); using "
                "Opacus ghost clipping instead (same per-sample clipping, slower).",
                err,
            )
            mode = GradSampleMode.GHOST
    common: dict[str, Any] = dict(
        module=module,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=mode.value,
    )
    if mode is GradSampleMode.GHOST:
        criterion = torch.nn.CrossEntropyLoss(reduction="mean")
        p_module, p_opt, p_crit, p_loader = engine.make_private(
            criterion=criterion, **common
        )

        def ghost_backward(logits: torch.Tensor, labels: torch.Tensor) -> float:
            loss = p_crit(logits, labels)
            loss.backward()
            return float(loss.detach())

        backward = ghost_backward
    else:
        p_module, p_opt, p_loader = engine.make_private(**common)
        backward = _mean_ce_backward
    return PrivateTraining(
        module=p_module,
        optimizer=p_opt,
        data_loader=p_loader,
        backward=backward,
        mode=mode,
        noise_multiplier=noise_multiplier,
        sample_rate=1.0 / len(data_loader),
        close=p_module.remove_hooks,
    )
