"""The run's summary.json: per round (accuracy, loss) and per site (epsilon, delta,
examples, steps), plus the run config. Written atomically after every round, with
``status`` "running", then "completed"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_json

__all__ = ["build_summary", "write_summary"]


def _site_totals(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    sites: dict[str, dict[str, Any]] = {}
    for rnd in rounds:
        for name, m in rnd["sites"].items():
            s = sites.setdefault(
                name,
                {"epsilon": 0.0, "delta": 0.0, "examples": 0, "steps": 0, "rounds": []},
            )
            s["epsilon"] = m["epsilon"]  # cumulative: the latest value covers all
            s["delta"] = m["delta"]
            s["examples"] = int(m["num-examples"])
            s["steps"] += int(m["steps"])
            s["noise_multiplier"] = m.get("noise-multiplier", 0.0)
            s["rounds"].append(rnd["round"])
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
    weights: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "status": status,
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
                "scope": "cumulative over every round of this run at that site",
            }
        },
        "weights": weights or {},
    }


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    path = out_dir / "summary.json"
    atomic_write_json(path, summary)
    return path
