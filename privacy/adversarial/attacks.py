"""Embedding-space attacks (FGM, PGD, FreeLB) and the adversarial objective that
DP-SGD clips per record.

Attacks perturb a record's input embeddings (the word embeddings, before position
and token-type embeddings are added) by ``delta`` inside a ball, only at its real
tokens (padding never moves):

- ``l2``: ``||delta_i||_2 <= epsilon * sqrt(T_i)`` over record i's T_i real tokens
  (epsilon is the root-mean-square move per token); a step adds ``alpha *
  sqrt(T_i) * g_i / ||g_i||_2``, the record's gradient normalized over all its
  tokens (Miyato et al., ICLR 2017), so the budget goes where the loss is
  sensitive.
- ``linf``: ``|delta| <= epsilon`` per coordinate; a step adds ``alpha *
  sign(g)`` (FGSM, Goodfellow et al., ICLR 2015).

Methods, each returning the perturbations whose losses the objective averages:

- ``fgm``: one step from 0 to the ball's edge.
- ``pgd`` (Madry et al., ICLR 2018): a uniform random start in the ball, then K
  projected ascent steps; the loss at the last point.
- ``freelb`` (Zhu et al., ICLR 2020): a random start, K - 1 ascent steps; the
  loss averaged over all K points, whose parameter gradients FreeLB accumulates.

The objective of record i is ``(1 - mix) * loss(x_i) + mix * mean_k
loss(x_i + delta_ik)``, each delta treated as a constant (Danskin's theorem, as
Madry et al. and Zhu et al. train).

Why DP-SGD's guarantee is unchanged (the argument the tests check). DP-SGD's
analysis (Abadi et al., CCS 2016; Mironov, Talwar and Zhang 2019 for the sampled
Gaussian mechanism the accountant composes) needs three things of a step: each
record enters the batch by independent Poisson sampling at rate q; each record's
contribution is a vector of norm at most C that depends on that record alone (and
on the current, already released parameters and randomness independent of the
data); the sum gets N(0, sigma^2 C^2) noise. The loss function is free. Here:

1. Sampling is untouched: the attack runs on the batch the sampler drew.
2. delta_ik is computed from record i's own forward passes (``loss.sum()``'s
   gradient w.r.t. delta_i is record i's loss gradient: no layer of a transformer
   mixes records, padding is masked), the current parameters and a random start
   drawn independently of the data. So the objective is a function of record i
   alone, and its gradient is one per-record vector that the clipping bounds by C,
   once, whatever the method, K or mix: the sensitivity of the clipped sum to
   adding or removing one record stays C.
3. The inner ascent passes run with every trainable parameter frozen and outside
   the per-sample capture (:func:`frozen`): they produce no parameter gradient, so
   nothing unclipped reaches the update, and they release nothing.
   FGM with a clean part (mix < 1) under book-keeping, or without DP, skips
   that pass (:func:`fgm_in_parts`): its direction is the input gradient that
   the objective's own clean part leaves behind, ``(1 - mix)`` times record i's
   own. The clean part's backward is then the first of two backward passes whose
   per-record sum book-keeping clips once (``Clipper.parts``); nothing is
   released between them. Opacus' hooks mode keeps the separate pass: it would
   clip each backward's per-sample gradients as samples of their own
   (``grad_sample`` lists are concatenated), a sensitivity of 2C.
4. Hence the accountant's (sigma, q, steps) and the ledger's releases are those
   of the clean run with the same settings; :mod:`privacy.budget` prices them the
   same way.

The per-record gradient of an objective that calls the model 1 + K times is one
sum over those calls: book-keeping concatenates a layer's calls along the token
axis (:mod:`privacy.bookkeeping.hooks`), Opacus' hooks mode sums the calls'
per-sample gradients before clipping (its accumulation for tied weights); Opacus'
ghost mode cannot take several calls, so adversarial training uses hooks there.
``tests/privacy/test_adversarial_dp.py`` checks the per-record norms against a
loop over records, and the ledger against a clean run.

Written here rather than taken from a library: TextAttack and OpenAttack perturb
words through downloaded resources and run outside training; FreeLB's reference
code is a fork of an old transformers. These are a few tensor operations each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from .config import AdversarialConfig, AdversarialMethod, BallNorm

__all__ = [
    "LossOf",
    "attack_deltas",
    "ball_radius",
    "fgm_in_parts",
    "frozen",
    "input_gradient",
    "objective",
    "project",
    "random_start",
]

#: ``delta -> (b,)``: each record's loss with its input embeddings moved by
#: ``delta`` (b, t, d), or unmoved (``None``: the clean forward).
LossOf = Callable[[Tensor | None], Tensor]

_TINY = 1e-12


@contextmanager
def frozen(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Trainable ``params`` frozen for the block: forward passes inside build no
    parameter gradient (and book-keeping skips them; see its hooks)."""
    thawed = [p for p in params if p.requires_grad]
    for p in thawed:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in thawed:
            p.requires_grad_(True)


def _mask(attention_mask: Tensor, like: Tensor) -> Tensor:
    """(b, t, 1): 1 at real tokens, 0 at padding, in ``like``'s dtype."""
    return attention_mask.unsqueeze(-1).to(like.dtype)


def _record_norm(x: Tensor) -> Tensor:
    """(b, 1, 1): each record's L2 norm over all its tokens and dimensions."""
    return x.flatten(1).norm(dim=1).view(-1, 1, 1)


def ball_radius(attention_mask: Tensor, epsilon: float) -> Tensor:
    """(b, 1, 1): the l2 ball's radius ``epsilon * sqrt(T_i)`` of each record."""
    tokens = attention_mask.sum(dim=1).clamp(min=1).to(torch.float32)
    return (epsilon * tokens.sqrt()).view(-1, 1, 1)


def project(delta: Tensor, attention_mask: Tensor, cfg: AdversarialConfig) -> Tensor:
    """``delta`` moved into its ball (and zeroed at padding)."""
    delta = delta * _mask(attention_mask, delta)
    if cfg.norm is BallNorm.LINF:
        return delta.clamp(-cfg.epsilon, cfg.epsilon)
    radius = ball_radius(attention_mask, cfg.epsilon).to(delta)
    scale = (radius / _record_norm(delta).clamp(min=_TINY)).clamp(max=1.0)
    return delta * scale


def _ascend(
    delta: Tensor, grad: Tensor, attention_mask: Tensor, cfg: AdversarialConfig
) -> Tensor:
    """One ascent step of size ``cfg.step_size`` along ``grad``, projected."""
    grad = grad * _mask(attention_mask, grad)
    if cfg.norm is BallNorm.LINF:
        step = cfg.step_size * grad.sign()
    else:
        unit = grad / _record_norm(grad).clamp(min=_TINY)
        step = ball_radius(attention_mask, cfg.step_size).to(grad) * unit
    return project(delta + step, attention_mask, cfg)


def random_start(
    like: Tensor,
    attention_mask: Tensor,
    cfg: AdversarialConfig,
    generator: torch.Generator,
) -> Tensor:
    """A random point in each record's ball, drawn from ``generator`` (CPU)
    independently of the data: uniform per coordinate for linf; for l2 a uniform
    direction at a uniform fraction of the radius."""
    shape = like.shape
    if cfg.norm is BallNorm.LINF:
        u = torch.rand(shape, generator=generator, dtype=torch.float32)
        delta = (2 * u - 1) * cfg.epsilon
    else:
        direction = torch.randn(shape, generator=generator, dtype=torch.float32)
        direction = direction * _mask(attention_mask.cpu(), direction)
        frac = torch.rand((shape[0], 1, 1), generator=generator, dtype=torch.float32)
        unit = direction / _record_norm(direction).clamp(min=_TINY)
        delta = ball_radius(attention_mask.cpu(), cfg.epsilon) * frac * unit
    return project(delta.to(like), attention_mask, cfg)


def input_gradient(loss_of: LossOf, delta: Tensor) -> Tensor:
    """d sum_i loss_i / d delta at ``delta``: row i is record i's own gradient
    (the attacks' step direction; the character attack's word importance)."""
    delta = delta.detach().requires_grad_(True)
    loss = loss_of(delta)
    if not loss.requires_grad:
        raise RuntimeError(
            "The adversarial attack's loss does not depend on the input embeddings; "
            "expected the output of the model's get_input_embeddings() module to "
            "feed its forward. Set adversarial.method=off for this model."
        )
    (grad,) = torch.autograd.grad(loss.float().sum(), delta)
    return grad.detach()


def attack_deltas(
    loss_of: LossOf,
    like: Tensor,
    attention_mask: Tensor,
    cfg: AdversarialConfig,
    *,
    generator: torch.Generator,
    params: Sequence[torch.nn.Parameter] = (),
) -> list[Tensor]:
    """The perturbations (each shaped like the embeddings ``like``) whose losses
    the objective averages: ``fgm`` and ``pgd`` one, ``freelb`` K. ``params``
    (the trainable ones) are frozen during the attack's forward passes."""
    if not cfg.enabled:
        return []
    with frozen(params):
        if cfg.method is AdversarialMethod.FGM:
            zero = torch.zeros_like(like)
            return [_ascend(zero, input_gradient(loss_of, zero), attention_mask, cfg)]
        delta = random_start(like, attention_mask, cfg, generator)
        if cfg.method is AdversarialMethod.PGD:
            for _ in range(cfg.steps):
                delta = _ascend(
                    delta, input_gradient(loss_of, delta), attention_mask, cfg
                )
            return [delta]
        deltas = [delta]  # FreeLB: the loss at every point of the ascent
        for _ in range(cfg.steps - 1):
            delta = _ascend(delta, input_gradient(loss_of, delta), attention_mask, cfg)
            deltas.append(delta)
        return deltas


def fgm_in_parts(
    loss_of: LossOf,
    like: Tensor,
    attention_mask: Tensor,
    cfg: AdversarialConfig,
    backward_part: Callable[[Tensor], None],
) -> Tensor:
    """FGM's objective (mix < 1) in two backward passes, with no separate attack
    pass: the clean part's backward books the clean call and leaves on a zero
    perturbation ``(1 - mix)`` times each record's own input gradient, FGM's
    direction (it is scale-free); the adversarial part's backward follows.
    ``backward_part`` must clip the two parts' sum once per record (book-keeping's
    ``backward_parts``). Returns the objective's per-record values (b,)."""
    if cfg.method is not AdversarialMethod.FGM or not 0.0 < cfg.mix < 1.0:
        raise ValueError(
            f"fgm_in_parts is FGM with a clean part; found method {cfg.method} "
            f"and mix {cfg.mix}. Use attack_deltas and objective."
        )
    zero = torch.zeros_like(like).requires_grad_(True)
    clean = loss_of(zero)  # a zero move: the clean forward, differentiable in it
    backward_part((1.0 - cfg.mix) * clean)
    if zero.grad is None:
        raise RuntimeError(
            "The adversarial attack's loss does not depend on the input embeddings; "
            "expected the output of the model's get_input_embeddings() module to "
            "feed its forward. Set adversarial.method=off for this model."
        )
    delta = _ascend(zero.detach(), zero.grad, attention_mask, cfg)
    adversarial = loss_of(delta)
    backward_part(cfg.mix * adversarial)
    return ((1.0 - cfg.mix) * clean + cfg.mix * adversarial).detach()


def objective(loss_of: LossOf, deltas: Sequence[Tensor], mix: float) -> Tensor:
    """(b,): each record's ``(1 - mix) * clean + mix * mean_k adversarial_k`` loss,
    from fresh forward passes (the ones DP-SGD's per-sample capture sees)."""
    if not deltas:
        return loss_of(None)
    adversarial = torch.stack([loss_of(d.detach()) for d in deltas]).mean(dim=0)
    if mix >= 1.0:
        return adversarial
    return (1.0 - mix) * loss_of(None) + mix * adversarial
