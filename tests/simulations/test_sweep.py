"""``fedshield sweep``: its points, what it keeps, what it refuses, its statistics."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedshield.cli.main import app
from fedshield.cli.sweep import SweepPoint, plan_points, plot_sweep, summarize_points


def test_points_cover_the_grid_and_set_epsilon_and_seed(tmp_path: Path) -> None:
    points = plan_points(tmp_path, [1.0, 8.0], [42, 43], non_private=True)
    assert [(p.epsilon, p.seed) for p in points] == [
        (1.0, 42),
        (1.0, 43),
        (8.0, 42),
        (8.0, 43),
        (None, 42),
        (None, 43),
    ]
    assert len({p.out for p in points}) == 6
    assert points[1].overrides == "dp.enabled=true dp.target-epsilon=1.0 seed=43"
    assert points[-1].overrides == "dp.enabled=false seed=43"


def test_a_saved_run_matches_only_its_own_point(tmp_path: Path) -> None:
    dp = SweepPoint(3.0, 42, tmp_path)
    assert dp.matches({"seed": 42, "dp.enabled": True, "dp.target-epsilon": 3.0})
    assert not dp.matches({"seed": 43, "dp.enabled": True, "dp.target-epsilon": 3.0})
    assert not dp.matches({"seed": 42, "dp.enabled": True, "dp.target-epsilon": 8.0})
    assert not dp.matches({"seed": 42, "dp.enabled": False, "dp.target-epsilon": 3.0})
    nondp = SweepPoint(None, 42, tmp_path)
    assert nondp.matches({"seed": 42, "dp.enabled": False})
    assert not nondp.matches({"seed": 42, "dp.enabled": True})


def test_mean_and_sample_std_per_epsilon_of_finished_points_only() -> None:
    results = [
        {"epsilon": 1.0, "accuracy": 0.5, "macro_f1": 0.4},
        {"epsilon": 1.0, "accuracy": 0.7, "macro_f1": 0.6},
        {"epsilon": 1.0, "status": "aborted"},  # no accuracy: not counted
        {"epsilon": None, "accuracy": 0.9, "macro_f1": 0.9},
    ]
    rows = summarize_points(results)
    assert [r["epsilon"] for r in rows] == [1.0, None]
    assert rows[0]["n"] == 2
    assert rows[0]["accuracy_mean"] == pytest.approx(0.6)
    assert rows[0]["accuracy_std"] == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert rows[1]["n"] == 1 and rows[1]["accuracy_std"] == 0.0


def test_the_plot_is_written(tmp_path: Path) -> None:
    rows = summarize_points(
        [
            {"epsilon": e, "accuracy": a}
            for e, a in ((1.0, 0.6), (8.0, 0.7), (None, 0.8))
        ]
    )
    plot_sweep(rows, tmp_path / "s.png", "t", references={"central": 0.85})
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_settings_the_sweep_owns_are_refused(tmp_path: Path) -> None:
    done = CliRunner().invoke(
        app, ["sweep", "--out", str(tmp_path / "s"), "-c", "dp.target-epsilon=2"]
    )
    assert done.exit_code == 2
    assert "dp.target-epsilon" in done.output and not (tmp_path / "s").exists()


@pytest.mark.parametrize("eps", ["0,1", "x", "-1", "inf", ""])
def test_bad_epsilons_are_refused(tmp_path: Path, eps: str) -> None:
    done = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path), "--eps", eps])
    assert done.exit_code == 2 and "--eps" in done.output


def test_a_folder_with_another_run_is_left_untouched(tmp_path: Path) -> None:
    """A point's folder holding a run of another seed is refused before any run
    starts (nothing of the user's is overwritten)."""
    other = tmp_path / "eps8-seed42"
    other.mkdir()
    saved = {"status": "completed", "config": {"seed": 7, "dp.target-epsilon": 8.0}}
    (other / "summary.json").write_text(json.dumps(saved))
    done = CliRunner().invoke(
        app, ["sweep", "--out", str(tmp_path), "--eps", "8", "--seeds", "1"]
    )
    assert done.exit_code == 2 and "holds another run" in done.output
    assert json.loads((other / "summary.json").read_text()) == saved
    assert not (tmp_path / "sweep.json").exists()


def test_a_finished_point_is_kept_not_rerun(tmp_path: Path) -> None:
    point = tmp_path / "eps8-seed42"
    point.mkdir()
    summary = {
        "status": "completed",
        "config": {"seed": 42, "dp.enabled": True, "dp.target-epsilon": 8.0},
        "rounds": [{"round": 3, "accuracy": 0.75, "macro_f1": 0.7}],
        "sites": {"site-0": {"epsilon": 7.9}, "site-1": {"epsilon": None}},
    }
    (point / "summary.json").write_text(json.dumps(summary))
    done = CliRunner().invoke(
        app, ["sweep", "--out", str(tmp_path), "--eps", "8", "--seeds", "1"]
    )
    assert done.exit_code == 0, done.output
    swept = json.loads((tmp_path / "sweep.json").read_text())
    (result,) = swept["points"]
    assert result["accuracy"] == 0.75 and result["epsilon_spent_max"] == 7.9
    assert swept["by_epsilon"][0]["accuracy_mean"] == 0.75
    assert (tmp_path / "sweep.png").exists()


def _fake_simulate(calls: list[list[str]]) -> Any:
    """Stands in for the subprocess: records the command, writes a finished run."""

    def run(cmd: list[str], check: bool = False) -> None:
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        seed = int(cmd[-1].split("seed=")[1].split()[0])
        (out / "summary.json").write_text(
            json.dumps(
                {
                    "status": "completed",
                    "config": {
                        "seed": seed,
                        "dp.enabled": True,
                        "dp.target-epsilon": 8.0,
                    },
                    "rounds": [{"round": 1, "accuracy": 0.6}],
                    "sites": {},
                }
            )
        )

    return run


def test_a_point_stopped_before_its_first_checkpoint_starts_again_its_files_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped = tmp_path / "eps8-seed42"
    stopped.mkdir()
    (stopped / "flwr.log").write_text("crashed in round 1")
    aborted = {
        "status": "aborted",
        "error": "x",
        "config": {"seed": 42, "dp.enabled": True, "dp.target-epsilon": 8.0},
    }
    (stopped / "summary.json").write_text(json.dumps(aborted))
    calls: list[list[str]] = []
    monkeypatch.setattr("fedshield.cli.sweep.subprocess.run", _fake_simulate(calls))
    done = CliRunner().invoke(
        app, ["sweep", "--out", str(tmp_path), "--eps", "8", "--seeds", "1"]
    )
    assert done.exit_code == 0, done.output
    (cmd,) = calls
    assert "resume=true" not in cmd[-1]  # nothing to resume from
    aside = tmp_path / "eps8-seed42.stopped-1"
    assert (aside / "flwr.log").read_text() == "crashed in round 1"
    assert json.loads((aside / "summary.json").read_text()) == aborted


def test_a_point_with_a_checkpoint_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point = tmp_path / "eps8-seed42"
    point.mkdir()
    (point / "checkpoint.pt").write_bytes(b"ckpt")
    calls: list[list[str]] = []
    monkeypatch.setattr("fedshield.cli.sweep.subprocess.run", _fake_simulate(calls))
    done = CliRunner().invoke(
        app, ["sweep", "--out", str(tmp_path), "--eps", "8", "--seeds", "1"]
    )
    assert done.exit_code == 0, done.output
    assert calls[0][-1].endswith("resume=true")


def test_a_sweep_with_other_shared_settings_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr("fedshield.cli.sweep.subprocess.run", _fake_simulate(calls))
    base = ["sweep", "--out", str(tmp_path), "--eps", "8", "--seeds", "1"]
    assert CliRunner().invoke(app, [*base, "-c", "num-server-rounds=2"]).exit_code == 0
    again = CliRunner().invoke(app, [*base, "-c", "num-server-rounds=5"])
    assert again.exit_code == 2 and "other shared settings" in again.output
    assert len(calls) == 1  # the finished point was neither rerun nor reused
    more = CliRunner().invoke(
        app, [*base, "--eps", "8,2", "-c", "num-server-rounds=2"]
    )  # the same settings: the grid may grow, finished points are kept
    assert more.exit_code == 0, more.output
    assert len(calls) == 2 and "eps2-seed42" in calls[1][calls[1].index("--out") + 1]


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine")
    done = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "f")])
    assert done.exit_code == 2 and "is a file" in done.output
    assert (tmp_path / "f").read_text() == "mine"
