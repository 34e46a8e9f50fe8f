"""Sample-level DP-SGD for one site: configuration, Opacus setup, noise calibration.

Mechanism (Abadi et al. 2016). Each step draws a Poisson-sampled batch B (every
record of the site's n records is included independently with rate q = 1/ceil(n/b)),
clips each per-sample gradient to L2 norm C, adds Gaussian noise and averages::

    g = (sum_{i in B} g_i * min(1, C / ||g_i||) + N(0, sigma^2 C^2 I)) / E

with E Opacus' expected batch size. Sensitivity of the clipped sum to adding/removing
one record is C, so each step is a subsampled Gaussian mechanism with noise
multiplier sigma. An epoch is ``int(1 / q)`` steps, as Opacus' sampler counts them
(:func:`privacy.budget.steps_per_epoch`); an empty batch is a step too, noise on a
zero sum, in every mode. The accountant is told the sampler's own rate q (Opacus'
``make_private`` would price ``1 / len(poisson_loader)`` = ``1 / int(1 / q)``, a
larger rate than the sampler draws at when float rounding makes ``int(1 / q)`` =
``ceil(n/b) - 1``). Each round's steps are one
*release* ``(sigma, q, steps)``; the site's ledger (:mod:`privacy.ledger`) keeps
every release, and :mod:`privacy.budget` composes them with an Opacus accountant
(RDP or PRV) over every round of every run on the same data, never resetting per
round or per run.

What epsilon means here: (epsilon, delta)-DP at the *record* level under the
add/remove-one-record neighbouring relation on the site's dataset, with delta the
site's budget's (node config ``delta``, else ``dp.delta``), below 1/n; sigma for a
target epsilon is calibrated at that same delta. It does not protect the site's
participation as a whole; client-level DP (:mod:`privacy.client_dp`) does that.

Per-sample gradient modes (chosen by measurement, see benchmarks/dp_overhead.py):
book-keeping clipping (ours, one backward pass, norms via the ghost-norm identity)
for LoRA and full fine-tuning alike; Opacus' ghost clipping where a model has
trainable layers book-keeping does not support. Materialising per-sample gradients
(Opacus hooks) costs 5.4x the non-DP step for full fine-tuning of MiniLM.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.utils import MAX_SIGMA
from opacus.optimizers import DPOptimizer
from torch.utils.data import DataLoader

from fedshield.common.config import ConfigError
from fedshield.common.run_config import check_fields, default, read_fields
from fedshield.models.config import FinetuneMode
from fedshield.models.tasks import PerSampleLoss, classification_loss

__all__ = [
    "AccountantKind",
    "DPConfig",
    "GradSampleMode",
    "PerSampleCriterion",
    "PerSampleLoss",
    "PrivateTraining",
    "accountant_to_json",
    "classification_loss",
    "default_grad_sample_mode",
    "make_private",
    "make_non_private",
    "noise_for_target_epsilon",
    "rdp_epsilon",
    "rdp_of",
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
        target_epsilon: if > 0, each site derives sigma each round so that its
            data's epsilon (every earlier release on it included) ends the planned
            run at most at this value, at its budget's delta
            (:func:`privacy.budget.plan_release` states the rule).
        max_grad_norm: per-sample clipping norm C.
        delta: the run's delta; a site's node config ``delta`` overrides it for
            that site's budget, its reported epsilon and its calibration.
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


@functools.lru_cache(maxsize=4096)
def _step_rdp(sample_rate: float, sigma: float) -> tuple[float, ...]:
    """The Renyi divergence of one subsampled-Gaussian step at each of
    ``RDPAccountant.DEFAULT_ALPHAS`` (Opacus' ``compute_rdp`` with steps=1).
    Opacus computes ``steps`` steps as this vector times ``steps``, so the cache
    changes no value; it spares the fractional orders' series (about 0.3 s per
    history entry) that every budget check, release and noise search repeats on
    the same (q, sigma)."""
    return tuple(
        compute_rdp(
            q=sample_rate,
            noise_multiplier=sigma,
            steps=1,
            orders=RDPAccountant.DEFAULT_ALPHAS,
        ).tolist()
    )


def rdp_of(sigma: float, sample_rate: float, steps: int) -> Any:
    """Opacus' ``compute_rdp(q, sigma, steps, DEFAULT_ALPHAS)``, one value per
    order, from the cached single step."""
    return np.asarray(_step_rdp(sample_rate, sigma)) * steps


def rdp_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """``RDPAccountant.get_epsilon(delta)`` of an accountant with ``history``
    (``[(sigma, q, steps)]``), the same sum in the same order, cached per step."""
    rdp = sum(rdp_of(*entry) for entry in history)
    eps, _ = get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
    )
    return float(eps)


def noise_for_target_epsilon(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantKind,
    spent: Sequence[tuple[float, float, int]] = (),
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest sigma whose ``steps`` subsampled-Gaussian steps at rate
    ``sample_rate``, composed after the history ``spent`` (``[(sigma, q, steps)]``,
    an Opacus accountant's), stay within ``(target_epsilon, delta)``.

    Opacus' search (``get_noise_multiplier``) with the history prepended: double
    sigma from 20 until ``eps <= target``, then bisect until ``target - eps <
    epsilon_tolerance``; the sigma returned always meets the target. Raises
    ValueError when even sigma = 10^6 does not (the history alone spends it).

    RDP: the history's Renyi divergences do not change during the search, so they
    are summed once (in the accountant's order, so every epsilon is the one
    ``RDPAccountant.get_epsilon`` gives): a site with a long history pays for it
    once per round, not once per candidate sigma.
    """
    if accountant is AccountantKind.RDP:
        orders = RDPAccountant.DEFAULT_ALPHAS
        history_rdp = sum(rdp_of(*release) for release in spent)

        def epsilon(sigma: float) -> float:
            rdp = history_rdp + rdp_of(sigma, sample_rate, steps)
            return float(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])

    else:
        acc = create_accountant(mechanism=accountant.value)

        def epsilon(sigma: float) -> float:
            acc.history = [*spent, (sigma, sample_rate, steps)]
            return float(acc.get_epsilon(delta=delta))

    sigma_low, sigma_high, eps_high = 0.0, 10.0, math.inf
    while eps_high > target_epsilon:
        sigma_high *= 2
        eps_high = epsilon(sigma_high)
        if sigma_high > MAX_SIGMA:
            raise ValueError(
                f"No noise multiplier up to {MAX_SIGMA:g} keeps epsilon <= "
                f"{target_epsilon:g} at delta={delta:g}: the history already "
                "spends it. Raise the target or stop training on this data."
            )
    while target_epsilon - eps_high > epsilon_tolerance:
        sigma = (sigma_low + sigma_high) / 2
        eps = epsilon(sigma)
        if eps < target_epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high


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
    An objective that calls the model several times per step (adversarial
    training) passes its per-record losses (b,) to ``backward_losses`` instead,
    and runs its attack's inner passes inside ``attack_context()`` (no
    per-sample capture; see :mod:`privacy.adversarial.attacks`).
    An empty batch (possible under Poisson sampling; HF models cannot forward
    B = 0): ``empty_backward()`` then ``optimizer.step()``. Under DP that is the
    step DP-SGD takes on an empty batch in every mode, noise sigma C on a zero
    clipped sum, applied and accounted. ``close()`` detaches every hook from the
    caller's module.
    """

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: DataLoader
    backward: Callable[[torch.Tensor, torch.Tensor], float]
    mode: GradSampleMode | None
    noise_multiplier: float
    sample_rate: float
    # leaves a zero gradient (sum) for an empty Poisson batch's step
    empty_backward: Callable[[], None]
    # per-record losses (b,) -> their mean, after the (clipped) backward
    backward_losses: Callable[[torch.Tensor], float]
    close: Callable[[], None] = lambda: None
    attack_context: Callable[[], contextlib.AbstractContextManager[None]] = (
        contextlib.nullcontext
    )
    # ``with backward_parts() as part: part(l1); part(l2)``: the records'
    # objective l1 + l2 in several backward passes, clipped once per record at the
    # end; None where the mode cannot (Opacus' hooks would clip each part as a
    # sample of its own: it concatenates the grad_sample of successive backwards)
    backward_parts: (
        Callable[[], contextlib.AbstractContextManager[Callable[[torch.Tensor], None]]]
        | None
    ) = None


@contextlib.contextmanager
def _summed_parts() -> Iterator[Callable[[torch.Tensor], None]]:
    """Non-private parts: each part's mean backward, accumulated in ``p.grad``."""
    yield lambda part: part.mean().backward()


def _zero_grads(params: Sequence[torch.Tensor]) -> Callable[[], None]:
    """``p.grad = 0`` for each parameter: the clipped sum of no samples, where the
    optimizer reads the sum from ``p.grad`` (Opacus ghost, book-keeping, no DP)."""

    def zero() -> None:
        for p in params:
            p.grad = torch.zeros_like(p)

    return zero


def _no_grad_samples(optimizer: DPOptimizer) -> Callable[[], None]:
    """``p.grad_sample`` of shape (0, *p.shape): Opacus' hooks optimizer clips
    and sums no per-sample gradients (its clip factors are then ``zeros(0)``), so
    its step adds noise to a zero sum."""

    def empty() -> None:
        for p in optimizer.params:
            p.grad_sample = p.new_zeros((0, *p.shape))  # type: ignore[attr-defined]

    return empty


class PerSampleCriterion(torch.nn.Module):
    """A :data:`PerSampleLoss` with the ``reduction`` attribute Opacus' ghost
    clipping sets to ``"none"`` to read the per-record losses (b,)."""

    def __init__(self, per_sample: PerSampleLoss) -> None:
        super().__init__()
        self.per_sample = per_sample
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        losses = self.per_sample(logits, labels)  # (b,)
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()


def _mean_of_losses(per_sample: torch.Tensor) -> float:
    """Backward of the mean of the records' losses (b,) (non-private, Opacus
    hooks: its per-sample gradients of every model call of the step are summed
    per record before clipping)."""
    loss = per_sample.mean()
    loss.backward()
    return float(loss.detach())


def _mean_backward(
    per_sample: PerSampleLoss,
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """Backward of the mean of the records' losses (non-private, Opacus hooks)."""

    def backward(logits: torch.Tensor, labels: torch.Tensor) -> float:
        return _mean_of_losses(per_sample(logits, labels))

    return backward


def _one_call_only(per_sample: torch.Tensor) -> float:
    raise RuntimeError(
        "Opacus' ghost clipping takes one model call per step; an objective that "
        "calls the model several times (adversarial training) needs book-keeping "
        "or Opacus hooks (make_private(several_calls=True) picks hooks)."
    )


def _hooks_paused(module: Any) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """Opacus' GradSampleModule with its hooks off for the block."""

    @contextlib.contextmanager
    def paused() -> Iterator[None]:
        module.disable_hooks()
        try:
            yield
        finally:
            module.enable_hooks()

    return paused


def make_non_private(
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    per_sample_loss: PerSampleLoss = classification_loss,
) -> PrivateTraining:
    """The same interface without privacy (shuffled batches, no clipping/noise)."""
    return PrivateTraining(
        module=module,
        optimizer=optimizer,
        data_loader=data_loader,
        backward=_mean_backward(per_sample_loss),
        mode=None,
        noise_multiplier=0.0,
        sample_rate=1.0 / max(len(data_loader), 1),
        empty_backward=_zero_grads(
            [p for g in optimizer.param_groups for p in g["params"]]
        ),
        backward_losses=_mean_of_losses,
        backward_parts=_summed_parts,
    )


def _make_private_bookkeeping(
    *,
    engine: PrivacyEngine,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    per_sample_loss: PerSampleLoss,
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

    def bk_losses(per_sample: torch.Tensor) -> float:
        bk.backward(per_sample)  # (b,)
        return float(per_sample.detach().mean())

    def bk_backward(logits: torch.Tensor, labels: torch.Tensor) -> float:
        return bk_losses(per_sample_loss(logits, labels))

    return PrivateTraining(
        module=bk.module,
        optimizer=bk.optimizer,
        data_loader=bk.data_loader,
        backward=bk_backward,
        mode=GradSampleMode.BOOKKEEPING,
        noise_multiplier=noise_multiplier,
        sample_rate=1.0 / len(data_loader),
        empty_backward=lambda: bk.backward(torch.zeros(0)),
        backward_losses=bk_losses,
        close=bk.remove,
        backward_parts=bk.backward_parts,
    )


def _ties(module: torch.nn.Module) -> bool:
    """Whether a trainable parameter is registered under two names (tied)."""
    named = [p for _, p in module.named_parameters(remove_duplicate=False)]
    trainable = [id(p) for p in named if p.requires_grad]
    return len(trainable) != len(set(trainable))


def make_private(
    *,
    engine: PrivacyEngine,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    mode: GradSampleMode,
    per_sample_loss: PerSampleLoss = classification_loss,
    several_calls: bool = False,
) -> PrivateTraining:
    """Wrap model, optimizer and loader for DP-SGD with Poisson sampling.

    ``engine`` carries the round's accountant; every optimizer step is recorded in
    it at the sampler's rate ``q = 1 / len(data_loader)``, the rate
    ``DPDataLoader.from_data_loader`` samples at. ``several_calls``: the step's
    objective calls the model more than once (adversarial training), which
    Opacus' ghost mode cannot clip: hooks replace it.
    """
    if not noise_multiplier > 0:
        raise ConfigError(f"noise multiplier must be > 0. Found {noise_multiplier}.")
    if several_calls and mode is GradSampleMode.GHOST:
        logger.warning(
            "Opacus ghost clipping takes one model call per step; adversarial "
            "training calls the model several times: using Opacus hooks instead."
        )
        mode = GradSampleMode.HOOKS
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
                per_sample_loss=per_sample_loss,
            )
        except UnsupportedTrainableModuleError as err:
            # Opacus ghost clipping refuses tied weights only at the first forward
            # ("Parameter tying is not supported"); its hooks mode handles them
            tied_or_several = _ties(module) or several_calls
            mode = GradSampleMode.HOOKS if tied_or_several else GradSampleMode.GHOST
            logger.warning(
                "Book-keeping clipping does not support this model (%s); using "
                "Opacus %s clipping instead (same per-sample clipping, slower).",
                err,
                mode.value,
            )
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
        criterion = PerSampleCriterion(per_sample_loss)
        p_module, p_opt, p_crit, p_loader = engine.make_private(
            criterion=criterion, **common
        )

        def ghost_backward(logits: torch.Tensor, labels: torch.Tensor) -> float:
            loss = p_crit(logits, labels)
            loss.backward()
            return float(loss.detach())

        backward: Callable[[torch.Tensor, torch.Tensor], float] = ghost_backward
        backward_losses: Callable[[torch.Tensor], float] = _one_call_only
        empty_backward = _zero_grads(p_opt.params)  # p.grad holds the clipped sum
        attack_context: Callable[[], contextlib.AbstractContextManager[None]] = (
            contextlib.nullcontext
        )
    else:
        p_module, p_opt, p_loader = engine.make_private(**common)
        backward = _mean_backward(per_sample_loss)
        backward_losses = _mean_of_losses
        empty_backward = _no_grad_samples(p_opt)
        attack_context = _hooks_paused(p_module)
    # Opacus' make_private prices 1 / len(p_loader) = 1 / int(1 / q): for some
    # ceil(n/b) float rounding makes that a rate above the sampler's own q. Price q.
    sample_rate = 1.0 / len(data_loader)
    p_opt.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate))
    return PrivateTraining(
        module=p_module,
        optimizer=p_opt,
        data_loader=p_loader,
        backward=backward,
        mode=mode,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        empty_backward=empty_backward,
        backward_losses=backward_losses,
        close=p_module.remove_hooks,
        attack_context=attack_context,
    )
