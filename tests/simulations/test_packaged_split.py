"""``fedshield simulate`` on the packaged data splits it before anything starts: a
split that cannot be made is refused with what to change, not reported by every
site in round 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedshield.cli.main import app


@pytest.mark.parametrize(
    ("sites", "overrides", "message"),
    [
        (  # too few test records for each site's evaluation share
            "1000",
            "data.train-examples=10000 data.test-examples=500 data.partition='iid'",
            "data.test-examples to at least 1000",
        ),
        (  # a label skew no draw can meet
            "50",
            "data.train-examples=100 data.dirichlet-alpha=0.01",
            "site pool cannot be split among 50 sites",
        ),
    ],
)
def test_a_split_that_cannot_be_made_is_refused_before_launch(
    tmp_path: Path, sites: str, overrides: str, message: str
) -> None:
    out = tmp_path / "r"
    done = CliRunner().invoke(
        app, ["simulate", "--out", str(out), "--sites", sites, "-c", overrides]
    )
    assert done.exit_code == 2
    assert message in " ".join(done.output.split())
    assert not out.exists()
