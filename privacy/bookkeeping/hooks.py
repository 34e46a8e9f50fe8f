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
backward pass. A module called k times per forward is book-kept k times and its
calls are concatenated along the token axis (its gradient is the sum over all k T
tokens).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import partial

import torch
from opacus.optimizers import DPOptimizer
from torch import Tensor, nn

from .layers import Finish, Records, layer_norms, unsupported_reason

__all__ = [
    "Clipper",
    "Site",
    "UnsupportedTrainableModuleError",
    "attached_clipper",
    "find_sites",
]

_CLIP_EPS = 1e-6  # Opacus: c_i = min(1, C / (norm_i + 1e-6))


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
    """Map every trainable parameter to its (supported) owning module, or raise."""
    sites: list[Site] = []
    owners: dict[int, str] = {}  # id(parameter) -> owning module name
    problems: list[str] = []
    for name, sub in module.named_modules(remove_duplicate=False):
        params = tuple(p for p in sub.parameters(recurse=False) if p.requires_grad)
        if not params:
            continue
        reason = unsupported_reason(sub)
        if reason is not None:
            problems.append(f"`{name}` ({reason})")
        for p in params:
            if id(p) in owners and owners[id(p)] != name:
                problems.append(f"`{name}` shares a parameter with `{owners[id(p)]}`")
            owners[id(p)] = name
        if reason is None and not any(s.module is sub for s in sites):
            sites.append(Site(name=name, module=sub, params=params))
    if problems:
        raise UnsupportedTrainableModuleError(
            "Book-keeping clipping cannot compute per-sample gradients of the "
            "trainable parameters of: " + "; ".join(problems) + ". Expected each "
            "trainable parameter to belong to exactly one nn.Linear, nn.Embedding "
            "(without max_norm/scale_grad_by_freq/sparse) or nn.LayerNorm. Freeze "
            "those parameters (p.requires_grad_(False)), or use Opacus' "
            "PrivacyEngine.make_private(grad_sample_mode='hooks') instead."
        )
    return sites


_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Clipper] = weakref.WeakKeyDictionary()


def attached_clipper(module: nn.Module) -> Clipper | None:
    """The clipper whose hooks were last attached to ``module``, if any."""
    return _ATTACHED.get(module)


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
                    partial(self._after_forward, site), always_call=True
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
        self, site: Site, module: nn.Module, args: tuple, out: object
    ) -> Tensor | None:
        for p in site.toggled:
            p.requires_grad_(True)
        site.toggled.clear()
        if not (torch.is_grad_enabled() and isinstance(out, Tensor) and args):
            return None
        saved = args[0].detach()  # activations a (Linear, LayerNorm) or token ids
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
        site.records.append((saved, grad.detach()))

    def backward(self, per_sample_loss: Tensor) -> None:
        if self.removed:
            raise RuntimeError("backward() after remove(): hooks are gone.")
        if per_sample_loss.shape == (0,):  # empty Poisson batch: a noise-only step
            for site in self._sites:
                for p in site.params:
                    p.grad = torch.zeros_like(p)
            self.last_per_sample_norms = per_sample_loss.detach()
            return
        if per_sample_loss.dim() != 1 or not per_sample_loss.requires_grad:
            raise ValueError(
                "Expected per_sample_loss of shape (B,) that requires grad (e.g. "
                "F.cross_entropy(logits, labels, reduction='none')); found shape "
                f"{tuple(per_sample_loss.shape)}, requires_grad="
                f"{per_sample_loss.requires_grad}."
            )
        batch = per_sample_loss.shape[0]
        for site in self._sites:
            site.records.clear()
        self._armed = True
        try:
            per_sample_loss.sum().backward()  # one pass: input grads + g capture
        finally:
            self._armed = False
        try:
            self._clip_and_sum(batch, per_sample_loss.dtype)
        finally:
            for site in self._sites:
                site.records.clear()

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
