"""The guarded release: budget check before training, ledger entry before the update
leaves, composition across runs, and no overspending across kills and restarts."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.release import BudgetScope, Refused, Released, SiteBudget, release_round
from client.trainer import TrainResult
from models.config import ConfigError
from privacy.budget import Release, compose_epsilon
from privacy.dp import AccountantKind
from privacy.ledger import DB_NAME, SiteLedger

RDP = AccountantKind.RDP
PLANNED = Release(1.0, 0.1, 10)
ROOT = Path(__file__).resolve().parents[2]


def _round(budget: SiteBudget, run: str, rnd: int, calls: list[int], fp: str = "fp"):
    def train() -> TrainResult:
        calls.append(rnd)
        return TrainResult(num_examples=100, mean_loss=0.5, release=PLANNED)

    return release_round(
        budget=budget,
        run_id=run,
        server_round=rnd,
        fingerprint=fp,
        planned=PLANNED,
        accountant=RDP,
        train=train,
    )


def _eps(n: int) -> float:
    return compose_epsilon([PLANNED] * n, delta=1e-5, accountant=RDP)


def test_client_refuses_round_that_would_exceed_budget(tmp_path: Path) -> None:
    budget = SiteBudget(tmp_path, max_epsilon=(_eps(3) + _eps(4)) / 2, delta=1e-5)
    calls: list[int] = []
    outcomes = [_round(budget, "run-a", r, calls) for r in (1, 2, 3, 4, 5)]
    assert [type(o) for o in outcomes] == [Released] * 3 + [Refused] * 2
    assert calls == [1, 2, 3]  # refused rounds never train
    refused = outcomes[3]
    assert isinstance(refused, Refused)
    assert refused.check.spent == pytest.approx(_eps(3))
    assert refused.check.after == pytest.approx(_eps(4))
    assert "max-epsilon" in refused.reason
    with SiteLedger(tmp_path) as ledger:
        eps = [r.entry.epsilon for r in ledger.entries()]
    assert eps == pytest.approx([_eps(1), _eps(2), _eps(3)])
    assert max(eps) <= budget.max_epsilon


def test_epsilon_composes_across_runs_on_the_same_dataset(tmp_path: Path) -> None:
    budget = SiteBudget(tmp_path, max_epsilon=0.0, delta=1e-5)
    calls: list[int] = []
    for rnd in (1, 2):
        _round(budget, "run-a", rnd, calls)
    second = _round(budget, "run-b", 1, calls)
    other_data = _round(budget, "run-c", 1, calls, fp="other")
    assert isinstance(second, Released) and isinstance(other_data, Released)
    assert second.epsilon == pytest.approx(_eps(3))  # not reset by the new run
    assert second.run_epsilon == pytest.approx(_eps(1))
    assert other_data.epsilon == pytest.approx(_eps(1))  # another dataset


def test_site_scope_composes_every_dataset_of_the_site(tmp_path: Path) -> None:
    budget = SiteBudget(tmp_path, max_epsilon=0.0, delta=1e-5, scope=BudgetScope.SITE)
    calls: list[int] = []
    _round(budget, "run-a", 1, calls, fp="v1")
    after = _round(budget, "run-b", 1, calls, fp="v2")
    assert isinstance(after, Released) and after.epsilon == pytest.approx(_eps(2))


def test_a_release_that_differs_from_the_plan_is_not_recorded(tmp_path: Path) -> None:
    budget = SiteBudget(tmp_path, max_epsilon=0.0, delta=1e-5)

    def train() -> TrainResult:
        return TrainResult(100, 0.5, Release(1.0, 0.1, 11))

    with pytest.raises(RuntimeError, match="not sent"):
        release_round(
            budget=budget,
            run_id="r",
            server_round=1,
            fingerprint="fp",
            planned=PLANNED,
            accountant=RDP,
            train=train,
        )
    with SiteLedger(tmp_path) as ledger:
        assert ledger.entries() == []


def test_tampered_ledger_stops_training(tmp_path: Path) -> None:
    import sqlite3

    budget = SiteBudget(tmp_path, max_epsilon=100.0, delta=1e-5)
    calls: list[int] = []
    _round(budget, "run-a", 1, calls)
    _round(budget, "run-a", 2, calls)
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    db.execute("DELETE FROM entries WHERE seq = 1")  # hide spent budget
    db.close()
    from privacy.ledger import LedgerError

    with pytest.raises(LedgerError, match="fails verification"):
        _round(budget, "run-a", 3, calls)
    assert calls == [1, 2]


def test_budget_comes_from_the_node_config(tmp_path: Path) -> None:
    budget = SiteBudget.resolve(
        node_config={"state-dir": str(tmp_path), "max-epsilon": 8, "delta": 1e-6},
        train_config={},
        run_config={},
        site="clinic-a",
        run_delta=1e-5,
    )
    assert budget == SiteBudget(tmp_path, 8.0, 1e-6, BudgetScope.DATASET)
    simulated = SiteBudget.resolve(
        node_config={"partition-id": 1, "num-partitions": 3},
        train_config={"out-dir": str(tmp_path)},
        run_config={"simulation.site-max-epsilon": 5.0},
        site="site-1",
        run_delta=1e-5,
    )
    assert simulated.state_dir == tmp_path / "sites" / "site-1"
    assert simulated.max_epsilon == 5.0 and simulated.delta == 1e-5
    deployed = SiteBudget.resolve(
        node_config={"state-dir": str(tmp_path)},
        train_config={},
        run_config={"simulation.site-max-epsilon": 5.0},  # the server cannot set it
        site="clinic-a",
        run_delta=1e-5,
    )
    assert deployed.max_epsilon == 0.0


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({"max-epsilon": "lots"}, "must be a number"),
        ({"max-epsilon": -1.0}, "max-epsilon` must be >= 0"),
        ({"delta": 2.0}, "delta` must be in"),
        ({"budget-scope": "galaxy"}, "budget-scope"),
    ],
)
def test_bad_budget_settings_are_explained(
    tmp_path: Path, node_config: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SiteBudget.resolve(
            node_config={"state-dir": str(tmp_path), **node_config},
            train_config={},
            run_config={},
            site="s",
            run_delta=1e-5,
        )


CHILD = """
import os, random, sys, time
from pathlib import Path
from client.release import Refused, SiteBudget, release_round
from client.trainer import TrainResult
from privacy.budget import Release
from privacy.dp import AccountantKind

state, max_eps = Path(sys.argv[1]), float(sys.argv[2])
planned = Release(1.0, 0.1, 10)
budget = SiteBudget(state, max_epsilon=max_eps, delta=1e-5)
print("READY", flush=True)
rnd = 0
while True:
    rnd += 1
    def train():
        time.sleep(random.uniform(0.0, 0.03))  # "training": a kill may land here
        return TrainResult(num_examples=100, mean_loss=0.1, release=planned)
    out = release_round(budget=budget, run_id=f"run-{os.getpid()}", server_round=rnd,
                        fingerprint="fp", planned=planned,
                        accountant=AccountantKind.RDP, train=train)
    if isinstance(out, Refused):
        print("REFUSED", flush=True)
        break
"""


def test_ledger_never_exceeds_budget_across_kills_and_restarts(tmp_path: Path) -> None:
    """SIGKILL the site process at random points (during training, inside the
    ledger transaction, between rounds), restart it, and let it run until the
    budget refuses: the ledger verifies, never shows epsilon above the budget,
    and holds exactly as many releases as the budget admits."""
    max_eps = (_eps(40) + _eps(41)) / 2
    rng = random.Random(7)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    kills = 0
    for _life in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(max_eps)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY"
        if kills < 4:
            time.sleep(rng.uniform(0.05, 0.4))
            child.send_signal(signal.SIGKILL)
            child.wait()
            kills += 1
            continue
        assert child.stdout.readline().strip() == "REFUSED"
        assert child.wait(timeout=120) == 0
        break
    with SiteLedger(tmp_path) as ledger:
        report = ledger.verify()
        eps = [r.entry.epsilon for r in ledger.entries()]
    assert report.ok, report.problems
    assert kills == 4 and len(eps) == 40
    assert max(eps) <= max_eps
    assert eps == sorted(eps) and eps[-1] == pytest.approx(_eps(40))
