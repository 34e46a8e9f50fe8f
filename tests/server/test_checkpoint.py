from pathlib import Path

import pytest
import torch

from fedshield.server.app import _check_resumable, _prepare_out_dir
from fedshield.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from fedshield.server.config import ServerConfig


def test_checkpoint_round_trip_leaves_no_temp_files(tmp_path: Path) -> None:
    ckpt = Checkpoint(
        server_round=2,
        state={"w": torch.arange(4.0)},
        history={"run_key": "k", "rounds": [{"round": 1}]},
        run_config={"seed": 1},
    )
    save_checkpoint(tmp_path, ckpt)
    save_checkpoint(tmp_path, ckpt)  # overwrite atomically
    back = load_checkpoint(tmp_path)
    assert back.server_round == 2 and torch.equal(back.state["w"], torch.arange(4.0))
    assert back.history == ckpt.history
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_resume_without_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="resume=false"):
        load_checkpoint(tmp_path)


def test_corrupt_checkpoint_is_reported(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(tmp_path)


def test_resume_refuses_a_changed_setup_but_allows_more_rounds() -> None:
    saved = {"num-server-rounds": 2, "resume": False, "dp.noise-multiplier": 1.0}
    _check_resumable(saved, dict(saved, **{"num-server-rounds": 4, "resume": True}))
    with pytest.raises(CheckpointError, match="dp.noise-multiplier"):
        _check_resumable(saved, dict(saved, **{"dp.noise-multiplier": 0.5}))


def test_a_federation_that_lost_a_site_resumes_with_a_threshold_that_fits() -> None:
    """Fewer sites left: min-train-sites and secagg.threshold may be lowered on
    resume (each site's policy floors still hold); the privacy setup may not."""
    saved = {"min-train-sites": 3, "secagg.threshold": 3, "secagg.clip-range": 8.0}
    _check_resumable(
        saved, dict(saved, **{"min-train-sites": 2, "secagg.threshold": 2})
    )
    with pytest.raises(CheckpointError, match="secagg.clip-range"):
        _check_resumable(saved, dict(saved, **{"secagg.clip-range": 16.0}))


def test_new_run_never_overwrites_an_existing_one(
    tmp_path: Path, default_run_config
) -> None:
    (tmp_path / "summary.json").write_text("{}")
    cfg = ServerConfig.from_run_config(
        dict(default_run_config, **{"out-dir": str(tmp_path)})
    )
    with pytest.raises(CheckpointError, match="left untouched"):
        _prepare_out_dir(cfg)
    assert (tmp_path / "summary.json").read_text() == "{}"


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_final_weights_reload_into_a_fresh_model(tmp_path, tiny_run_config, finetune):
    from safetensors.torch import load_file

    from fedshield.models import load_model, load_trainable_state, trainable_state
    from fedshield.server.app import _save_final_weights
    from fedshield.server.evaluate import CentralEvaluator
    from fedshield.simulations.scenario import Scenario

    run_config = dict(
        tiny_run_config, **{"out-dir": str(tmp_path), "model.finetune": finetune}
    )
    cfg = ServerConfig.from_run_config(run_config)
    evaluator = CentralEvaluator(
        cfg, Scenario.from_run_config(run_config).central_test()
    )
    state = {k: v + 0.5 for k, v in trainable_state(evaluator.loaded.model).items()}
    evaluator(state)
    saved = _save_final_weights(evaluator, cfg)
    assert (tmp_path / saved["pretrained"] / "tokenizer_config.json").is_file()
    fresh = load_model(cfg.model).model
    load_trainable_state(fresh, load_file(str(tmp_path / saved["trainable_state"])))
    after = trainable_state(fresh)
    assert all(torch.equal(after[k], state[k]) for k in state)
