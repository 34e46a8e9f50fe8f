from collections import OrderedDict

import pytest
import torch
from opacus import GradSampleModule

from fedshield.models import (
    FinetuneMode,
    ModelConfig,
    StateMismatchError,
    add_delta,
    arrays_to_state,
    load_model,
    load_trainable_state,
    state_delta,
    state_to_arrays,
    trainable_state,
)


def test_arrays_round_trip_is_lossless(tiny_model_dir) -> None:
    model = load_model(ModelConfig(source=str(tiny_model_dir), lora_r=4)).model
    state = trainable_state(model)
    back = arrays_to_state(state_to_arrays(state))
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_delta_then_add_recovers_the_new_state() -> None:
    old = OrderedDict(a=torch.randn(3, 2), b=torch.randn(4))
    new = OrderedDict(a=torch.randn(3, 2), b=torch.randn(4))
    d = state_delta(new, old)
    torch.testing.assert_close(add_delta(old, d), new)
    torch.testing.assert_close(
        add_delta(old, d, scale=0.5)["b"], old["b"] + 0.5 * d["b"]
    )


def test_load_trainable_state_into_a_fresh_model(tiny_model_dir) -> None:
    cfg = ModelConfig(source=str(tiny_model_dir), finetune=FinetuneMode.FULL)
    state = {k: v + 1.0 for k, v in trainable_state(load_model(cfg).model).items()}
    other = load_model(cfg).model
    load_trainable_state(other, state)
    after = trainable_state(other)
    assert all(torch.equal(after[k], state[k]) for k in state)


def test_opacus_wrapper_never_leaks_module_prefix(tiny_model_dir) -> None:
    model = load_model(ModelConfig(source=str(tiny_model_dir), lora_r=4)).model
    wrapped = GradSampleModule(model)
    names = list(trainable_state(wrapped))
    assert names == list(trainable_state(model))
    assert not any(n.startswith("_module.") for n in names)


def test_mismatched_names_or_shapes_are_rejected() -> None:
    old = OrderedDict(a=torch.zeros(2))
    with pytest.raises(StateMismatchError, match="missing"):
        add_delta(old, OrderedDict(b=torch.zeros(2)))
    with pytest.raises(StateMismatchError, match="shape"):
        add_delta(old, OrderedDict(a=torch.zeros(3)))


def test_non_finite_update_is_rejected() -> None:
    bad = OrderedDict(a=torch.tensor([1.0, float("nan")]))
    with pytest.raises(StateMismatchError, match="non-finite"):
        arrays_to_state(state_to_arrays(bad))
    with pytest.raises(StateMismatchError, match="non-finite"):
        add_delta(OrderedDict(a=torch.zeros(2)), bad)
