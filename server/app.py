"""The fedshield ServerApp (Flower Message API): the coordinator of a run.

Each round: sample sites, send the global trainable state, collect the sites'
deltas (or their budget refusals), aggregate them with FedAvg (or, with
client-level DP, the noisy uniform mean of clipped deltas, recorded in the server's
ledger), evaluate on the central test split, checkpoint atomically and rewrite
``summary.json``. ``resume=true`` continues from the checkpoint in ``out-dir``;
sites compose epsilon from their own ledgers, and the server's client-level
epsilon from its ledger, so both keep composing across the restart.

Run it with ``flwr run .`` or ``fedshield simulate``.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from fedshield.client.config import ClientConfig
from fedshield.models import (
    FinetuneMode,
    MeanPoolingClassifier,
    load_trainable_state,
    trainable_state,
)
from fedshield.models.config import ConfigError
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from .central_dp import ClientLevelAccountant
from .checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    CheckpointError,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
)
from .config import ServerConfig
from .evaluate import CentralEvaluator, central_test_data
from .report import print_round, print_start
from .rounds import RoundAborted, run_round
from .summary import build_summary, write_summary

__all__ = ["app"]

logger = logging.getLogger(__name__)

app = ServerApp()

# Keys that may differ between a run and its resumption; all others must match.
RESUMABLE_KEYS = {"num-server-rounds", "resume", "round-timeout"}


def _check_resumable(saved: dict[str, Any], now: dict[str, Any]) -> None:
    changed = sorted(
        k
        for k in set(saved) | set(now)
        if k not in RESUMABLE_KEYS and saved.get(k) != now.get(k)
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise CheckpointError(
            "Cannot resume: the run config differs from the checkpoint's in "
            f"{details}. "
            "Resume with the original settings (only num-server-rounds may grow)."
        )


def _prepare_out_dir(cfg: ServerConfig) -> None:
    if cfg.resume:
        return
    existing = [
        n for n in ("summary.json", CHECKPOINT_NAME) if (cfg.out_dir / n).exists()
    ]
    if existing:
        raise CheckpointError(
            f"out-dir {cfg.out_dir} already holds a run ({', '.join(existing)}). It is "
            "left untouched. Choose a new out-dir, or set resume=true to continue it."
        )
    cfg.out_dir.mkdir(parents=True, exist_ok=True)


def _save_final_weights(
    evaluator: CentralEvaluator, cfg: ServerConfig
) -> dict[str, str]:
    """``final_trainable.safetensors`` (always; reload with ``load_model`` on the
    summary's config + ``load_trainable_state``), plus a Hugging Face folder: the
    peft adapter (LoRA, head included), or the fine-tuned model/encoder (full)."""
    from safetensors.torch import save_file

    state = trainable_state(evaluator.loaded.model)
    path = cfg.out_dir / "final_trainable.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model: Any = evaluator.loaded.model  # peft / transformers / our head
    if cfg.model.finetune is FinetuneMode.LORA:
        folder = "adapter"
        model.save_pretrained(str(cfg.out_dir / folder))
    elif isinstance(model, MeanPoolingClassifier):
        folder = "encoder"  # the classifier is in final_trainable.safetensors
        encoder: Any = model.encoder
        encoder.save_pretrained(str(cfg.out_dir / folder))
    else:
        folder = "model"
        model.save_pretrained(str(cfg.out_dir / folder))
    evaluator.loaded.tokenizer.save_pretrained(str(cfg.out_dir / folder))
    return {"trainable_state": path.name, "pretrained": folder}


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = dict(context.run_config)
    cfg = ServerConfig.from_run_config(run_config)
    client_cfg = ClientConfig.from_run_config(
        run_config
    )  # fail here, once, not per site
    _prepare_out_dir(cfg)
    evaluator = CentralEvaluator(cfg, central_test_data(cfg, run_config))

    if cfg.resume:
        ckpt = load_checkpoint(cfg.out_dir)
        _check_resumable(ckpt.run_config, run_config)
        if ckpt.server_round >= cfg.num_rounds:
            raise ConfigError(
                f"The checkpoint already holds {ckpt.server_round} round(s) and "
                f"num-server-rounds is {cfg.num_rounds}. Raise num-server-rounds to "
                "train further."
            )
        state, history, start = ckpt.state, ckpt.history, ckpt.server_round + 1
        logger.info("Resuming %s after round %d", cfg.out_dir, ckpt.server_round)
    else:
        state = trainable_state(evaluator.loaded.model)
        init = evaluator(state)
        history = {
            "run_key": secrets.token_hex(16),
            "initial": {"accuracy": init.accuracy, "loss": init.loss},
            "rounds": [],
        }
        start = 1

    strategy = FedAvg(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_train_sites,
        min_evaluate_nodes=1,
        min_available_nodes=cfg.min_train_sites,
    )
    central = (
        ClientLevelAccountant(
            out_dir=cfg.out_dir,
            run_id=history["run_key"],
            config=client_cfg.client_dp,
            accountant=client_cfg.dp.accountant,
        )
        if client_cfg.client_dp.enabled
        else None
    )
    print_start(cfg, client_cfg, history["initial"])
    progress_path = cfg.out_dir / "progress.json"

    def summary(
        status: str, weights: dict[str, str] | None = None, error: str | None = None
    ) -> None:
        write_summary(
            cfg.out_dir,
            build_summary(
                run_config=run_config,
                run_key=history["run_key"],
                initial=history["initial"],
                rounds=history["rounds"],
                status=status,
                dp_enabled=client_cfg.dp.enabled,
                accountant=client_cfg.dp.accountant.value,
                client_level=central.summary() if central else None,
                weights=weights,
                error=error,
            ),
        )

    for server_round in range(start, cfg.num_rounds + 1):

        def progress(done: int, total: int, rnd: int = server_round) -> None:
            atomic_write_json(
                progress_path,
                {
                    "round": rnd,
                    "num_rounds": cfg.num_rounds,
                    "sites_done": done,
                    "sites_total": total,
                    "status": "running",
                },
            )

        try:
            state, log = run_round(
                grid=grid,
                strategy=strategy,
                train_config=ConfigRecord(
                    {"run-key": history["run_key"], "out-dir": str(cfg.out_dir)}
                ),
                server_round=server_round,
                global_state=state,
                min_sites=cfg.min_train_sites,
                timeout=cfg.round_timeout,
                progress=progress,
                client_dp=client_cfg.client_dp,
                secagg=client_cfg.secagg,
            )
        except RoundAborted as err:
            summary("aborted", error=str(err))  # earlier rounds stay checkpointed
            atomic_write_json(
                progress_path, {"round": server_round, "status": "aborted"}
            )
            raise
        if central is not None:  # recorded before the noisy model is used
            log.client_epsilon = central.record_round(
                server_round=server_round, sampled=log.sampled, available=log.available
            )
        result = evaluator(state)
        log.accuracy, log.loss = result.accuracy, result.loss
        history["rounds"].append(log.as_dict())
        save_checkpoint(
            cfg.out_dir,
            Checkpoint(
                server_round=server_round,
                state=state,
                history=history,
                run_config=run_config,
            ),
        )
        summary("running")
        print_round(log, cfg.num_rounds)

    load_trainable_state(evaluator.loaded.model, state)  # the model to save
    summary("completed", _save_final_weights(evaluator, cfg))
    atomic_write_json(
        progress_path,
        {"round": cfg.num_rounds, "num_rounds": cfg.num_rounds, "status": "completed"},
    )
    logger.info("Run complete: %s", Path(cfg.out_dir) / "summary.json")
