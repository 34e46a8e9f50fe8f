"""``fedshield evaluate``: a finished run's final model on the central test set,
and with ``--attack`` its robustness (embedding PGD accuracy, character-attack
success; :mod:`fedshield.privacy.adversarial.robustness`).

    fedshield evaluate runs/demo                       # clean accuracy and loss
    fedshield evaluate runs/demo --attack              # + robustness
    fedshield evaluate runs/demo --attack --epsilon 0.1 --char-edits 5 \\
        --out runs/demo/robustness-0.1.json

The attack settings default to the run's ``eval.*`` keys. Results go to
RUN_DIR/evaluation.json unless ``--out`` names another file; an existing file is
never overwritten. Exit code 2 when the run cannot be evaluated.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedshield.common.config import ConfigError
from fedshield.common.device import pick_device
from fedshield.common.storage import atomic_write_json
from fedshield.models import TaskKind, tasks
from fedshield.privacy.adversarial.robustness import (
    RobustnessConfig,
    evaluate_robustness,
)
from fedshield.simulations.apps import central_test
from fedshield.simulations.audit import AuditError
from fedshield.simulations.audit.run import load_final_model, load_run

__all__ = ["evaluate"]

console = Console(soft_wrap=True)


def evaluate(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A finished simulation's --out.")
    ],
    attack: Annotated[
        bool, typer.Option("--attack", help="Also attack the model (classifier).")
    ] = False,
    epsilon: Annotated[
        float | None,
        typer.Option("--epsilon", help="Embedding PGD radius (eval.robust-epsilon)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", help="Embedding PGD steps (eval.robust-steps)."),
    ] = None,
    char_edits: Annotated[
        int | None,
        typer.Option("--char-edits", help="Words edited per text (eval.char-edits)."),
    ] = None,
    examples: Annotated[
        int | None,
        typer.Option(
            "--examples", help="Test records attacked (eval.attack-examples)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="JSON file (default RUN_DIR/evaluation.json)."),
    ] = None,
) -> None:
    """Evaluate a finished run's final model; with --attack, its robustness."""
    run_dir = run_dir.expanduser().resolve()
    target = (out or run_dir / "evaluation.json").expanduser()
    if target.exists():
        console.print(
            f"[red]{target} exists; it is never overwritten. Choose another --out "
            "or remove it.[/red]"
        )
        raise typer.Exit(2)
    try:
        result = _evaluate(
            run_dir,
            attack=attack,
            overrides={
                "epsilon": epsilon,
                "steps": steps,
                "char_edits": char_edits,
                "examples": examples,
            },
        )
    except (AuditError, ConfigError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from err
    atomic_write_json(target, result)
    for key, value in result["metrics"].items():
        console.print(
            f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}"
        )
    console.print(f"Wrote {target}")


def _evaluate(
    run_dir: Path, *, attack: bool, overrides: dict[str, Any]
) -> dict[str, Any]:
    run = load_run(run_dir)
    loaded = load_final_model(run)
    test = central_test(str(run.run_config["data.test-path"]), run.run_config)
    device = pick_device()
    batch_size = int(run.run_config["eval.batch-size"])
    clean = tasks.evaluate(
        loaded.model,
        tasks.encode(test, loaded.tokenizer, loaded.config),
        loaded.config,
        batch_size=batch_size,
        device=device,
    )
    metrics: dict[str, Any] = {
        "accuracy": clean.accuracy,
        "loss": clean.loss,
        "examples": clean.num_examples,
    }
    if clean.perplexity is not None:
        metrics["perplexity"] = clean.perplexity
    settings: dict[str, Any] = {}
    if attack:
        if loaded.config.task is TaskKind.CAUSAL_LM:
            raise ConfigError(
                "--attack measures a classifier's robust accuracy and character-"
                "attack success; this run trained a causal LM. Evaluate it without "
                "--attack."
            )
        cfg = dataclasses.replace(
            RobustnessConfig.from_run_config(run.run_config),
            enabled=True,
            **{k: v for k, v in overrides.items() if v is not None},
        )
        robust = evaluate_robustness(
            loaded.model,
            loaded.tokenizer,
            test,
            cfg,
            max_length=loaded.config.max_length,
            batch_size=batch_size,
            device=device,
            seed=int(run.run_config["seed"]),
        )
        metrics.update(robust.to_json())
        settings = {
            "robust_steps": cfg.steps,
            "norm": cfg.norm.value,
            "char_edits": cfg.char_edits,
        }
    return {
        "run_dir": str(run_dir),
        "metrics": metrics,
        "attack_settings": settings,
        "adversarial_training": {
            k: run.run_config[k]
            for k in run.run_config
            if str(k).startswith("adversarial.")
        },
    }
