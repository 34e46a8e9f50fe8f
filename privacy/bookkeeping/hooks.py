"""The hooks of book-keeping: ONE backward pass that yields per-sample clipped sums.

Clip factor (Opacus' formula), from the per-sample norm summed over layers
(:mod:`.layers`)::

    c_i = min(1, C / (||G_i||_2 + 1e-6))

Cost versus Opacus' ghost clipping. Opacus (``grad_sample_mode="ghost"``) runs the
backward pass twice: once to get norms, then again on sum_i c_i loss_i to get the
clipped sum. BK runs ONE backward that computes only input gradients: during each
supported module's forward its parameters are temporarily marked
``requires_grad=False``, so autograd neither saves inputs for nor computes the weight
gradient; a tensor hook on the module output captures g. We then spend one weight-
gradient GEMM per layer (the one autograd skipped) plus the ghost norms. Extra
memory: the output gradients g of every tapped layer, held until the end of the
backward pass.

Which parameter uses are exact. Summing per-layer squared norms is exact when each
trainable parameter is reached through exactly one module:

- a module called k times per forward (or registered under several names) is
  book-kept k times and its calls are concatenated along the token axis: its
  gradient is one sum over all k T tokens, so the layer identities hold unchanged;
- a parameter owned by two modules (tied weights: GPT-2's and SmolLM2's lm_head is
  the input embedding) is refused by :func:`find_sites`: ||A_i + B_i||^2 needs the
  cross term 2 <A_i, B_i>, which per-layer norms drop (Opacus' ghost mode refuses
  tying too, at the first forward);
- a call while the module's parameters are frozen (``requires_grad`` off, as
  during an adversarial attack's inner ascent passes, :mod:`privacy.adversarial`)
  is not book-kept: it adds nothing to any parameter's gradient;
- a parameter also read outside its module's forward (``F.linear(x, emb.weight)``)
  gets a real gradient from autograd there, because requires_grad is only off
  inside the module; ``backward`` detects that, drops all gradients and raises.

Any per-sample loss that is a function of sample i's forward alone is exact, e.g. a
causal LM's mean token cross-entropy over the record's non-padding targets
(``(ce * mask).sum(1) / mask.sum(1)``, labels -100 on right padding): g of sample i
is then d loss_i / d y_i, and padded positions get g = 0.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from opacus.optimizers import DPOptimizer
from torch import Tensor, nn

from .layers import (
    Finish,
    Records,
    layer_norms,
    supported_names,
    unsupported_reason,
)

__all__ = [
    "BackwardPart",
    "Clipper",
    "Site",
    "UnsupportedTrainableModuleError",
    "attached_clipper",
    "find_sites",
]

_CLIP_EPS = 1e-6

#: ``backward_part(loss_part)``: one backward pass on a (B,) part of the records'
#: objective, inside :meth:`Clipper.parts`.
BackwardPart = Callable[[Tensor], None]  # Opacus: c_i = min(1, C / (norm_i + 1e-6))


class UnsupportedTrainableModuleError(ValueError):
    """A trainable parameter lives in a module BK cannot clip."""


@dataclass
class Site:
    """One supported module with trainable parameters, and its book-kept calls."""

    name: str
    module: nn.Module
    params: tuple[nn.Parameter, ...]
    records: Records = field(default_factory=list)
    toggled: list[nn.Parameter] = field(default_factory=list)


def find_sites(module: nn.Module) -> list[Site]:
    """Map every trainable parameter to its (supported) owning module, or raise.

    A module registered under several names is one site (its calls are book-kept
    once each). A trainable parameter owned by two different modules (tied weights,
    e.g. ``lm_head.weight`` is ``embed_tokens.weight``) is refused: its per-sample
    gradient G_i = A_i + B_i has ||G_i||^2 = ||A_i||^2 + ||B_i||^2 + 2 <A_i, B_i>,
    and summing per-layer norms would drop the cross term, under-estimating the
    norm whenever <A_i, B_i> > 0 (a clipped sample would exceed C).
    """
    sites: list[Site] = []
    owners: dict[int, tuple[nn.Module, str]] = {}  # id(parameter) -> owner, name
    unsupported: list[str] = []
    tied: list[str] = []
    visited: set[int] = set()  # id(module): one site per module, whatever its names
    for name, sub in module.named_modules(remove_duplicate=False):
        named = [
            (f"{name}.{n}" if name else n, p)
            for n, p in sub.named_parameters(recurse=False)
            if p.requires_grad
        ]
        if not named:
            continue
        for full_name, p in named:
            owner = owners.setdefault(id(p), (sub, full_name))
            if owner[0] is not sub:
                tied.append(f"`{full_name}` is `{owner[1]}`")
        if id(sub) in visited:
            continue  # the same module under another name
        visited.add(id(sub))
        reason = unsupported_reason(sub)
        if reason is not None:
            unsupported.append(f"`{name}` ({reason})")
        else:
            sites.append(Site(name=name, module=sub, params=tuple(p for _, p in named)))
    problems = []
    if unsupported:
        problems.append(
            "Book-keeping clipping cannot compute per-sample gradients of the "
            "trainable parameters of: " + "; ".join(unsupported) + ". Expected "
            f"each trainable parameter to belong to one {supported_names()} "
            "(nn.Embedding without max_norm/scale_grad_by_freq/sparse). Freeze "
            "those parameters (p.requires_grad_(False)), or use Opacus' "
            "PrivacyEngine.make_private(grad_sample_mode='hooks') instead."
        )
    if tied:
        problems.append(
            "Expected each trainable parameter to be used by one module; found "
            "tied (shared) trainable parameters: " + "; ".join(tied) + ". Their "
            "per-sample gradient is the sum of both modules' parts, whose norm "
            "needs a cross term that per-layer norms (book-keeping's and Opacus' "
            "ghost clipping's) do not compute. Freeze the tied weight (e.g. "
            "model.get_input_embeddings().weight.requires_grad_(False), which "
            "also freezes a tied lm_head), untie it (tie_word_embeddings=False), "
            "or use Opacus' grad_sample_mode='hooks', which sums the per-sample "
            "gradients of both uses before taking the norm."
        )
    if problems:
        raise UnsupportedTrainableModuleError(" ".join(problems))
    return sites


_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Clipper] = weakref.WeakKeyDictionary()


def attached_clipper(module: nn.Module) -> Clipper | None:
    """The clipper whose hooks were last attached to ``module``, if any."""
    return _ATTACHED.get(module)


def _at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32 when it is in a narrower float (bf16/fp16), else as is
    (a float64 model keeps its precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class Clipper:
    """Owns the hooks; turns one backward pass into clipped summed gradients."""

    def __init__(
        self, *, module: nn.Module, optimizer: DPOptimizer, sites: list[Site]
    ) -> None:
        self._module = weakref.ref(module)  # _ATTACHED must not keep it alive
        self._optimizer = optimizer
        self._sites = sites
        self._armed = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.last_per_sample_norms: Tensor | None = None
        for site in sites:
            sub = site.module
            self._handles.append(
                sub.register_forward_pre_hook(partial(self._before_forward, site))
            )
            self._handles.append(
                sub.register_forward_hook(
                    partial(self._after_forward, site),
                    with_kwargs=True,
                    always_call=True,
                )
            )
        _ATTACHED[module] = self

    @property
    def removed(self) -> bool:
        return not self._handles

    def _before_forward(self, site: Site, module: nn.Module, args: tuple) -> None:
        # Autograd decides at record time whether a weight gradient is needed:
        # switching it off here skips (and saves no inputs for) dL/dW.
        if torch.is_grad_enabled():
            for p in site.params:
                if p.requires_grad:
                    p.requires_grad_(False)
                    site.toggled.append(p)

    def _after_forward(
        self, site: Site, module: nn.Module, args: tuple, kwargs: dict, out: object
    ) -> Tensor | None:
        booked = bool(site.toggled)  # False under no_grad or with params frozen
        for p in site.toggled:
            p.requires_grad_(True)
        site.toggled.clear()
        if not booked or out is None:  # forward raised: nothing to book-keep
            return None
        inputs = [*args, *kwargs.values()]  # every supported forward takes one input
        if not (isinstance(out, Tensor) and len(inputs) == 1):
            raise RuntimeError(
                f"Expected `{site.name}` to be called with one input tensor and to "
                f"return a tensor; found {len(inputs)} inputs and a "
                f"{type(out).__name__}. Book-keeping cannot form its per-sample "
                "gradients."
            )
        saved = inputs[0].detach()  # activations a (Linear, norms) or token ids
        replaced = None
        if not out.requires_grad:  # nothing upstream is trainable: start the graph
            replaced = out = out.requires_grad_().clone()
        out.register_hook(partial(self._capture, site, saved, saved._version))
        return replaced

    def _capture(self, site: Site, saved: Tensor, version: int, grad: Tensor) -> None:
        if not self._armed:
            raise RuntimeError(
                f"A backward pass reached `{site.name}` outside "
                "BookkeepingPrivate.backward(). Expected per_sample_loss to be passed "
                "to BookkeepingPrivate.backward(per_sample_loss); found a plain "
                "loss.backward(), which would produce no (unclipped) gradients for "
                "parameters under book-keeping. Call remove() first for non-private "
                "training."
            )
        if saved._version != version:
            raise RuntimeError(
                f"The input of `{site.name}` was modified in place after its forward; "
                "book-keeping needs it unchanged to form per-sample gradients."
            )
        # clipping runs in float32 whatever the forward's precision (bf16 autocast
        # on a GPU): a norm rounded down in bf16 would let a record exceed C
        a = _at_least_float32(saved) if saved.is_floating_point() else saved  # ids
        site.records.append((a, _at_least_float32(grad.detach())))

    def backward(self, per_sample_loss: Tensor) -> None:
        if per_sample_loss.shape == (0,):  # empty Poisson batch: a noise-only step
            if self.removed:
                raise RuntimeError("backward() after remove(): hooks are gone.")
            for site in self._sites:
                for p in site.params:
                    p.grad = torch.zeros_like(p)
            self.last_per_sample_norms = per_sample_loss.detach()
            return
        with self.parts() as backward_part:
            backward_part(per_sample_loss)

    @contextmanager
    def parts(self) -> Iterator[BackwardPart]:
        """Backward passes on parts of each record's objective, clipped together.

        Inside the block, ``backward_part(loss_part)`` (shape (B,)) runs one
        backward pass and books its calls; on leaving, the per-record gradient is
        the SUM over the parts (each layer's calls of every part concatenated
        along the token axis), clipped once, as if ``backward`` had been called
        on ``sum(parts)``. Leaves that require grad (an input perturbation) get
        their ``.grad`` from each part, so a later part may depend on an earlier
        part's input gradient (FGM's direction, :mod:`privacy.adversarial`).
        Raises, leaving no gradient, if the block raises or has no part.
        """
        if self.removed:
            raise RuntimeError("backward() after remove(): hooks are gone.")
        shape: list[tuple[int, torch.dtype]] = []

        def backward_part(per_sample_loss: Tensor) -> None:
            if per_sample_loss.dim() != 1 or not per_sample_loss.requires_grad:
                raise ValueError(
                    "Expected per_sample_loss of shape (B,) that requires grad (e.g. "
                    "F.cross_entropy(logits, labels, reduction='none')); found shape "
                    f"{tuple(per_sample_loss.shape)}, requires_grad="
                    f"{per_sample_loss.requires_grad}."
                )
            if shape and shape[0][0] != per_sample_loss.shape[0]:
                raise ValueError(
                    "Expected every part of one step's objective to hold the same "
                    f"records; found {shape[0][0]} then {per_sample_loss.shape[0]}."
                )
            shape.append((per_sample_loss.shape[0], per_sample_loss.dtype))
            self._armed = True
            try:
                per_sample_loss.sum().backward()  # input grads + g capture
            finally:
                self._armed = False

        self._drop_grads()  # overwritten below; None lets us detect direct uses
        try:
            yield backward_part
            if not shape:
                raise RuntimeError(
                    "Expected at least one backward_part() in the block; found "
                    "none, so there is no per-record gradient to clip."
                )
            self._refuse_direct_uses()
            self._clip_and_sum(*shape[0])
        except BaseException:
            self._drop_grads()  # never leave an unclipped or partial sum in p.grad
            raise
        finally:
            self._armed = False
            for site in self._sites:
                site.records.clear()

    def _drop_grads(self) -> None:
        for site in self._sites:
            for p in site.params:
                p.grad = None

    def _refuse_direct_uses(self) -> None:
        """A site parameter that autograd gave a gradient was used OUTSIDE its
        module's forward (where requires_grad is off), e.g. ``F.linear(x,
        emb.weight)``; book-keeping never saw that use, so its per-sample norm
        would be wrong. Raise (``backward`` then drops the unclipped gradients)."""
        misused = [
            s.name for s in self._sites if any(p.grad is not None for p in s.params)
        ]
        if misused:
            raise RuntimeError(
                "Expected the trainable parameters of book-kept modules to be used "
                "only by calling their module; found parameters of "
                + ", ".join(f"`{n}`" for n in misused)
                + " used directly elsewhere in the forward (e.g. a weight passed to "
                "F.linear). Book-keeping cannot see that use, so its per-sample norms "
                "would be wrong; no gradient was kept. Freeze those parameters, or "
                "call the module instead of reading its weight (Opacus' per-sample "
                "hooks cannot see such a use either)."
            )

    def _clip_and_sum(self, batch: int, dtype: torch.dtype) -> None:
        cache: dict[tuple, Tensor] = {}
        dtype = torch.promote_types(dtype, torch.float32)  # norms in >= fp32
        norm_sq = torch.zeros(batch, dtype=dtype, device=self._device())
        finishers: list[Finish] = []
        untouched: list[nn.Parameter] = []
        for site in self._sites:
            if not site.records:
                untouched.extend(site.params)
                continue
            for saved, grad in site.records:
                if saved.shape[:1] != (batch,) or grad.shape[:1] != (batch,):
                    raise ValueError(
                        f"`{site.name}` saw input {tuple(saved.shape)} and output "
                        f"gradient {tuple(grad.shape)}; expected batch-first tensors "
                        f"with batch size {batch}. For HF BERT pass position_ids and "
                        "token_type_ids as contiguous (B, T) tensors, not (1, T)."
                    )
            site_norm_sq, finish = layer_norms(site.module, site.records, batch, cache)
            norm_sq += site_norm_sq.to(dtype)
            finishers.append(finish)
            site.records.clear()  # the finisher keeps only what it still needs
        norms = norm_sq.sqrt()
        clip = (self._optimizer.max_grad_norm / (norms + _CLIP_EPS)).clamp(max=1.0)
        while finishers:  # release each site's tensors as soon as it is done
            finishers.pop()(clip)
        for p in untouched:  # not used in this forward: its clipped sum is zero
            p.grad = torch.zeros_like(p)
        self.last_per_sample_norms = norms.detach()

    def _device(self) -> torch.device:
        return self._sites[0].params[0].device if self._sites else torch.device("cpu")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        module = self._module()
        if module is not None and _ATTACHED.get(module) is self:
            del _ATTACHED[module]
