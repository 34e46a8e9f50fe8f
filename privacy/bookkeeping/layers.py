"""Per-sample gradient norms and clipped sums of one layer, from its book-kept
activations and output gradients, without per-sample gradients where it pays.

Per-sample norms without per-sample gradients. A layer y = W a + b applied to the T
tokens of sample i has activations a_i (T, d_in) and output gradients g_i (T, d_out)
(g = dL/dy for L = sum_i loss_i), and its weight gradient is G_i = sum_t g_it a_it^T:

    ||G_i||_F^2 = sum_{t,t'} (a_it . a_it') (g_it . g_it')   (ghost norm, O(T^2 d))
    ||G_i^b||^2 = ||sum_t g_it||^2

We use the ghost norm when 2 T^2 < d_in d_out, else instantiate G_i (O(T d_in d_out)).
Embedding rows: the same identity with (a_it . a_it') replaced by [id_t == id_t'].
LayerNorm y = xhat * w + b and RMSNorm y = xhat * w (xhat = x / sqrt(mean(x^2) + eps)
over the normalised dims): per-sample gradients (sum_t g_it * xhat_it, sum_t g_it)
are instantiated (D numbers per sample). ||G_i||^2 is the sum over layers. Knowing c,
the clipped sum is built directly from the book-kept a and g, e.g. sum_i c_i G_i =
einsum('b,bto,bti->oi', c, g, a), and for embeddings an index_add of c_i g_it into
the rows id_it.

Supported layers, and why each is exact:

- ``nn.Linear``, ``nn.Embedding`` (without max_norm, scale_grad_by_freq, sparse),
  ``nn.LayerNorm``, ``nn.RMSNorm``: exact torch types (subclasses may override
  forward, so they are refused).
- transformers' ``Conv1D`` (GPT-2's attention and MLP): y = a W + b with W of shape
  (d_in, d_out), i.e. a Linear whose weight gradient is the transpose
  G_i = sum_t a_it g_it^T; same ghost norm.
- transformers' Llama-style RMSNorm (:data:`SUPPORTED_TRANSFORMERS_CLASSES`: Llama,
  Mistral, Mixtral, Qwen2, Qwen2-MoE, Qwen3, Qwen3-MoE, SmolLM3, Phi-3, Granite; their
  forward in transformers 5.23 is, verbatim,
  ``weight * (x32 * rsqrt(x32.pow(2).mean(-1) + variance_epsilon)).to(x.dtype)``
  with x32 = x in float32), so dy/dw = xhat cast to the input dtype.

A transformers class is accepted only if its fully qualified name is in the registry
AND a probe of its own forward, with a random weight (and bias) on random inputs at
two scales (rms 1 and rms sqrt(eps), where eps matters), reproduces the formula
above. Other variants are refused, notably Gemma's y = xhat * (1 + w) and OLMo-2's
(w * x32hat).to(dtype): the caller then falls back to Opacus.

Cost: one weight-gradient GEMM per layer (the one autograd skipped, see
:mod:`.hooks`) plus the ghost norms (~ T (d_in + d_out) / (d_in d_out) of the
layer's forward FLOPs).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SUPPORTED_MODULE_TYPES",
    "SUPPORTED_TRANSFORMERS_CLASSES",
    "Finish",
    "Records",
    "layer_norms",
    "supported_names",
    "unsupported_reason",
]

#: Exact module types whose trainable parameters BK can clip (subclasses excluded:
#: e.g. ``NonDynamicallyQuantizableLinear`` inside ``nn.MultiheadAttention`` is
#: used through ``F.multi_head_attention_forward`` and never calls its forward).
SUPPORTED_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Embedding,
    nn.LayerNorm,
    nn.RMSNorm,
)

_CONV1D = "transformers.pytorch_utils.Conv1D"
# Llama-form RMSNorms, forward verified verbatim against LlamaRMSNorm's in 5.23.
_LLAMA_RMS_NORMS = tuple(
    f"transformers.models.{folder}.modeling_{folder}.{name}RMSNorm"
    for folder, name in [
        ("llama", "Llama"),
        ("mistral", "Mistral"),
        ("mixtral", "Mixtral"),
        ("qwen2", "Qwen2"),
        ("qwen2_moe", "Qwen2Moe"),
        ("qwen3", "Qwen3"),
        ("qwen3_moe", "Qwen3Moe"),
        ("smollm3", "SmolLM3"),
        ("phi3", "Phi3"),
        ("granite", "Granite"),
    ]
)

#: Fully qualified names of the transformers classes BK can clip (matched exactly,
#: by name so that transformers is not imported here, and each instance is probed).
SUPPORTED_TRANSFORMERS_CLASSES: frozenset[str] = frozenset((_CONV1D, *_LLAMA_RMS_NORMS))

# What one backward of a site yields: per-sample squared norm (B,) and a function
# that, given the clip factors c (B,), writes sum_i c_i G_i into each ``p.grad``.
Finish = Callable[[Tensor], None]
Records = list[tuple[Tensor, Tensor]]  # (book-kept input, output gradient) per call
_SiteFn = Callable[..., tuple[Tensor, Finish]]


def _gram(x: Tensor, cache: dict[tuple, tuple[Tensor, Tensor]]) -> Tensor:
    """Per-sample token Gram matrix x x^T of shape (B, T, T), cached by storage.

    q, k and v (and LoRA's lora_A) read the same input; its Gram is computed once.
    The cache holds x itself: a freed x could otherwise hand its address, and so
    its key, to a new tensor (e.g. a later site's concatenated calls).
    """
    key = (x.data_ptr(), x.shape, x.stride(), x.dtype)
    if key not in cache:
        cache[key] = (x, torch.bmm(x, x.transpose(1, 2)))
    return cache[key][1]


def _cat_tokens(tensors: list[Tensor], batch: int, *trailing: int) -> Tensor:
    """Reshape each call's tensor to (B, T_call, *trailing) and concatenate over T.

    A module called k times has gradient sum_calls sum_t, i.e. one call over the
    concatenated tokens, so the ghost-norm identities hold unchanged.
    """
    flat = [t.reshape(batch, -1, *trailing) for t in tensors]
    return flat[0] if len(flat) == 1 else torch.cat(flat, dim=1)


def _set_grad(p: Tensor, grad: Tensor) -> None:
    p.grad = grad.to(p.dtype).view_as(p)


def _trainable(p: Tensor | None) -> Tensor | None:
    return p if p is not None and p.requires_grad else None


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


def _affine_site(
    records: Records,
    batch: int,
    cache: dict,
    *,
    weight: Tensor | None,
    bias: Tensor | None,
    d_in: int,
    d_out: int,
    transposed: bool,
) -> tuple[Tensor, Finish]:
    """y = a W^T + b (Linear, W (o, i)) or y = a W + b (Conv1D, W (i, o)).

    Ghost norm if 2 T^2 < d_in d_out, else instantiate. ``weight``/``bias`` are
    None when frozen.
    """
    a = _cat_tokens([r[0] for r in records], batch, d_in)  # (B,T,i)
    g = _cat_tokens([r[1] for r in records], batch, d_out)  # (B,T,o)
    w, b = weight, bias
    tokens = a.shape[1]
    norm_sq = g.new_zeros(batch)
    if 2 * tokens * tokens < d_in * d_out:
        gram_g = _gram(g, cache) if w is not None else None  # (B, T, T)
        if gram_g is not None:
            norm_sq += (_gram(a, cache) * gram_g).sum(dim=(1, 2))
        if b is not None and gram_g is not None:
            norm_sq += gram_g.sum(dim=(1, 2))  # ||sum_t g_t||^2 = 1^T (g g^T) 1
        elif b is not None:
            norm_sq += g.sum(dim=1).pow(2).sum(dim=1)

        def finish(c: Tensor) -> None:
            if w is not None:  # sum_b c_b g_b^T a_b: scale the thinner side by c
                if d_out <= d_in:
                    gc = (g * c[:, None, None]).flatten(0, 1)  # (B*T, o)
                    ac = a.flatten(0, 1)  # (B*T, i)
                else:
                    gc = g.flatten(0, 1)
                    ac = (a * c[:, None, None]).flatten(0, 1)
                _set_grad(w, ac.T @ gc if transposed else gc.T @ ac)
            if b is not None:  # sum_{b,t} c_b g_bt as one matrix-vector product
                _set_grad(b, g.flatten(0, 1).T @ c.repeat_interleave(tokens))

        return norm_sq, finish
    # Few features, many tokens (LoRA's rank-r factors): per-sample G_i is small.
    per_sample = []
    if w is not None:
        grads = (
            torch.bmm(a.transpose(1, 2), g)  # (B, i, o)
            if transposed
            else torch.bmm(g.transpose(1, 2), a)  # (B, o, i)
        )
        per_sample.append((w, grads))
    if b is not None:
        per_sample.append((b, g.sum(dim=1)))  # (B, o)
    return _instantiated(per_sample, norm_sq)


def _linear_site(
    module: nn.Linear, records: Records, batch: int, cache: dict
) -> tuple[Tensor, Finish]:
    """Linear y = a W^T + b, W of shape (d_out, d_in)."""
    return _affine_site(
        records,
        batch,
        cache,
        weight=_trainable(module.weight),
        bias=_trainable(module.bias),
        d_in=module.in_features,
        d_out=module.out_features,
        transposed=False,
    )


def _conv1d_site(
    module: nn.Module, records: Records, batch: int, cache: dict
) -> tuple[Tensor, Finish]:
    """transformers' Conv1D y = a W + b, W of shape (d_in, d_out) (GPT-2)."""
    weight, bias = module.get_parameter("weight"), module.get_parameter("bias")
    d_in, d_out = weight.shape
    return _affine_site(
        records,
        batch,
        cache,
        weight=_trainable(weight),
        bias=_trainable(bias),
        d_in=d_in,
        d_out=d_out,
        transposed=True,
    )


def _embedding_site(
    module: nn.Embedding, records: Records, batch: int, cache: dict
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


def _norm_site(
    xhat: list[Tensor],
    records: Records,
    batch: int,
    weight: Tensor,
    bias: Tensor | None,
) -> tuple[Tensor, Finish]:
    """y = xhat * w (+ b): per-sample (sum_t g_t * xhat_t, sum_t g_t)."""
    width = weight.numel()
    xh = _cat_tokens(xhat, batch, width)  # (B, T, D)
    g = _cat_tokens([r[1] for r in records], batch, width)  # (B, T, D)
    per_sample = []
    if weight.requires_grad:
        per_sample.append((weight, (g * xh).sum(dim=1)))  # (B, D)
    if bias is not None and bias.requires_grad:
        per_sample.append((bias, g.sum(dim=1)))  # (B, D)
    return _instantiated(per_sample, g.new_zeros(batch))


def _layer_norm_site(
    module: nn.LayerNorm, records: Records, batch: int, cache: dict
) -> tuple[Tensor, Finish]:
    """LayerNorm y = xhat * w + b."""
    shape = module.normalized_shape
    xhat = [F.layer_norm(x, shape, None, None, module.eps) for x, _ in records]
    return _norm_site(xhat, records, batch, module.weight, module.bias)


def _rms_norm_site(
    module: nn.RMSNorm, records: Records, batch: int, cache: dict
) -> tuple[Tensor, Finish]:
    """torch RMSNorm y = xhat * w (eps None: torch's default for the input dtype)."""
    shape = module.normalized_shape
    xhat = [F.rms_norm(x, shape, None, module.eps) for x, _ in records]
    assert module.weight is not None  # no weight: no trainable parameter, no site
    return _norm_site(xhat, records, batch, module.weight, None)


def _llama_xhat(x: Tensor, eps: float) -> Tensor:
    """xhat of LlamaRMSNorm's forward, in float32 then cast to x's dtype."""
    x32 = x.to(torch.float32)
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _llama_rms_norm_site(
    module: nn.Module, records: Records, batch: int, cache: dict
) -> tuple[Tensor, Finish]:
    """transformers' Llama-form RMSNorm y = w * xhat.to(dtype)."""
    eps = vars(module)["variance_epsilon"]  # a float, checked by the probe
    xhat = [_llama_xhat(x, eps) for x, _ in records]
    return _norm_site(xhat, records, batch, module.get_parameter("weight"), None)


_SITE_FNS: dict[type[nn.Module], _SiteFn] = {
    nn.Linear: _linear_site,
    nn.Embedding: _embedding_site,
    nn.LayerNorm: _layer_norm_site,
    nn.RMSNorm: _rms_norm_site,
}
_TRANSFORMERS_SITE_FNS: dict[str, _SiteFn] = {
    _CONV1D: _conv1d_site,
    **dict.fromkeys(_LLAMA_RMS_NORMS, _llama_rms_norm_site),
}


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def layer_norms(
    module: nn.Module, records: Records, batch: int, cache: dict
) -> tuple[Tensor, Finish]:
    """Per-sample squared gradient norms (B,) of ``module``'s trainable parameters
    over its book-kept calls ``records``, and the function that, given the clip
    factors c (B,), writes sum_i c_i G_i into each ``p.grad``.

    ``module`` must be supported (:func:`unsupported_reason` returns None);
    ``cache`` shares Gram matrices between layers that read the same tensor.
    """
    fn = _SITE_FNS.get(type(module))
    if fn is None:
        fn = _TRANSFORMERS_SITE_FNS[_qualified_name(type(module))]
    return fn(module, records, batch, cache)


def _probe_forward(module: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``module``'s own forward on x with ``params`` in place of its parameters.

    A shallow copy is probed, so the module itself is never modified; an instance
    attribute ``forward`` (a wrapper bound to the original) is what runs in
    training, so it is what runs here too (and then fails the check).
    """
    probe = copy.copy(module)
    object.__setattr__(probe, "_parameters", dict(params))
    with torch.no_grad():
        return probe.forward(x)


def _formula_mismatch(module: nn.Module, name: str) -> str | None:
    """Probe a registry class: does its forward compute the formula we differentiate?"""
    own = dict(module.named_parameters(recurse=False))
    if any(True for _ in module.children()):
        return f"{name} with submodules"
    weight = own.get("weight")
    if weight is None or weight.dim() != (2 if name == _CONV1D else 1):
        return f"{name} with a weight of unexpected shape"
    gen = torch.Generator(device=weight.device).manual_seed(0)

    def randn(*shape: int) -> Tensor:
        return torch.randn(
            shape, generator=gen, dtype=torch.float64, device=weight.device
        )

    if name == _CONV1D:
        if set(own) != {"weight", "bias"}:
            return f"{name} with parameters {sorted(own)}, expected weight and bias"
        d_in, d_out = weight.shape
        probe = {"weight": randn(d_in, d_out), "bias": randn(d_out)}
        scales = [1.0]

        def formula(x: Tensor) -> Tensor:
            return x @ probe["weight"] + probe["bias"]
    else:
        eps = vars(module).get("variance_epsilon")
        if set(own) != {"weight"} or not isinstance(eps, float):
            return f"{name} without a weight and a float variance_epsilon"
        probe = {"weight": randn(*weight.shape)}
        scales = [1.0, math.sqrt(eps) if eps > 0 else 1.0]
        d_in = weight.shape[0]

        def formula(x: Tensor) -> Tensor:
            return probe["weight"] * _llama_xhat(x, eps)

    for scale in scales:
        x = scale * randn(2, 3, d_in)
        try:
            got = _probe_forward(module, probe, x)
        except Exception as err:  # a forward we cannot probe is not verified
            return f"{name} whose forward failed on a probe input ({err!r})"
        want = formula(x)
        if not (
            isinstance(got, Tensor)
            and got.shape == want.shape
            and torch.allclose(
                got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item()
            )
        ):
            return (
                f"{name} whose forward does not compute the verified formula "
                "(checked on a random probe input)"
            )
    return None


def supported_names() -> str:
    """The supported layers, for error messages."""
    torch_names = ", ".join(f"nn.{t.__name__}" for t in SUPPORTED_MODULE_TYPES)
    rms = ", ".join(n.rsplit(".", 1)[1] for n in _LLAMA_RMS_NORMS)
    return f"{torch_names}, transformers' Conv1D, or one of: {rms}"


def unsupported_reason(module: nn.Module) -> str | None:
    """Why BK cannot clip ``module``'s trainable parameters, or None if it can."""
    cls = type(module)
    if cls in SUPPORTED_MODULE_TYPES:
        if isinstance(module, nn.Embedding) and (
            module.max_norm is not None or module.scale_grad_by_freq or module.sparse
        ):
            return "nn.Embedding with max_norm, scale_grad_by_freq or sparse=True"
        return None
    name = _qualified_name(cls)
    if name in SUPPORTED_TRANSFORMERS_CLASSES:
        return _formula_mismatch(module, name)
    reason = f"type {cls.__qualname__} is not one of: {supported_names()}"
    if "rmsnorm" in cls.__name__.lower():
        reason += (
            " (an RMSNorm variant whose forward book-keeping has not verified, e.g. "
            "Gemma's xhat * (1 + weight))"
        )
    return reason
