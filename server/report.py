"""What the coordinator prints: the run's setup, then one table per round with the
global accuracy, mean train loss, each site's cumulative epsilon (at delta) and
budget, the sites that failed or refused the round, and the run's client-level
epsilon when client-level DP is on."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedshield.common.schema import Metric, epsilon_from_json
from fedshield.models.loading import PACKAGED_NAMES

from .config import ServerConfig
from .rounds import RoundLog

__all__ = ["print_round", "print_start", "round_table"]

_console = Console(soft_wrap=True)


def print_start(cfg: ServerConfig, initial: dict[str, float]) -> None:
    dp = cfg.dp
    privacy = (
        f"DP-SGD ({cfg.grad_sample_mode.value}), "
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
    sa = cfg.secagg
    privacy += (
        f"; secure aggregation (SecAgg+, shares {sa.num_shares}, threshold "
        f"{sa.threshold}, {sa.quantization_bits}-bit, range ±{sa.clip_range:g})"
        if sa.enabled
        else "; NO secure aggregation (the server sees each update)"
    )
    cdp = cfg.client_dp
    if cdp.enabled:
        privacy += (
            f"; client-level DP: clip {cdp.clip_norm:g}, noise multiplier "
            f"{cdp.noise_multiplier:g}, delta={cdp.delta:g}"
        )
    source = cfg.model.source or f"packaged {PACKAGED_NAMES[cfg.model.task]}"
    _console.print(
        f"[bold]fedshield[/bold]: {cfg.num_rounds} rounds, {cfg.model.task.value} "
        f"model {source} ({cfg.model.finetune.value}), "
        f"{privacy}\nout-dir: {cfg.out_dir}\ninitial {test_metrics(initial)}"
    )


def test_metrics(m: dict[str, Any]) -> str:
    """The central evaluation (``accuracy``, ``loss``, ``perplexity`` for a causal
    LM) in words."""
    ppl = m.get("perplexity")
    if ppl is not None:
        return (
            f"test perplexity {ppl:.2f}, token accuracy {m['accuracy']:.4f}, "
            f"loss {m['loss']:.4f}"
        )
    words = f"test accuracy {m['accuracy']:.4f}, test loss {m['loss']:.4f}"
    if m.get("macro_f1") is not None:
        words += (
            f", macro F1 {m['macro_f1']:.4f} (precision {m['macro_precision']:.4f}, "
            f"recall {m['macro_recall']:.4f})"
        )
    if m.get("robust_accuracy") is not None:
        words += f", robust accuracy {m['robust_accuracy']:.4f}"
    for name, share in (m.get("attack") or {}).items():
        words += f", {name.replace('_', ' ')} {share:.4f}"
    if m.get("char_attack_success") is not None:
        words += f", character-attack success {m['char_attack_success']:.4f}"
    return words


def _epsilon(m: dict[str, Any]) -> str:
    """A site's epsilon as logged live (a float) or read back from summary.json."""
    eps = m.get(Metric.EPSILON)
    if eps is None:
        return WITHHELD
    if m.get(Metric.NOISE_MULTIPLIER, 1.0) == 0.0:
        return "no DP (inf)"
    eps = epsilon_from_json(eps)
    if math.isinf(eps):
        return "no DP (inf)"
    budget = m.get(Metric.MAX_EPSILON, 0.0)
    return f"{eps:.3f}" + (f" / {budget:g}" if budget else "")


WITHHELD = "withheld"  # kept at the site by its policy (release-metrics)


def _value(m: dict[str, Any], key: str, fmt: str) -> str:
    return format(m[key], fmt) if key in m else WITHHELD


def round_table(log: RoundLog, num_rounds: int) -> Table:
    client = (
        f", client-level epsilon {log.client_epsilon:.3f}"
        if log.client_epsilon is not None
        else ""
    )
    if log.saturated:
        client += f", {log.saturated} update values clipped by secagg"
    if log.guard is not None:
        client += (
            f", root guard: mean {log.guard['action']} (cosine "
            f"{log.guard['cosine']:.2f})"
        )
    table = Table(
        title=f"Round {log.server_round}/{num_rounds}: "
        f"{test_metrics(log.as_dict())}, mean train loss "
        f"{WITHHELD if math.isnan(log.train_loss) else format(log.train_loss, '.4f')}"
        f"{client} ({log.seconds:.0f}s)"
    )
    for col in (
        "site",
        "examples",
        "steps",
        "train loss",
        "epsilon (cumulative / budget)",
        "delta",
    ):
        table.add_column(col, justify="left" if col == "site" else "right")
    for name, m in sorted(log.sites.items()):
        table.add_row(
            escape(name),  # names and reasons come from the sites: never markup
            _value(m, Metric.NUM_EXAMPLES, ".0f"),
            _value(m, Metric.STEPS, ".0f"),
            _value(m, Metric.TRAIN_LOSS, ".4f"),
            _epsilon(m),
            _value(m, Metric.DELTA, "g"),
        )
    for failure in log.failures:
        table.add_row(
            escape(failure["site"]),
            "-",
            "-",
            "-",
            "failed: " + escape(failure["reason"]),
            "-",
        )
    for refusal in log.refusals:
        table.add_row(
            escape(refusal["site"]),
            "-",
            "-",
            "-",
            "refused: " + escape(str(refusal["reason"])),
            "-",
        )
    return table


def print_round(log: RoundLog, num_rounds: int) -> None:
    _console.print(round_table(log, num_rounds))
