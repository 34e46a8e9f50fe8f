"""Book-keeping's Opacus wiring: the DP-SGD step that the per-sample clipping of
:mod:`.hooks` feeds.

DP-SGD step on a Poisson batch B (sampling rate q, expected size E = q N):

    G_i = grad_theta loss_i                           per-sample gradient
    c_i = min(1, C / (||G_i||_2 + 1e-6))              clip factor (Opacus' formula)
    theta <- opt(theta, (sum_i c_i G_i + N(0, sigma^2 C^2 I)) / E)

Each summand c_i G_i has norm <= C, so adding or removing one example moves the sum
by at most C (L2 sensitivity C); the Gaussian mechanism with noise sigma C, composed
over steps with Poisson subsampling, is what the accountant (RDP/PRV) prices.

Measured (benchmarks/dp_overhead.py: all-MiniLM-L6-v2, batch 32, length 64, 2 CPU
threads; step time over non-DP, quiet machine): full fine-tuning BK 1.57x (2.15 s vs
1.37 s) vs Opacus ghost 2.00x and hooks 5.39x, peak step memory 1.28x vs 1.51x;
LoRA r=8 BK 1.06x, hooks 1.02x (a tie within run-to-run noise; memory 1.01x vs
1.08x). Of BK's extra ~0.5-0.8 s per full fine-tuning step,
0.29 s is Opacus' optimizer step (noise for 22M parameters, which Opacus ghost pays
too), ~0.1 s the ghost-norm Gram matrices, the rest hooks and the c-scaling passes.

Causal LM (``benchmarks/dp_overhead.py --model smollm2 --batch 8 --seq-len 128``,
the packaged SmolLM2-135M, random token ids, mean token loss per record, 2 CPU
threads, nothing else running; benchmarks/results/dp_overhead_smollm2.json):
LoRA r=8 on q_proj, v_proj: non-DP 4.45 s, BK 4.47 s (1.00x, memory 1.00x),
Opacus hooks 1.07x, Opacus ghost 1.63x; full fine-tuning (tied embedding frozen):
non-DP 5.83 s, BK 7.25 s (1.24x, memory 1.08x), hooks 1.54x, ghost 1.91x. With
LoRA the forward and the input-gradient backward (through the 49152-way lm_head)
dominate; BK adds only the rank-8 per-sample gradients, ghost a second backward.

Why our own code: Opacus 1.6 has no single-backward book-keeping mode; its ghost
mode always does the second backward. Everything that is not per-sample clipping is
Opacus: Poisson sampling (DPDataLoader), noise N(0, (sigma C)^2) plus division by the
expected batch size (DPOptimizerFastGradientClipping, which expects ``p.grad`` to
hold the clipped SUM), and the engine's accountant step hook, wired exactly as
``PrivacyEngine.make_private(grad_sample_mode="ghost")`` wires them.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader, switch_generator
from opacus.grad_sample import AbstractGradSampleModule
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.validators.module_validator import ModuleValidator
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .hooks import BackwardPart, Clipper, attached_clipper, find_sites

__all__ = ["BookkeepingPrivate", "make_private_bookkeeping"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BookkeepingPrivate:
    """A model, DP optimizer and data loader trained with book-keeping clipping.

    Training loop (one DP-SGD step per Poisson batch)::

        for batch in private.data_loader:
            private.optimizer.zero_grad(set_to_none=True)  # clears summed_grad
            logits = private.module(**inputs).logits
            per_sample_loss = F.cross_entropy(logits, labels, reduction="none")
            private.backward(per_sample_loss)  # p.grad <- sum_i c_i G_i
            private.optimizer.step()  # + N(0, (sigma C)^2), / E, accountant step

    For a causal LM, per_sample_loss is each record's mean token cross-entropy
    over its non-padding targets (labels -100 on padding; pass contiguous (B, T)
    ``position_ids``)::

        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:],
                             ignore_index=-100, reduction="none")  # (B, T-1)
        per_sample_loss = ce.sum(1) / (labels[:, 1:] != -100).sum(1).clamp(min=1)

    ``backward`` overwrites ``p.grad`` with this batch's clipped sum (as Opacus'
    ghost mode does); accumulate physical batches with Opacus' ``BatchMemoryManager``
    (``optimizer.signal_skip_step``), never by calling ``backward`` twice.

    Attributes:
        module: the caller's ``nn.Module`` itself (hooks attached; state_dict keys
            unchanged, no ``_module.`` prefix).
        optimizer: ``DPOptimizerFastGradientClipping`` with the engine's accountant
            step hook attached.
        data_loader: Poisson-sampling ``DPDataLoader`` (or the original loader when
            ``poisson_sampling=False``).
    """

    module: nn.Module
    optimizer: DPOptimizerFastGradientClipping
    data_loader: DataLoader
    _clipper: Clipper = field(repr=False)

    def backward(self, per_sample_loss: Tensor) -> None:
        """Run ONE backward pass and store sum_i c_i grad(loss_i) in each ``p.grad``.

        Args:
            per_sample_loss: shape (B,), e.g. ``reduction="none"``. Gradients are
                of each loss_i itself; the optimizer divides by the expected batch
                size, matching Opacus' ``loss_reduction="mean"``. An empty Poisson
                batch is still a DP step: HF BERT cannot forward B = 0, so pass
                ``torch.zeros(0)`` (all gradients become 0) and call ``step()``.
        """
        self._clipper.backward(per_sample_loss)

    def backward_parts(self) -> contextlib.AbstractContextManager[BackwardPart]:
        """Several backward passes on parts of each record's objective, whose sum
        is clipped once per record on leaving the block (:meth:`Clipper.parts`)::

            with private.backward_parts() as backward_part:
                backward_part(part_1)  # (B,) each
                backward_part(part_2)  # may use input gradients left by part_1
        """
        return self._clipper.parts()

    @property
    def last_per_sample_norms(self) -> Tensor | None:
        """Unclipped per-sample gradient norms of the last ``backward`` (B,).

        NOT privatised: for tests and debugging only, never report them off-client.
        """
        return self._clipper.last_per_sample_norms

    def remove(self) -> None:
        """Detach all hooks; ``module`` is then an ordinary non-private module."""
        self._clipper.remove()


def _check_positive(name: str, value: float, *, allow_zero: bool) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"`{name}` must be a finite number {bound}. Found {value!r}. "
            "Pass the value from the privacy configuration."
        )


def make_private_bookkeeping(
    *,
    engine: PrivacyEngine,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    poisson_sampling: bool = True,
) -> BookkeepingPrivate:
    """Attach BK clipping to ``module`` and wire Opacus' sampling, noise, accounting.

    Mirrors ``engine.make_private(grad_sample_mode="ghost", clipping="flat",
    loss_reduction="mean")``: expected batch size E = int(N / len(poisson_loader)),
    noise std sigma C, and ``engine.accountant`` records one (sigma, q) step per
    ``optimizer.step()``, with one deliberate difference: q is the rate the Poisson
    sampler draws at, ``1 / len(data_loader)``, not Opacus' ``1 / len(poisson_loader)``
    = ``1 / int(1 / q)``, which float rounding makes larger for some loader lengths
    (93, 99, 105, ...) and which no release plan could predict.

    Args:
        engine: the client's long-lived ``PrivacyEngine`` (its accountant, and its
            secure RNG when ``secure_mode=True``).
        module: plain ``nn.Module`` (e.g. HF BERT, Llama, GPT-2 or a peft model);
            every trainable parameter must belong to exactly one supported module
            (:mod:`.layers`: nn.Linear, nn.Embedding, nn.LayerNorm, nn.RMSNorm,
            transformers' Conv1D, Llama-style RMSNorm); freeze tied embeddings.
        optimizer: plain torch optimizer over (a subset of) ``module``'s parameters.
        data_loader: batch-first loader over the private dataset.
        noise_multiplier: sigma >= 0 (0 only for tests: no privacy).
        max_grad_norm: C > 0, the per-sample L2 clipping bound.
        poisson_sampling: wrap the loader in ``DPDataLoader`` (default True; False
            breaks the accountant's assumptions).

    Raises:
        ValueError: invalid sigma or C, or optimizer parameters outside ``module``.
        UnsupportedTrainableModuleError: a trainable parameter BK cannot clip.
        TypeError: an already wrapped (Opacus/DDP) module or DP optimizer.
    """
    _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    _check_positive("max_grad_norm", max_grad_norm, allow_zero=False)
    if isinstance(module, (AbstractGradSampleModule, DistributedDataParallel)):
        raise TypeError(
            f"Expected a plain nn.Module; found {type(module).__name__}. Pass the "
            "unwrapped model: book-keeping attaches its own hooks (no DDP support)."
        )
    if isinstance(optimizer, DPOptimizer):
        raise TypeError(
            "Expected a plain torch optimizer; found an Opacus DPOptimizer. Pass "
            "the optimizer you built over module.parameters()."
        )
    previous = attached_clipper(module)
    if previous is not None and not previous.removed:
        raise RuntimeError(
            "Book-keeping hooks are already attached to this module. Call remove() "
            "on the previous BookkeepingPrivate before wrapping it again."
        )
    if any(
        getattr(m, "gradient_checkpointing", False) is True for m in module.modules()
    ):
        raise ValueError(
            "Expected gradient checkpointing to be off; found it enabled. Its "
            "recomputed forwards would be book-kept twice. Call "
            "model.gradient_checkpointing_disable() before make_private_bookkeeping."
        )
    owned = {id(p) for p in module.parameters()}
    if any(id(p) not in owned for g in optimizer.param_groups for p in g["params"]):
        raise ValueError(
            "Expected the optimizer to hold only parameters of `module`; found "
            "others. Build the optimizer from module.parameters()."
        )
    sites = find_sites(module)
    ModuleValidator.validate(module, strict=True)  # e.g. BatchNorm mixes samples

    if poisson_sampling:
        loader: DataLoader = DPDataLoader.from_data_loader(
            data_loader, generator=engine.secure_rng, distributed=False
        )
    elif engine.secure_mode:
        loader = switch_generator(data_loader=data_loader, generator=engine.secure_rng)
    else:
        loader = data_loader
    sample_rate = 1 / len(data_loader)  # the sampler's own (DPDataLoader's) rate
    num_samples = len(loader.dataset)  # type: ignore[arg-type]
    dp_optimizer = DPOptimizerFastGradientClipping(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=int(num_samples * (1 / len(loader))),  # Opacus' E
        loss_reduction="mean",
        generator=engine.secure_rng if engine.secure_mode else None,
        secure_mode=engine.secure_mode,
    )
    dp_optimizer.attach_step_hook(
        engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate)
    )
    clipper = Clipper(module=module, optimizer=dp_optimizer, sites=sites)
    logger.info(
        "Book-keeping clipping on %d modules (sigma=%s, C=%s, q=%.5f).",
        len(sites),
        noise_multiplier,
        max_grad_norm,
        sample_rate,
    )
    return BookkeepingPrivate(
        module=module, optimizer=dp_optimizer, data_loader=loader, _clipper=clipper
    )
