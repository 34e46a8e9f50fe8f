"""The run's summary.json: per round (accuracy, loss, refusals) and per site
(what each site's policy releases: sample-level epsilon from its ledger, delta,
examples, steps; ``null`` for what it withholds), the run's
client-level epsilon from the server's ledger, plus the run config. Written
atomically after every round, with ``status`` "running", then "completed" (or
"aborted" with the reason). The epsilon of a non-private release is written as
"inf" (as in the ledgers); a number not measured (NaN) as null."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedshield.common.layout import RunLayout
from fedshield.common.schema import PII_METRIC_PREFIX, Metric
from fedshield.common.storage import json_safe

from .checkpoint import atomic_write_json

__all__ = ["build_summary", "write_summary"]


WITHHELD = None  # a metric the site's policy keeps at the site (release-metrics)


def _new_site() -> dict[str, Any]:
    return {
        "epsilon": WITHHELD,
        "run_epsilon": WITHHELD,
        "delta": WITHHELD,
        "max_epsilon": WITHHELD,
        "examples": WITHHELD,
        "steps": WITHHELD,
        "rounds": [],
        "refused_rounds": [],
        "pii": {},
    }


def _site_totals(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per site, what it released (``None``: withheld by its policy)."""
    sites: dict[str, dict[str, Any]] = {}
    for rnd in rounds:
        for name, m in rnd["sites"].items():
            s = sites.setdefault(name, _new_site())
            # cumulative values: the latest covers all earlier releases
            for key, metric in (
                ("epsilon", Metric.EPSILON),  # the site's budget scope (all runs)
                ("run_epsilon", Metric.RUN_EPSILON),  # this run
                ("delta", Metric.DELTA),
                ("max_epsilon", Metric.MAX_EPSILON),
                ("noise_multiplier", Metric.NOISE_MULTIPLIER),
            ):
                if metric in m:
                    s[key] = m[metric]
            if Metric.NUM_EXAMPLES in m:
                s["examples"] = int(m[Metric.NUM_EXAMPLES])
            if Metric.STEPS in m:
                s["steps"] = (s["steps"] or 0) + int(m[Metric.STEPS])
            pii = {
                k.removeprefix(PII_METRIC_PREFIX): int(v)
                for k, v in m.items()
                if k.startswith(PII_METRIC_PREFIX)
            }
            if pii:
                s["pii"] = pii
            s["rounds"].append(rnd["round"])
        for refusal in rnd.get("refusals", []):
            s = sites.setdefault(refusal["site"], _new_site())
            s["refused_rounds"].append(rnd["round"])
    return dict(sorted(sites.items()))


def build_summary(
    *,
    run_config: dict[str, Any],
    run_key: str,
    initial: dict[str, float],
    rounds: list[dict[str, Any]],
    status: str,
    dp_enabled: bool,
    accountant: str,
    client_level: dict[str, Any] | None = None,
    weights: dict[str, str] | None = None,
    error: str | None = None,
    generation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    summary = {
        "status": status,
        "error": error,
        "run_key": run_key,
        "config": run_config,
        "initial": initial,
        "rounds": rounds,
        "sites": _site_totals(rounds),
        "final": rounds[-1] if rounds else None,
        "privacy": {
            "sample_level": {
                "enabled": dp_enabled,
                "accountant": accountant,
                "neighbouring": "add/remove one record of a site's dataset",
                "scope": "each site's epsilon composes every release on the same "
                "dataset fingerprint in its ledger, across runs (run_epsilon: this "
                "run only)",
            },
            "client_level": client_level or {"enabled": False},
        },
        "weights": weights or {},
    }
    if generation is not None:  # causal LM: samples of the final model, scrubbed
        summary["generation"] = generation
    return json_safe(summary)


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    path = RunLayout(out_dir).summary
    atomic_write_json(path, summary)
    return path
