"""Client-level DP at the site: the update that leaves is clipped to S.

The server's noise z S only protects a site if the site's whole update has L2 norm
at most S. Under secure aggregation the server cannot check that (it sees only the
masked vector), so the site's own train handler must clip, and leave room for the
stochastic rounding of the quantizer. These tests run the real ``@app.train``
handler of a deployed-style site (tiny BERT, PII scrubbing off for speed) and read
the update it hands on: to the server in the clear, or to the secagg mod.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.app import train
from models import arrays_to_state, load_model, state_to_arrays, trainable_state
from models.config import ModelConfig
from privacy.client_dp import l2_norm
from privacy.secagg import SecAggConfig

pytestmark = pytest.mark.usefixtures("task_identity")


def _update_norm(tmp_path: Path, run_config: dict[str, Any]) -> tuple[float, int]:
    """L2 norm and size of the delta the site's train handler produces."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "site.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(
            (f"review {i}, {'great' if i % 2 else 'dull'}", i % 2) for i in range(24)
        )
    loaded = load_model(ModelConfig.from_run_config(run_config))
    msg = Message(
        content=RecordDict(
            {
                "arrays": state_to_arrays(trainable_state(loaded.model)),
                "config": ConfigRecord({"server-round": 1, "run-key": "clip"}),
            }
        ),
        dst_node_id=7,
        message_type="train",
    )
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"data-path": str(data), "state-dir": str(tmp_path / "state")},
        state=RecordDict(),
        run_config=run_config,
    )
    reply = train(msg, context)
    assert reply.has_content() and "refusal" not in reply.content.config_records
    delta = arrays_to_state(reply.content.array_records["arrays"], what="update")
    return l2_norm(delta), sum(t.numel() for t in delta.values())


@pytest.fixture()
def clip_run_config(tiny_run_config) -> dict[str, Any]:
    return {
        **tiny_run_config,
        "pii.mode": "off",
        "dp.noise-multiplier": 0.5,
        "train.head-lr": 0.5,  # a large update, far above the clip norm
    }


def test_site_clips_its_whole_update_to_the_client_level_norm(
    tmp_path: Path, clip_run_config
) -> None:
    raw, _ = _update_norm(
        tmp_path / "raw", {**clip_run_config, "secagg.enabled": False}
    )
    clip = 0.01
    assert raw > 10 * clip  # the control: unclipped, the update is far larger
    clipped, _ = _update_norm(
        tmp_path / "clipped",
        {
            **clip_run_config,
            "secagg.enabled": False,
            "client-dp.enabled": True,
            "client-dp.clip-norm": clip,
        },
    )
    assert clipped == pytest.approx(clip, rel=1e-4)


def test_under_secure_aggregation_the_site_leaves_room_for_quantization(
    tmp_path: Path, clip_run_config
) -> None:
    """The masked sum adds stochastic rounding of up to 2 clip-range / levels per
    coordinate; the site clips to S minus that bound, so the quantized update
    still has norm <= S."""
    clip = 0.05
    cfg = {
        **clip_run_config,
        "secagg.enabled": True,
        "client-dp.enabled": True,
        "client-dp.clip-norm": clip,
    }
    norm, numel = _update_norm(tmp_path, cfg)
    q = SecAggConfig.from_run_config(cfg).quantizer
    room = math.sqrt(numel) * 2 * q.clip_range / q.levels
    assert 0 < room < clip
    assert norm == pytest.approx(clip - room, rel=1e-4)
