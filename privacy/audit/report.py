"""One self-contained HTML audit report per run (and the same numbers as JSON).

Sections: the run configuration, accuracy per round, cumulative epsilon per site
from the ledgers, PII findings per entity type, the attacks' ROC curves (log-log,
PNG embedded as base64), a TPR-at-FPR table, and the empirical epsilon beside the
claimed one with a one-line verdict per site. Every value is escaped; the report
holds counts and statistics only, never a record's text.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping
from typing import Any

from fedshield.common.storage import json_safe

from .roc import REPORTED_FPRS, LowFpr, RocCurve

__all__ = ["SECTIONS", "render_html", "report_json", "roc_png"]

SECTIONS = (
    "Verdict",
    "Run configuration",
    "Accuracy per round",
    "Privacy budget per site",
    "PII removed before training",
    "Membership inference",
    "Empirical vs claimed epsilon",
)
ATTACK_NAMES = {"phi": "confidence threshold (phi)", "lira": "LiRA offline"}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _low_fpr_cell(point: LowFpr) -> str:
    low, high = point.ci
    where = "" if point.fpr == point.target else f" at FPR {point.fpr:.3g}"
    return f"{point.tpr:.3f} [{low:.3f}, {high:.3f}]{where}"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def roc_png(curves: Mapping[str, Mapping[str, RocCurve]]) -> bytes:
    """ROC curves on log-log axes, one panel per site (and all sites together)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves)
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.6 * len(names), 3.6), dpi=110, squeeze=False
    )
    for ax, name in zip(axes[0], names, strict=True):
        floor = 1e-4
        for attack, curve in curves[name].items():
            fpr = [max(f, floor) for f in curve.fpr]
            tpr = [max(t, floor) for t in curve.tpr]
            label = f"{ATTACK_NAMES.get(attack, attack)}, AUC {curve.auc:.3f}"
            ax.plot(fpr, tpr, label=label)
        ax.plot([floor, 1], [floor, 1], "k:", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(floor, 1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _exposure_section(exposure: Mapping[str, Mapping[str, Any]]) -> str:
    """Secret-Sharer exposure per site: the planted secrets against the held-out
    ones (chance), in bits."""

    def mean(xs: list[Mapping[str, Any]], key: str = "exposure") -> float | None:
        return sum(x[key] for x in xs) / len(xs) if xs else None

    rows = []
    for site, e in exposure.items():
        planted = [s for s in e["secrets"] if s["repeats"] > 0]
        held = [s for s in e["secrets"] if s["repeats"] == 0]
        rows.append(
            [
                site,
                len(planted),
                mean(planted),
                max((x["exposure"] for x in planted), default=None),
                mean(planted, "exposure_low"),
                sum(x["lower_bound"] for x in planted),
                len(held),
                mean(held),
                e["chance"],
                e["samples"],
            ]
        )
    first = next(iter(exposure.values()))
    return (
        "<h2>Memorization: Secret-Sharer exposure</h2><p>Each site planted secrets "
        f"of the form {html.escape(first['template'])!r} (a space of "
        f"{first['space_size']:.3g} values), half of them trained on. Exposure = "
        "log2 |space| - log2 rank of the secret among the candidates by the final "
        "model's loss (Carlini et al. 2019), the rank estimated from sampled "
        "candidates (the estimate saturates near log2 of the samples; such secrets "
        "are counted as lower-bounded). Secrets never trained on show the chance "
        "level; planted secrets well above it were memorised.</p>"
        + _table(
            [
                "site",
                "planted",
                "mean exposure (bits)",
                "max",
                "mean lower confidence bound",
                "lower-bounded",
                "held out",
                "held-out mean",
                "chance",
                "candidates sampled",
            ],
            rows,
        )
    )


def report_json(audit: Mapping[str, Any]) -> dict[str, Any]:
    """The report's numbers, JSON-safe: an infinite epsilon as "inf", NaN as null,
    ROC points included."""

    summary = audit["summary"]
    doc = {k: v for k, v in audit.items() if k not in ("curves", "summary")}
    doc["run"] = {
        "config": summary.get("config", {}),
        "initial": summary.get("initial"),
        "rounds": [
            {"round": r["round"], "accuracy": r.get("accuracy"), "loss": r.get("loss")}
            for r in summary.get("rounds", [])
        ],
        "sites": {
            name: {k: s.get(k) for k in ("epsilon", "run_epsilon", "delta", "pii")}
            for name, s in summary.get("sites", {}).items()
        },
    }
    doc["roc"] = {
        site: {
            attack: {"fpr": list(c.fpr), "tpr": list(c.tpr)}
            for attack, c in by_attack.items()
        }
        for site, by_attack in audit["curves"].items()
    }
    return dict(json_safe(doc))


def render_html(
    audit: Mapping[str, Any],
    *,
    epsilon_png: bytes | None,
    ledger_epsilon: Mapping[str, float],
) -> str:
    """The report as one HTML document (images inline)."""
    summary = audit["summary"]
    sites = audit["sites"]
    parts: list[str] = []

    verdict = audit["verdict"]
    pooled_test = audit["pooled_test"]
    style = {"consistent": "ok", "violation": "bad"}.get(verdict, "warn")
    headline = {
        "violation": "PRIVACY VIOLATION at "
        + ", ".join(audit["violations"])
        + ": an empirical epsilon lower bound exceeds the claimed epsilon. The "
        "implementation does not deliver the guarantee it reports; treat this as a "
        "bug.",
        "consistent": "Consistent: no empirical lower bound exceeds a claimed "
        "epsilon, and the audit had the power to show one above the claim.",
        "inconclusive": "Inconclusive: no violation found, but at least one claim "
        "had no test able to refute it (no ceiling above it). It does not support "
        "that claim either way.",
        "not tested": "Not tested: no claim was tested (no canaries, no "
        "sample-level DP, or too few guesses).",
    }[verdict]
    kind = audit["audit_config"].get("canary_kind", "")
    scope = {
        "gradient": "Canaries: white-box gradient canaries. They test the DP-SGD "
        "mechanism as the sites run it (noise, sampling, accounting, aggregation), "
        "not the clipping of real records, the data pipeline or leaks outside the "
        "weights.",
        "mislabelled": "Canaries: mislabelled records. They test the whole "
        "pipeline, with less power than gradient canaries.",
        "crafted": "Canaries: crafted records. They test the whole pipeline, with "
        "less power than gradient canaries.",
    }.get(kind, "")
    parts.append(
        f'<h2>Verdict</h2><p class="{style}">{html.escape(headline)}</p>'
        f"<p>{html.escape(audit.get('explanation') or pooled_test['explanation'])}"
        f"</p><p>{html.escape(scope)}</p>"
    )
    parts.append(
        _table(
            ["site", "verdict", "why"],
            [[s["site"], s["verdict"], s["explanation"]] for s in sites],
        )
    )

    config = summary.get("config", {})
    parts.append(
        "<h2>Run configuration</h2>"
        + _table(["key", "value"], [[k, config[k]] for k in sorted(config)])
    )

    rounds = summary.get("rounds", [])
    initial = summary.get("initial") or {}
    parts.append(
        "<h2>Accuracy per round</h2>"
        + _table(
            ["round", "test accuracy", "test loss"],
            [[0, initial.get("accuracy"), initial.get("loss")]]
            + [[r["round"], r.get("accuracy"), r.get("loss")] for r in rounds],
        )
    )

    budget_rows = [
        [
            name,
            s.get("run_epsilon"),
            s.get("epsilon"),
            ledger_epsilon.get(name),
            s.get("delta"),
        ]
        for name, s in summary.get("sites", {}).items()
    ]
    parts.append(
        "<h2>Privacy budget per site</h2><p>Sample-level (epsilon, delta) under "
        "add/remove one record of the site's data; '-' or inf = no DP.</p>"
        + _table(
            [
                "site",
                "epsilon, this run",
                "epsilon, all runs on this data",
                "ledger (latest entry)",
                "delta",
            ],
            budget_rows,
        )
        + (_img(epsilon_png, "cumulative epsilon per site") if epsilon_png else "")
    )

    pii: dict[str, dict[str, int]] = {
        name: dict(s.get("pii") or {}) for name, s in summary.get("sites", {}).items()
    }
    entities = sorted({e for counts in pii.values() for e in counts})
    parts.append(
        "<h2>PII removed before training</h2><p>Findings per entity type (counts "
        "only) in each site's training text.</p>"
        + _table(
            ["site", *entities],
            [
                [name, *(counts.get(e, 0) for e in entities)]
                for name, counts in pii.items()
            ],
        )
    )

    curves: Mapping[str, Mapping[str, RocCurve]] = audit["curves"]
    roc_rows = [
        [
            site,
            ATTACK_NAMES.get(attack, attack),
            c.members,
            c.non_members,
            c.auc,
            *(_low_fpr_cell(c.low_fpr(f)) for f in REPORTED_FPRS),
        ]
        for site, by_attack in curves.items()
        for attack, c in by_attack.items()
    ]
    parts.append(
        "<h2>Membership inference</h2><p>Members: each site's training records; "
        "non-members: its held-out records, reweighted to the members' label mix. "
        "Score: the model's confidence phi in the true label. Chance is AUC 0.5 "
        "and TPR = FPR. With n non-members the smallest FPR above 0 is 1/n: a "
        "target below it is reported at FPR 0 and says so. Brackets: 95% "
        "Clopper-Pearson intervals over the members.</p>"
        + _img(roc_png(curves), "ROC curves, log-log")
        + _table(
            [
                "site",
                "attack",
                "members",
                "non-members",
                "AUC",
                *(f"TPR at {f:.1%} FPR" for f in REPORTED_FPRS),
            ],
            roc_rows,
        )
    )

    eps_rows = []
    for name, test in [*((s["site"], s) for s in sites), ("all sites", pooled_test)]:
        c = test["canaries"] or {}
        eps_rows.append(
            [
                name,
                c.get("canaries"),
                c.get("guesses"),
                c.get("correct"),
                c.get("confidence"),
                c.get("empirical_epsilon"),
                c.get("ceiling"),
                test["claimed_epsilon"],
                test["delta"],
                test["verdict"],
            ]
        )
    analysis = next(
        (t["canaries"]["analysis"] for t in [pooled_test, *sites] if t["canaries"]),
        "-",
    )
    parts.append(
        "<h2>Empirical vs claimed epsilon</h2><p>One-run audit (Steinke, Nasr, "
        f"Jagielski 2023; bound: {html.escape(analysis)}): a lower bound on epsilon "
        "from the canaries' scores, against the site's claimed sample-level epsilon "
        "for this run. The ceiling is the bound had every guess been right: no "
        "outcome of this audit could show more, so a claim at or above it was not "
        "tested ('inconclusive'). The pooled test takes every site's canaries "
        "against the largest claim; the tests' confidence levels are "
        "Bonferroni-corrected so that the whole page errs with probability at "
        "most 1 - audit.confidence.</p>"
        + _table(
            [
                "tested",
                "canaries",
                "guesses",
                "correct",
                "confidence",
                "empirical epsilon (lower bound)",
                "ceiling",
                "claimed epsilon",
                "delta",
                "verdict",
            ],
            eps_rows,
        )
    )

    if audit.get("exposure"):
        parts.append(_exposure_section(audit["exposure"]))

    title = f"fedshield audit: {audit['run_dir']}"
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        ".bad{color:#b00;font-weight:bold;font-size:120%}.ok{color:#070}"
        ".warn{color:#a60;font-weight:bold}"
        "img{max-width:100%}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>" + "".join(parts) + "</body></html>\n"
    )
