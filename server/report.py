"""What the coordinator prints: the run's setup, then one table per round with the
global accuracy, mean train loss and each site's cumulative epsilon (at delta)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from client.config import ClientConfig

from .config import ServerConfig
from .rounds import RoundLog

__all__ = ["print_round", "print_start", "round_table"]

_console = Console(soft_wrap=True)


def print_start(
    cfg: ServerConfig, client: ClientConfig, initial: dict[str, float]
) -> None:
    dp = client.dp
    privacy = (
        f"DP-SGD ({client.grad_sample_mode.value}), "
        + (
            f"target epsilon {dp.target_epsilon:g}"
            if dp.target_epsilon > 0
            else f"noise multiplier {dp.noise_multiplier:g}"
        )
        + f", C={dp.max_grad_norm:g}, delta={dp.delta:g}, "
        + f"{dp.accountant.value} accountant"
        if dp.enabled
        else "NO differential privacy (comparison run)"
    )
    _console.print(
        f"[bold]fedshield[/bold]: {cfg.num_rounds} rounds, model "
        f"{cfg.model.source or 'packaged all-MiniLM-L6-v2'} "
        f"({cfg.model.finetune.value}), "
        f"{privacy}\nout-dir: {cfg.out_dir}\ninitial test accuracy "
        f"{initial['accuracy']:.4f}, loss {initial['loss']:.4f}"
    )


def round_table(log: RoundLog, num_rounds: int) -> Table:
    table = Table(
        title=f"Round {log.server_round}/{num_rounds}: "
        f"test accuracy {log.accuracy:.4f}, "
        f"test loss {log.loss:.4f}, mean train loss {log.train_loss:.4f} "
        f"({log.seconds:.0f}s)"
    )
    for col in (
        "site",
        "examples",
        "steps",
        "train loss",
        "epsilon (cumulative)",
        "delta",
    ):
        table.add_column(col, justify="left" if col == "site" else "right")
    for name, m in sorted(log.sites.items()):
        table.add_row(
            name,
            f"{int(m['num-examples'])}",
            f"{int(m['steps'])}",
            f"{m['train-loss']:.4f}",
            f"{m['epsilon']:.3f}" if m["delta"] > 0 else "no DP",
            f"{m['delta']:g}",
        )
    for failure in log.failures:
        table.add_row(
            failure["site"], "-", "-", "-", "failed: " + failure["reason"], "-"
        )
    return table


def print_round(log: RoundLog, num_rounds: int) -> None:
    _console.print(round_table(log, num_rounds))
