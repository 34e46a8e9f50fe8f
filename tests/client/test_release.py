"""The guarded release: budget check before training, ledger entry before the update
leaves, composition across runs, and no overspending across kills and restarts."""

import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from fedshield.client.node import BudgetScope
from fedshield.client.release import (
    Refused,
    Released,
    SiteBudget,
    release_round,
)
from fedshield.client.trainer import TrainResult
from fedshield.common.config import ConfigError
from fedshield.privacy.budget import Release, compose_epsilon
from fedshield.privacy.dp import AccountantKind
from fedshield.privacy.ledger import DB_NAME, LedgerError, SiteLedger
from fedshield.simulations.apps import SimulatedSites
from tests.subprocess_env import subprocess_env

from . import release_child

RDP = AccountantKind.RDP
PLANNED = Release(1.0, 0.1, 10)
ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().parent / "release_child.py"


def _round(
    budget: SiteBudget,
    run: str,
    rnd: int,
    calls: list[int],
    fp: str = "fp",
    planned: Release = PLANNED,
):
    def train() -> TrainResult:
        calls.append(rnd)
        return TrainResult(num_examples=100, mean_loss=0.5, release=planned)

    return release_round(
        budget=budget,
        run_id=run,
        server_round=rnd,
        fingerprint=fp,
        planned=planned,
        accountant=RDP,
        train=train,
    )


def _eps(n: int, delta: float = 1e-5, planned: Release = PLANNED) -> float:
    return compose_epsilon([planned] * n, delta=delta, accountant=RDP)


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
    with pytest.raises(LedgerError, match="fails verification"):
        _round(budget, "run-a", 3, calls)
    assert calls == [1, 2]


def _budget(node_config: dict, train_config: dict, run_config: dict) -> SiteBudget:
    node = SimulatedSites().node_config(node_config, run_config)
    return SiteBudget.resolve(
        node=node, train_config=train_config, site=node.name(1), run_delta=1e-5
    )


def test_budget_comes_from_the_node_config(tmp_path: Path) -> None:
    budget = _budget(
        {"state-dir": str(tmp_path), "max-epsilon": 8, "delta": 1e-6}, {}, {}
    )
    assert budget == SiteBudget(tmp_path, 8.0, 1e-6, BudgetScope.DATASET)
    simulated = _budget(
        {"partition-id": 1, "num-partitions": 3},
        {"out-dir": str(tmp_path)},
        {"simulation.site-max-epsilon": 5.0},
    )
    assert simulated.state_dir == tmp_path / "sites" / "site-1"
    assert simulated.max_epsilon == 5.0 and simulated.delta == 1e-5
    deployed = _budget(
        {"state-dir": str(tmp_path)},
        {},
        {"simulation.site-max-epsilon": 5.0},  # the server cannot set it
    )
    assert deployed.max_epsilon == 0.0


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({"max-epsilon": "lots"}, "must be a plain non-negative decimal"),
        ({"max-epsilon": -1.0}, "max-epsilon` must be a plain non-negative"),
        ({"delta": 2.0}, "delta` must be in"),
        ({"budget-scope": "galaxy"}, "budget-scope"),
    ],
)
def test_bad_budget_settings_are_explained(
    tmp_path: Path, node_config: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _budget({"state-dir": str(tmp_path), **node_config}, {}, {})


def test_data_released_without_dp_refuses_every_later_budgeted_round(
    tmp_path: Path,
) -> None:
    """A non-private comparison run (no budget) has released the data in the
    clear: no later budget, however large, may admit a round on it."""
    calls: list[int] = []
    free = SiteBudget(tmp_path, max_epsilon=0.0, delta=1e-5)
    clear = _round(free, "run-a", 1, calls, planned=Release(0.0, 0.1, 10))
    assert isinstance(clear, Released) and clear.epsilon == float("inf")
    budgeted = SiteBudget(tmp_path, max_epsilon=1000.0, delta=1e-5)
    later = _round(budgeted, "run-b", 1, calls)
    assert isinstance(later, Refused)
    assert "already released without DP" in later.reason
    assert calls == [1]


def test_the_budget_is_checked_and_recorded_at_the_sites_delta(tmp_path: Path) -> None:
    """At delta=1e-3 the budget admits three rounds; at the usual 1e-5 even the
    first would exceed it. A check at any delta but the site's is wrong."""
    budget = SiteBudget(
        tmp_path, max_epsilon=(_eps(3, 1e-3) + _eps(4, 1e-3)) / 2, delta=1e-3
    )
    assert _eps(1, 1e-5) > budget.max_epsilon
    calls: list[int] = []
    outcomes = [_round(budget, "run-a", r, calls) for r in (1, 2, 3, 4)]
    assert [type(o) for o in outcomes] == [Released] * 3 + [Refused]
    with SiteLedger(tmp_path) as ledger:
        entries = [r.entry for r in ledger.entries()]
    assert [e.delta for e in entries] == [1e-3] * 3
    assert [e.epsilon for e in entries] == pytest.approx(
        [_eps(k, 1e-3) for k in (1, 2, 3)], rel=1e-9
    )


def test_a_second_run_cannot_spend_the_budget_a_running_round_has_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs at one site, one round of budget left: run B starts while run A
    trains (A has passed its check, not yet recorded). B must wait for the site's
    lock and then be refused, not pass its check on the same remaining budget."""
    budget = SiteBudget(tmp_path, max_epsilon=(_eps(1) + _eps(2)) / 2, delta=1e-5)
    a_training, a_may_finish, b_moved = (threading.Event() for _ in range(3))
    b_first: list[str] = []
    outcomes: dict[str, Released | Refused] = {}

    def waiting(seconds: float) -> None:  # exclusive() sleeps only while locked out
        if not b_moved.is_set():
            b_first.append("waits for the lock")
            b_moved.set()
        time.sleep(0.01)

    monkeypatch.setattr(
        "fedshield.privacy.budget.time",
        types.SimpleNamespace(monotonic=time.monotonic, sleep=waiting),
    )

    def train_a() -> TrainResult:
        a_training.set()
        assert a_may_finish.wait(60)
        return TrainResult(num_examples=100, mean_loss=0.5, release=PLANNED)

    def train_b() -> TrainResult:
        b_first.append("trains")
        b_moved.set()
        return TrainResult(num_examples=100, mean_loss=0.5, release=PLANNED)

    def run(name: str, train) -> None:
        outcomes[name] = release_round(
            budget=budget,
            run_id=name,
            server_round=1,
            fingerprint="fp",
            planned=PLANNED,
            accountant=RDP,
            train=train,
        )

    a = threading.Thread(target=run, args=("run-a", train_a))
    b = threading.Thread(target=run, args=("run-b", train_b))
    a.start()
    try:
        assert a_training.wait(60)
        b.start()
        assert b_moved.wait(60)
    finally:
        a_may_finish.set()
        a.join(60)
        if b.ident is not None:  # started
            b.join(60)
    assert isinstance(outcomes["run-a"], Released)
    assert isinstance(outcomes["run-b"], Refused)
    with SiteLedger(tmp_path) as ledger:
        assert [r.entry.run_id for r in ledger.entries()] == ["run-a"]
    assert b_first[0] == "waits for the lock"  # not merely refused after training


def _ledger_state(state: Path) -> tuple[list[tuple[str, int]], list[float], list[str]]:
    """(run, round) of every entry in order, their recorded epsilons, and the
    verification problems, as the restarted site will see them."""
    with SiteLedger(state) as ledger:
        problems = list(ledger.verify().problems)
        recs = ledger.entries()
    keys = [(r.entry.run_id, r.entry.server_round) for r in recs]
    return keys, [r.entry.epsilon for r in recs], problems


def _life(state: Path, log: Path, max_eps: float, first: int, kill: int, point: str):
    """One process lifetime of the site: rounds from ``first``, dying in round
    ``kill`` at ``point`` (``"none"``: running until the budget refuses)."""
    args = [str(state), repr(max_eps), "run-a", str(first), str(kill), point, str(log)]
    child = subprocess.run(
        [sys.executable, str(CHILD), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert child.stdout.startswith("READY torch=False"), child.stdout + child.stderr
    if child.returncode == 0:  # a life that ran to the end imported no torch later
        assert child.stdout.splitlines()[-1] == "DONE torch=False", child.stdout
    return child.returncode, log.read_text().splitlines()


def test_ledger_never_exceeds_budget_across_kills_and_restarts(tmp_path: Path) -> None:
    """SIGKILL the site in its second round of each life, at every point of the
    round in turn: holding the lock while verifying, training, opening the
    ledger transaction, with the entry written but not the head, with both
    written but not committed, committed but not sent, sent. After each kill:
    the ledger verifies, holds exactly the rounds that committed (none lost, none
    twice), records the true composed epsilon, never above the budget, and every
    update that was sent was on the ledger before it left. The last life runs
    until the budget refuses, at exactly the number of releases it admits."""
    points, planned = release_child.POINTS, Release(*release_child.PLANNED)

    def eps(n: int) -> float:
        return _eps(n, planned=planned)

    admitted = 12
    max_eps = (eps(admitted) + eps(admitted + 1)) / 2
    state, log = tmp_path / "site", tmp_path / "rounds.log"
    expected: list[tuple[str, int]] = []
    sent: list[tuple[str, int]] = []
    rnd = 1
    for point in points:
        rc, lines = _life(state, log, max_eps, first=rnd, kill=rnd + 1, point=point)
        assert rc == -signal.SIGKILL, (point, rc, lines[-3:])
        assert lines[-1] == f"KILL {rnd + 1} {point}", "died elsewhere"
        committed = points.index(point) >= points.index("committed")
        expected += [("run-a", rnd)] + ([("run-a", rnd + 1)] if committed else [])
        sent = [("run-a", int(x[2])) for x in map(str.split, lines) if x[0] == "SENT"]
        keys, recorded, problems = _ledger_state(state)
        assert problems == [], (point, problems)
        assert keys == expected, point  # nothing lost, nothing counted twice
        assert set(sent) <= set(keys)  # nothing left unrecorded
        assert recorded == pytest.approx([eps(k) for k in range(1, len(keys) + 1)])
        assert max(recorded) <= max_eps
        rnd += 2  # the server moves on; the killed round is never retried
    assert len(expected) < admitted  # the last life still has budget to spend
    rc, lines = _life(state, log, max_eps, first=rnd, kill=0, point="none")
    keys, recorded, problems = _ledger_state(state)
    assert rc == 0 and problems == []
    refused = int(lines[-1].removeprefix("REFUSED "))
    assert lines[-1] == f"REFUSED {refused}" and ("run-a", refused) not in keys
    assert len(keys) == len(set(keys)) == admitted
    assert keys[: len(expected)] == expected
    assert recorded == pytest.approx([eps(k) for k in range(1, admitted + 1)])
    assert max(recorded) <= max_eps < eps(admitted + 1)
    sent = [("run-a", int(x[2])) for x in map(str.split, lines) if x[0] == "SENT"]
    assert set(sent) <= set(keys) and len(sent) == len(set(sent))
