import stat
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedshield.common.config import ConfigError
from fedshield.server.app import _check_resumable, _prepare_out_dir
from fedshield.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_signer,
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


def _ckpt(server_round: int = 2, scale: float = 1.0) -> Checkpoint:
    return Checkpoint(
        server_round=server_round,
        state={"w": torch.arange(4.0) * scale},
        history={"run_key": "k", "rounds": [{"round": r} for r in range(server_round)]},
        run_config={"seed": 1},
    )


def test_a_signed_checkpoint_resumes_with_its_key_only(tmp_path: Path) -> None:
    """Whoever can write out-dir, but holds not the coordinator's key, cannot
    hand a resumed run a model or history of their own."""
    out, keys = tmp_path / "run", tmp_path / "coordinator"
    signer = checkpoint_signer(keys / "checkpoint_key.pem")
    save_checkpoint(out, _ckpt(1), signer=signer)
    save_checkpoint(out, _ckpt(2), signer=signer)
    assert stat.S_IMODE((keys / "checkpoint_key.pem").stat().st_mode) == 0o600
    verifier = checkpoint_signer(keys / "checkpoint_key.pem").public_key()
    assert load_checkpoint(out, verifier=verifier).server_round == 2
    honest = (out / "checkpoint.pt").read_bytes(), (out / "checkpoint.sig.json")

    # the state swapped for another (a model of the writer's own)
    save_checkpoint(out, _ckpt(2, scale=-1.0))  # unsigned write over the file
    (out / "checkpoint.sig.json").write_bytes(honest[1].read_bytes())
    with pytest.raises(CheckpointError, match="changed after"):
        load_checkpoint(out, verifier=verifier)
    # ... and re-signed with the writer's own key, signature file and all
    save_checkpoint(out, _ckpt(2, scale=-1.0), signer=Ed25519PrivateKey.generate())
    with pytest.raises(CheckpointError, match="someone else wrote it"):
        load_checkpoint(out, verifier=verifier)
    # ... or with its signature removed
    (out / "checkpoint.sig.json").unlink()
    with pytest.raises(CheckpointError, match="found none"):
        load_checkpoint(out, verifier=verifier)
    # a signed checkpoint is not resumed by a run that names no key
    save_checkpoint(out, _ckpt(2), signer=signer)
    with pytest.raises(CheckpointError, match="names no `checkpoint.signing-key`"):
        load_checkpoint(out)


def test_a_crash_between_the_signature_and_the_checkpoint_resumes_the_last_one(
    tmp_path: Path, monkeypatch
) -> None:
    signer = Ed25519PrivateKey.generate()
    save_checkpoint(tmp_path, _ckpt(1), signer=signer)
    import fedshield.server.checkpoint as module

    def crash(path: Path, data: bytes, **kw: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(module, "atomic_write_bytes", crash)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(tmp_path, _ckpt(2), signer=signer)
    monkeypatch.undo()
    back = load_checkpoint(tmp_path, verifier=signer.public_key())
    assert back.server_round == 1
    save_checkpoint(tmp_path, _ckpt(2), signer=signer)  # the next write goes on
    assert load_checkpoint(tmp_path, verifier=signer.public_key()).server_round == 2


def test_the_signing_key_lives_outside_out_dir(tmp_path, default_run_config) -> None:
    def cfg(key: str) -> ServerConfig:
        return ServerConfig.from_run_config(
            dict(default_run_config, **{"out-dir": str(tmp_path / "run"),
                                        "checkpoint.signing-key": key})
        )  # fmt: skip

    assert cfg("").signing_key_path is None
    assert cfg(str(tmp_path / "keys" / "k.pem")).signing_key_path is not None
    for bad in ("keys/k.pem", str(tmp_path / "run" / "k.pem")):
        with pytest.raises(ConfigError, match="outside"):
            cfg(bad)


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
