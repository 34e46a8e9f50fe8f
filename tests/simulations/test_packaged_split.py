"""``fedshield simulate`` on the packaged data splits it before anything starts: a
split that cannot be made is refused with what to change, not reported by every
site in round 1."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fedshield.cli.main import app


def test_too_few_test_records_for_each_sites_evaluation_share(tmp_path: Path) -> None:
    done = CliRunner().invoke(
        app,
        [
            "simulate",
            "--out",
            str(tmp_path / "r"),
            "--sites",
            "1000",
            "-c",
            "data.train-examples=10000 data.test-examples=500 data.partition='iid'",
        ],
    )
    assert done.exit_code == 2
    assert "data.test-examples to at least 1000" in " ".join(done.output.split())
    assert not (tmp_path / "r").exists()


def test_a_label_skew_no_draw_can_meet(tmp_path: Path) -> None:
    done = CliRunner().invoke(
        app,
        [
            "simulate",
            "--out",
            str(tmp_path / "r"),
            "--sites",
            "50",
            "-c",
            "data.train-examples=100 data.dirichlet-alpha=0.01",
        ],
    )
    assert done.exit_code == 2
    assert "site pool cannot be split among 50 sites" in " ".join(done.output.split())
