"""The red team: a curious or malicious coordinator against real fedshield sites.

Run (about 1.5 minutes on 2 CPU cores; writes benchmarks/results/red_team.json):

    cd /work/main && PYTHONPATH=. .venv/bin/python benchmarks/red_team.py

One attack, or a few (``--only``), to another file:

    PYTHONPATH=. .venv/bin/python benchmarks/red_team.py --only ring-attack \\
        --out /tmp/red_team.json

Every attack plays the coordinator against the real ClientApp
(``fedshield.client.app.client_app()``: its client mods, its train and evaluate
handlers) of deployed-style sites: a CSV at ``data-path``, a ``state-dir`` with the
site's ledger, a tiny random BERT (``fedshield.models.write_tiny_bert``), messages
delivered through an in-memory grid as Flower delivers them. The attacks live in
``red_team_secagg.py`` (secure aggregation), ``red_team_site.py`` (the site's
switches: downgrade, switch-off, scrubbing, what leaves the site) and
``red_team_dp.py`` (budgets, client-level DP); the harness in
``red_team_harness.py`` and ``red_team_protocol.py``.

Each attack ends ``refused`` (a site refused, with its reason), ``learned-nothing``
(it went through and the secret stayed hidden) or ``succeeded`` (the attacker holds
what it should not: a site's update within tolerance, PII in a message or at the
tokenizer, a round past the site's budget, ...), judged by what the attacker
recovered. ``error`` means the harness itself failed: a bug to fix, never a pass.

Headline: ``attacks_tried`` and ``attacks_succeeded`` over the attacks inside the
threat model (docs/secure-aggregation.md); those outside it (Sybil sites) are run
and reported apart (``out_of_scope_*``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
HERE = str(ROOT / "benchmarks")  # its modules import each other by plain name
if HERE not in sys.path:  # (Opacus installs a package named `benchmarks`)
    sys.path.insert(0, HERE)

import red_team_dp  # noqa: E402, F401  (registers its attacks)
import red_team_secagg  # noqa: E402, F401  (registers its attacks)
import red_team_site  # noqa: E402, F401  (registers its attacks)
from red_team_harness import (  # noqa: E402
    REGISTRY,
    Attack,
    Env,
    Result,
    task_identity,
)

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "red_team.json"
ERROR = "error"


def play(attack: Attack, env: Env) -> dict[str, Any]:
    """One attack's row of the report (``error`` if the harness broke)."""
    start = time.monotonic()
    try:
        result: Result = attack.play(env)
        outcome, detail = result.outcome.value, result.detail
    except Exception as err:  # noqa: BLE001 - reported, never counted as a pass
        outcome = ERROR
        detail = f"{type(err).__name__}: {err} | {traceback.format_exc(limit=-3)}"
    return {
        "name": attack.name,
        "claim": attack.claim,
        "outcome": outcome,
        "detail": detail,
        "in_scope": attack.in_scope,
        "seconds": round(time.monotonic() - start, 2),
    }


def run(names: list[str] | None, root: Path) -> list[dict[str, Any]]:
    chosen = [a for a in REGISTRY if names is None or a.name in names]
    unknown = set(names or ()) - {a.name for a in REGISTRY}
    if unknown:
        raise SystemExit(
            f"Unknown attack(s) {sorted(unknown)}; choose from "
            f"{', '.join(a.name for a in REGISTRY)}."
        )
    with task_identity():
        env = Env.create(root)
        rows = []
        for attack in chosen:
            print(f"{attack.name} ...", flush=True)
            rows.append(play(attack, env))
            print(f"  {rows[-1]['outcome']}: {rows[-1]['detail'][:200]}", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'attack':<{width}}  {'outcome':<15}  {'s':>6}  detail"]
    for r in rows:
        name = r["name"] + ("" if r["in_scope"] else " *")
        detail = r["detail"].replace("\n", " ")[:90]
        lines.append(
            f"{name:<{width + 2}}{r['outcome']:<15}  {r['seconds']:>6.1f}  {detail}"
        )
    lines.append("* outside the threat model: reported, not in the headline")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", default=None, help="attack names")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the sites' refusals, one per line
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="red-team-") as tmp:
        rows = run(args.only, Path(tmp))
    inside = [r for r in rows if r["in_scope"]]
    outside = [r for r in rows if not r["in_scope"]]
    headline = {
        "attacks_tried": len(inside),
        "attacks_succeeded": sum(r["outcome"] == "succeeded" for r in inside),
        "attacks_errored": sum(r["outcome"] == ERROR for r in rows),
        "out_of_scope_tried": len(outside),
        "out_of_scope_succeeded": sum(r["outcome"] == "succeeded" for r in outside),
    }
    doc = {
        "headline": headline,
        "config": {
            "model": "tiny random BERT (fedshield.models.write_tiny_bert), LoRA",
            "sites": "deployed-style: CSV data-path, state-dir, default node config",
            "seconds": round(time.monotonic() - start, 1),
            "cpus": os.cpu_count(),
        },
        "attacks": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(rows))
    print(json.dumps(headline, indent=2))
    return doc


if __name__ == "__main__":
    main()
