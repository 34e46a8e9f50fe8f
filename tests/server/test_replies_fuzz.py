"""Fuzz what the server receives from sites: whatever a (broken or malicious) site
puts in its reply (wrong dtypes, shapes and names, extra or missing records, NaN,
infinite or negative counts, lists where numbers belong, malformed refusals), the
screening sorts it into a valid update, a failure with its reason, or a refusal,
and never raises: the round goes on."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedshield.server.replies import screen_replies

pytestmark = pytest.mark.usefixtures("task_identity")

GLOBAL = OrderedDict(w=torch.zeros(2, 3), b=torch.zeros(3))
DTYPES = ["float32", "float64", "float16", "int64", "int8", "bool", "complex64"]
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**40), max_value=2**40),
)
METRIC_KEYS = ["num-examples", "train-loss", "steps", "epsilon", "delta"]
METRIC_KEYS += ["noise-multiplier", "run-epsilon", "sample-rate", "anything"]
# a branch taken about one time in eight (hypothesis favours small integers, so
# ``integers(0, k) == 0`` would take it most of the time)
RARELY = st.sampled_from([False] * 7 + [True])


@st.composite
def arrays(draw: st.DrawFn) -> ArrayRecord:
    names = {"w": (2, 3), "b": (3,)}
    if draw(RARELY):
        names.pop(draw(st.sampled_from(sorted(names))))
    if draw(RARELY):
        names[draw(st.sampled_from(["extra", "w.extra"]))] = (2,)
    out = {}
    for name, shape in names.items():
        if draw(RARELY):
            shape = draw(st.sampled_from([(3, 2), (6,), (0,), (2, 3, 1), (4096,)]))
        dtype = draw(st.sampled_from(DTYPES * 2 + ["float32"] * 10))
        fill = draw(st.sampled_from([0.0, 1.0, -1e30, 0.5, math.nan, math.inf]))
        out[name] = Array(np.full(shape, fill).astype(dtype))
    return ArrayRecord(out)


@st.composite
def replies(draw: st.DrawFn) -> Message:
    content: dict[str, Any] = {}
    # mostly one ArrayRecord and one MetricRecord (else screening stops early)
    for k in range(draw(st.sampled_from([1, 1, 1, 1, 0, 2]))):
        content[f"arrays{k or ''}"] = draw(arrays())
    for k in range(draw(st.sampled_from([1, 1, 1, 1, 0, 2]))):
        keys = draw(st.lists(st.sampled_from(METRIC_KEYS), unique=True))
        values = {
            key: draw(
                st.one_of(
                    st.floats(0.001, 100.0),
                    st.integers(1, 1000),
                    NUMBERS,
                    st.lists(st.integers(-5, 5), min_size=1, max_size=3),
                )
            )
            for key in keys
        }
        content[f"metrics{k or ''}"] = MetricRecord(values)
    if draw(st.booleans()):
        content["site"] = ConfigRecord(
            {"name": draw(st.one_of(st.text(max_size=8), st.integers()))}
        )
    if draw(RARELY):
        content["refusal"] = ConfigRecord(
            {
                key: draw(st.one_of(st.text(max_size=5), NUMBERS, st.booleans()))
                for key in draw(
                    st.lists(
                        st.sampled_from(
                            ["reason", "epsilon-spent", "epsilon-after", "delta"]
                        ),
                        unique=True,
                    )
                )
            }
        )
    if draw(RARELY):
        return Message(Error(code=0, reason="boom"), reply_to=_asked())
    message = Message(content=RecordDict(content), reply_to=_asked())
    return message


def _asked() -> Message:
    return Message(
        content=RecordDict({"config": ConfigRecord({})}),
        dst_node_id=1,
        message_type="train",
    )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(replies(), min_size=1, max_size=4))
def test_any_reply_is_screened_and_never_breaks_the_round(batch: list[Message]) -> None:
    out = screen_replies(batch, GLOBAL)
    assert len(out.valid) + len(out.failures) + len(out.refusals) == len(batch)
    assert all(f["reason"] for f in out.failures)
    for site, delta in out.deltas.items():
        assert list(delta) == list(GLOBAL)
        for name, tensor in delta.items():
            assert tensor.dtype == torch.float32
            assert tensor.shape == GLOBAL[name].shape
            assert torch.isfinite(tensor).all()
        metrics = out.sites[site]
        assert metrics.get("num-examples", 1.0) > 0
        for key, value in metrics.items():
            assert math.isfinite(value) or key in ("epsilon", "run-epsilon"), key
    for refusal in out.refusals:
        assert isinstance(refusal["reason"], str)


def _update_reply(arrays: ArrayRecord) -> Message:
    return Message(
        content=RecordDict(
            {
                "arrays": arrays,
                "metrics": MetricRecord({"num-examples": 4}),
                "site": ConfigRecord({"name": "s"}),
            }
        ),
        reply_to=_asked(),
    )


@pytest.mark.parametrize("dtype", ["int64", "bool", "complex64", "uint8"])
def test_an_update_that_is_not_floating_point_is_dropped_with_its_dtype(
    dtype: str,
) -> None:
    arrays = ArrayRecord(
        {k: Array(np.zeros(tuple(v.shape)).astype(dtype)) for k, v in GLOBAL.items()}
    )
    out = screen_replies([_update_reply(arrays)], GLOBAL)
    assert not out.valid and not out.deltas
    assert f"b ({dtype})" in out.failures[0]["reason"]
    assert "not floating point" in out.failures[0]["reason"]


def test_an_update_whose_data_is_not_what_its_dtype_claims_is_dropped() -> None:
    """The npy header inside the bytes decides what is decoded: an array that
    declares float32 over int64 data is refused, not cast."""
    honest = {
        k: Array(np.zeros(tuple(v.shape), dtype=np.float32)) for k, v in GLOBAL.items()
    }
    lying = Array(np.zeros(3, dtype=np.int64))
    lying.dtype = "float32"
    arrays = ArrayRecord({**honest, "b": lying})
    out = screen_replies([_update_reply(arrays)], GLOBAL)
    assert not out.valid
    assert "b (int64)" in out.failures[0]["reason"]
