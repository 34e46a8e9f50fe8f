"""The one place that converts trainable model state to and from Flower records.

Only *trainable* parameters travel (LoRA adapters + task head, or every parameter
in full fine-tuning); frozen base weights are loaded locally at each site. Names
are the unwrapped module's names: an Opacus ``GradSampleModule`` is unwrapped here
so that no ``_module.`` prefix ever reaches a message or a checkpoint.

A site's update is the delta ``local - global`` of that state, float32; the server
applies the weighted mean delta: ``global <- global + sum_k w_k delta_k``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from flwr.app import ArrayRecord

__all__ = [
    "StateMismatchError",
    "add_delta",
    "arrays_to_state",
    "check_same_layout",
    "flatten_state",
    "load_trainable_state",
    "state_delta",
    "state_to_arrays",
    "trainable_state",
    "unflatten_state",
    "unwrap",
]

State = dict[str, torch.Tensor]


class StateMismatchError(ValueError):
    """Two states (or a state and a model) disagree on names, shapes or values."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside an Opacus wrapper (or the module itself)."""
    inner = getattr(model, "_module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


def trainable_state(model: torch.nn.Module) -> State:
    """Detached float32 CPU copies of every parameter with ``requires_grad``."""
    return OrderedDict(
        (name, p.detach().to("cpu", torch.float32).clone())
        for name, p in unwrap(model).named_parameters()
        if p.requires_grad
    )


def check_same_layout(expected: State, found: State, what: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(found[k].shape)}"
        for k in expected
        if k in found and expected[k].shape != found[k].shape
    ]
    if missing or unexpected or shapes:
        raise StateMismatchError(
            f"{what} does not match the model's trainable parameters "
            f"(missing: {missing[:5]}{'...' if len(missing) > 5 else ''}; "
            f"unexpected: {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; "
            f"shape mismatches: {shapes[:5]}). Both sides must use the same "
            "model.* configuration (source, finetune mode, LoRA r and targets)."
        )


def _check_finite(state: State, what: str) -> None:
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise StateMismatchError(
                f"{what} holds {bad} non-finite value(s) (NaN/inf) in {name!r}. "
                "The update is rejected; check the site's learning rate and data."
            )


def load_trainable_state(model: torch.nn.Module, state: State) -> None:
    """Copy ``state`` into the model's trainable parameters (strict)."""
    target = unwrap(model)
    params = OrderedDict(
        (n, p) for n, p in target.named_parameters() if p.requires_grad
    )
    check_same_layout(
        OrderedDict((n, p.detach()) for n, p in params.items()),
        state,
        "The received state",
    )
    _check_finite(state, "The received state")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(p.device, p.dtype))


def state_to_arrays(state: State) -> ArrayRecord:
    """Pack a state into a Flower ``ArrayRecord`` (names kept, order kept)."""
    return ArrayRecord(OrderedDict((k, v.detach().cpu()) for k, v in state.items()))


def arrays_to_state(record: ArrayRecord, *, what: str = "The update") -> State:
    """Unpack an ``ArrayRecord`` into float32 tensors; reject arrays whose data is
    not floating point (an integer, boolean or complex "update" would be cast
    silently, the imaginary part dropped; the data decides, not the dtype the
    sender declares) and non-finite values."""
    try:
        decoded = record.to_torch_state_dict()
    except Exception as err:  # malformed payloads raise various errors in flwr
        raise StateMismatchError(
            f"{what} could not be decoded as tensors ({type(err).__name__}: {err})."
        ) from err
    wrong = {
        k: str(v.dtype).removeprefix("torch.")
        for k, v in decoded.items()
        if not v.is_floating_point()
    }
    if wrong:
        raise StateMismatchError(
            f"{what} holds arrays that are not floating point: "
            + ", ".join(f"{k} ({v})" for k, v in sorted(wrong.items())[:5])
            + "."
        )
    state = OrderedDict((k, v.to(torch.float32)) for k, v in decoded.items())
    _check_finite(state, what)
    return state


def state_delta(new: State, old: State) -> State:
    """``new - old`` for every entry (the site's update)."""
    check_same_layout(old, new, "The local state")
    return OrderedDict((k, new[k] - old[k]) for k in old)


def add_delta(state: State, delta: State, *, scale: float = 1.0) -> State:
    """``state + scale * delta`` (the server's model update)."""
    if not math.isfinite(scale):
        raise StateMismatchError(f"Delta scale must be finite. Found {scale}.")
    check_same_layout(state, delta, "The aggregated delta")
    _check_finite(delta, "The aggregated delta")
    return OrderedDict((k, state[k] + scale * delta[k]) for k in state)


def flatten_state(state: State) -> torch.Tensor:
    """All tensors of ``state`` as one float32 vector, in sorted-name order (the
    layout secure aggregation masks; :func:`unflatten_state` inverts it)."""
    return torch.cat([state[k].detach().reshape(-1).float() for k in sorted(state)])


def unflatten_state(vector: torch.Tensor, template: State) -> State:
    """Split ``vector`` into tensors with ``template``'s names and shapes."""
    total = sum(t.numel() for t in template.values())
    if vector.shape != (total,):
        raise StateMismatchError(
            f"A flat update has {tuple(vector.shape)} values; the model's trainable "
            f"state has {total}."
        )
    out: State = {}
    offset = 0
    for name in sorted(template):
        t = template[name]
        out[name] = vector[offset : offset + t.numel()].reshape(t.shape).to(t.dtype)
        offset += t.numel()
    return OrderedDict((k, out[k]) for k in template)
