"""``fedshield simulate --sites-dir DIR --test FILE`` through the real CLI,
``flwr run``, ClientApp and ServerApp: three sites, one file each, string labels
whose names are inferred and printed, one site with its own budget (its
``<stem>.toml``) that refuses round 2, macro P/R/F1 in the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.subprocess_env import fedshield_cli
from tests.toy_data import write_reviews

pytestmark = pytest.mark.slow

WORDS = {"bad": "awful poor dull boring", "good": "great lovely fine superb"}


def _file(path: Path, n: int, seed: int) -> Path:
    return write_reviews(path, n, seed, WORDS, columns=("review", "verdict"), length=5)


def test_a_simulation_on_the_users_own_site_files(
    tmp_path: Path, tiny_model_dir
) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    for k, name in enumerate(("clinic-a", "clinic-b", "clinic-c")):
        _file(sites / f"{name}.csv", 40, seed=k)
    # clinic-c's operator allows less than the two rounds cost (3.1, then 4.0)
    (sites / "clinic-c.toml").write_text("max-epsilon = 3.5\n")
    test = _file(tmp_path / "test.csv", 30, seed=9)
    out = tmp_path / "run"
    proc = fedshield_cli(
        "simulate",
        "--out",
        str(out),
        "--sites-dir",
        str(sites),
        "--test",
        str(test),
        "--run-config",
        f"model.source='{tiny_model_dir}' model.max-length=16 train.batch-size=8 "
        "data.text-column='review' data.label-column='verdict' "
        "num-server-rounds=2 dp.target-epsilon=4 min-train-sites=2 "
        "secagg.threshold=0.5 simulation.site-max-epsilon=20",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Labels: 0=bad, 1=good" in proc.stdout
    assert "clinic-a, clinic-b, clinic-c" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["data.label-names"] == "bad,good"
    first, second = summary["rounds"]
    assert set(first["sites"]) == {"clinic-a", "clinic-b", "clinic-c"}
    assert set(second["sites"]) == {"clinic-a", "clinic-b"}
    assert [r["site"] for r in second["refusals"]] == ["clinic-c"]
    for rnd in summary["rounds"]:
        for key in ("macro_precision", "macro_recall", "macro_f1"):
            assert 0.0 <= rnd[key] <= 1.0
    assert summary["sites"]["clinic-c"]["max_epsilon"] == 3.5
    assert summary["sites"]["clinic-a"]["max_epsilon"] == 20.0
