"""Per-sample gradient norms and clipped sums of one layer, from its book-kept
activations and output gradients, without per-sample gradients where it pays.

Per-sample norms without per-sample gradients. A layer y = W a + b applied to the T
tokens of sample i has activations a_i (T, d_in) and output gradients g_i (T, d_out)
(g = dL/dy for L = sum_i loss_i), and its weight gradient is G_i = sum_t g_it a_it^T:

    ||G_i||_F^2 = sum_{t,t'} (a_it . a_it') (g_it . g_it')   (ghost norm, O(T^2 d))
    ||G_i^b||^2 = ||sum_t g_it||^2

We use the ghost norm when 2 T^2 < d_in d_out, else instantiate G_i (O(T d_in d_out)).
Embedding rows: the same identity with (a_it . a_it') replaced by [id_t == id_t'].
LayerNorm: per-sample gradients (sum_t g_it * xhat_it, sum_t g_it) are instantiated.
||G_i||^2 is the sum over layers. Knowing c, the clipped sum is built directly from
the book-kept a and g, e.g. sum_i c_i G_i = einsum('b,bto,bti->oi', c, g, a), and for
embeddings an index_add of c_i g_it into the rows id_it.

Cost: one weight-gradient GEMM per layer (the one autograd skipped, see
:mod:`.hooks`) plus the ghost norms (~ T (d_in + d_out) / (d_in d_out) of the
layer's forward FLOPs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SUPPORTED_MODULE_TYPES",
    "Finish",
    "Records",
    "layer_norms",
    "unsupported_reason",
]

#: Exact module types whose trainable parameters BK can clip (subclasses excluded:
#: e.g. ``NonDynamicallyQuantizableLinear`` inside ``nn.MultiheadAttention`` is
#: used through ``F.multi_head_attention_forward`` and never calls its forward).
SUPPORTED_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Embedding,
    nn.LayerNorm,
)

# What one backward of a site yields: per-sample squared norm (B,) and a function
# that, given the clip factors c (B,), writes sum_i c_i G_i into each ``p.grad``.
Finish = Callable[[Tensor], None]
Records = list[tuple[Tensor, Tensor]]  # (book-kept input, output gradient) per call


def _gram(x: Tensor, cache: dict[tuple, Tensor]) -> Tensor:
    """Per-sample token Gram matrix x x^T of shape (B, T, T), cached by storage.

    q, k and v (and LoRA's lora_A) read the same input; its Gram is computed once.
    """
    key = (x.data_ptr(), x.shape, x.stride(), x.dtype)
    if key not in cache:
        cache[key] = torch.bmm(x, x.transpose(1, 2))
    return cache[key]


def _cat_tokens(tensors: list[Tensor], batch: int, *trailing: int) -> Tensor:
    """Reshape each call's tensor to (B, T_call, *trailing) and concatenate over T.

    A module called k times has gradient sum_calls sum_t, i.e. one call over the
    concatenated tokens, so the ghost-norm identities hold unchanged.
    """
    flat = [t.reshape(batch, -1, *trailing) for t in tensors]
    return flat[0] if len(flat) == 1 else torch.cat(flat, dim=1)


def _set_grad(p: Tensor, grad: Tensor) -> None:
    p.grad = grad.to(p.dtype).view_as(p)


def _instantiated(
    per_sample: Sequence[tuple[Tensor, Tensor]], norm_sq: Tensor
) -> tuple[Tensor, Finish]:
    """Norms and clipped sums from instantiated per-sample gradients (B, *p.shape)."""
    for _, grads in per_sample:
        norm_sq = norm_sq + grads.flatten(1).pow(2).sum(dim=1)

    def finish(c: Tensor) -> None:
        for p, grads in per_sample:
            _set_grad(p, c @ grads.flatten(1))  # sum_i c_i G_i

    return norm_sq, finish


def _linear_site(
    module: nn.Linear, records: Records, batch: int, cache: dict[tuple, Tensor]
) -> tuple[Tensor, Finish]:
    """Linear y = a W^T + b: ghost norm if 2 T^2 < d_in d_out, else instantiate."""
    a = _cat_tokens([r[0] for r in records], batch, module.in_features)  # (B,T,i)
    g = _cat_tokens([r[1] for r in records], batch, module.out_features)  # (B,T,o)
    w = module.weight if module.weight.requires_grad else None
    b = module.bias if module.bias is not None and module.bias.requires_grad else None
    tokens = a.shape[1]
    norm_sq = g.new_zeros(batch)
    if 2 * tokens * tokens < module.in_features * module.out_features:
        gram_g = _gram(g, cache) if w is not None else None  # (B, T, T)
        if gram_g is not None:
            norm_sq += (_gram(a, cache) * gram_g).sum(dim=(1, 2))
        if b is not None and gram_g is not None:
            norm_sq += gram_g.sum(dim=(1, 2))  # ||sum_t g_t||^2 = 1^T (g g^T) 1
        elif b is not None:
            norm_sq += g.sum(dim=1).pow(2).sum(dim=1)

        def finish(c: Tensor) -> None:
            if w is not None:  # sum_b c_b g_b^T a_b: scale the thinner side by c
                if module.out_features <= module.in_features:
                    gc = (g * c[:, None, None]).flatten(0, 1)  # (B*T, o)
                    _set_grad(w, gc.T @ a.flatten(0, 1))
                else:
                    ac = (a * c[:, None, None]).flatten(0, 1)  # (B*T, i)
                    _set_grad(w, g.flatten(0, 1).T @ ac)
            if b is not None:  # sum_{b,t} c_b g_bt as one matrix-vector product
                _set_grad(b, g.flatten(0, 1).T @ c.repeat_interleave(tokens))

        return norm_sq, finish
    # Few features, many tokens (LoRA's rank-r factors): per-sample G_i is small.
    per_sample = []
    if w is not None:
        per_sample.append((w, torch.bmm(g.transpose(1, 2), a)))  # (B, o, i)
    if b is not None:
        per_sample.append((b, g.sum(dim=1)))  # (B, o)
    return _instantiated(per_sample, norm_sq)


def _embedding_site(
    module: nn.Embedding, records: Records, batch: int, cache: dict[tuple, Tensor]
) -> tuple[Tensor, Finish]:
    """Embedding rows: ghost norm with the token-equality mask [id_t == id_t']."""
    ids = _cat_tokens([r[0] for r in records], batch)  # (B, T) int64
    g = _cat_tokens([r[1] for r in records], batch, module.embedding_dim)  # (B,T,d)
    if module.padding_idx is not None:  # the padding row never receives gradient
        g = g.masked_fill((ids == module.padding_idx).unsqueeze(-1), 0.0)
    weight = module.weight
    tokens = ids.shape[1]
    if 2 * tokens * tokens < module.num_embeddings * module.embedding_dim:
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(g.dtype)  # (B, T, T)
        norm_sq = (_gram(g, cache) * same).sum(dim=(1, 2))

        def finish(c: Tensor) -> None:
            rows = (g * c[:, None, None]).flatten(0, 1)  # (B*T, d)
            grad = torch.zeros_like(weight, dtype=g.dtype)
            _set_grad(weight, grad.index_add_(0, ids.flatten(), rows))

        return norm_sq, finish
    one_hot = F.one_hot(ids, module.num_embeddings).to(g.dtype)  # (B, T, V)
    per_sample = torch.bmm(one_hot.transpose(1, 2), g)  # (B, V, d), V small
    return _instantiated([(weight, per_sample)], g.new_zeros(batch))


def _layer_norm_site(
    module: nn.LayerNorm, records: Records, batch: int, cache: dict[tuple, Tensor]
) -> tuple[Tensor, Finish]:
    """LayerNorm y = xhat * w + b: per-sample (sum_t g_t xhat_t, sum_t g_t)."""
    shape = module.normalized_shape
    width = math.prod(shape)
    xhat = [F.layer_norm(x, shape, None, None, module.eps) for x, _ in records]
    xh = _cat_tokens(xhat, batch, width)  # (B, T, D)
    g = _cat_tokens([r[1] for r in records], batch, width)  # (B, T, D)
    per_sample = []
    if module.weight is not None and module.weight.requires_grad:
        per_sample.append((module.weight, (g * xh).sum(dim=1)))  # (B, D)
    if module.bias is not None and module.bias.requires_grad:
        per_sample.append((module.bias, g.sum(dim=1)))  # (B, D)
    return _instantiated(per_sample, g.new_zeros(batch))


_SITE_FNS: dict[type[nn.Module], Callable[..., tuple[Tensor, Finish]]] = {
    nn.Linear: _linear_site,
    nn.Embedding: _embedding_site,
    nn.LayerNorm: _layer_norm_site,
}


def layer_norms(
    module: nn.Module, records: Records, batch: int, cache: dict[tuple, Tensor]
) -> tuple[Tensor, Finish]:
    """Per-sample squared gradient norms (B,) of ``module``'s trainable parameters
    over its book-kept calls ``records``, and the function that, given the clip
    factors c (B,), writes sum_i c_i G_i into each ``p.grad``.

    ``module`` must be of a type in :data:`SUPPORTED_MODULE_TYPES`; ``cache``
    shares Gram matrices between layers that read the same tensor.
    """
    return _SITE_FNS[type(module)](module, records, batch, cache)


def unsupported_reason(module: nn.Module) -> str | None:
    """Why BK cannot clip ``module``'s trainable parameters, or None if it can."""
    if type(module) not in SUPPORTED_MODULE_TYPES:
        names = ", ".join(f"nn.{t.__name__}" for t in SUPPORTED_MODULE_TYPES)
        return f"type {type(module).__qualname__} is not one of: {names}"
    if isinstance(module, nn.Embedding) and (
        module.max_norm is not None or module.scale_grad_by_freq or module.sparse
    ):
        return "nn.Embedding with max_norm, scale_grad_by_freq or sparse=True"
    return None
