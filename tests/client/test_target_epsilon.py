"""``dp.target-epsilon`` at a site: sigma is calibrated each round on what the data
has already spent (the ledger, in the budget's scope) and the rounds left in the
run, at the budget's delta, so the site's composed epsilon never passes the target:
not after the planned rounds, not after a resume that raises ``num-server-rounds``,
not over a second run on the same records. The releases are rebuilt from what the
site reports or records and composed independently."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from opacus.accountants import RDPAccountant

from fedshield.client.app import train
from fedshield.client.node import BudgetScope
from fedshield.client.release import Refused, Released, SiteBudget, release_round
from fedshield.client.trainer import TrainResult
from fedshield.common.config import ConfigError
from fedshield.privacy.budget import Release, TargetEpsilonSpent, plan_release
from fedshield.privacy.dp import AccountantKind, DPConfig
from fedshield.privacy.ledger import LedgerReader, SiteLedger

from .site_round import accepting, server_message, site_context, train_reply

RDP = AccountantKind.RDP


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("epochs", [1, 2])
def test_a_target_epsilon_run_reaches_the_target_after_its_planned_rounds(
    tmp_path: Path, tiny_run_config, epochs: int
) -> None:
    cfg = {
        **tiny_run_config,
        "pii.mode": "off",
        "secagg.enabled": False,
        "num-server-rounds": 3,
        "train.local-epochs": epochs,
        "dp.target-epsilon": 4.0,
    }
    reply = train_reply(tmp_path, cfg, records=24)
    metrics = reply.content.metric_records["metrics"]
    sigma, q, steps = (
        float(metrics["noise-multiplier"]),
        float(metrics["sample-rate"]),
        int(metrics["steps"]),
    )
    assert q == 1 / 3 and steps == 3 * epochs  # 24 records, batch 8
    assert 3.9 < _epsilon(sigma, q, 3 * steps) <= 4.0  # after the 3 planned rounds
    # and the site's ledger spent one round's worth of it (a fresh site)
    assert float(metrics["epsilon"]) == pytest.approx(_epsilon(sigma, q, steps))


def _epsilon(sigma: float, q: float, steps: int, delta: float = 1e-5) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    return accountant.get_epsilon(delta)


def _compose(releases: list[Release], delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [
        (r.noise_multiplier, r.sample_rate, r.steps) for r in releases
    ]
    return accountant.get_epsilon(delta)


def _site_round(
    site_dir: Path, run_config: dict[str, Any], server_round: int, **node: Any
) -> Any:
    """Round ``server_round`` of the real ``train`` handler at the deployed site in
    ``site_dir`` (24 records, written once), with extra node-config keys."""
    data = site_dir / "site.csv"
    if not data.exists():
        site_dir.mkdir(parents=True, exist_ok=True)
        with data.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(
                (f"note {i}: {'ok' if i % 2 else 'no'}", i % 2) for i in range(24)
            )
    msg = server_message(
        run_config,
        message_type="train",
        config={"server-round": server_round, "run-key": "run-a"},
        node_id=3,
    )
    node_config = {
        "data-path": str(data),
        "state-dir": str(site_dir / "state"),
        **accepting(run_config),
        **node,
    }
    return train(msg, site_context(run_config, node_config, node_id=3))


def _recorded(site_dir: Path) -> list[Any]:
    with LedgerReader(site_dir / "state") as ledger:
        return [r.entry for r in ledger.entries()]


@pytest.mark.usefixtures("task_identity")
def test_a_resume_with_more_rounds_stays_within_the_target_at_the_sites_delta(
    tmp_path: Path, tiny_run_config
) -> None:
    """The coordinator runs round 1 of a 2-round run at target 4, then resumes at
    round 2 with num-server-rounds raised to 6. The site (node config delta=1e-7,
    the run's dp.delta 1e-5) calibrates round 2 on its ledger and the 5 rounds left,
    at 1e-7: round 1 plus 5 rounds like round 2 stay within the target there.
    Calibrated afresh for 6 rounds (ignoring round 1) or at dp.delta, they do not."""
    cfg = {
        **tiny_run_config,
        "pii.mode": "off",
        "secagg.enabled": False,
        "dp.target-epsilon": 4.0,
        "dp.delta": 1e-5,
    }
    _site_round(tmp_path, {**cfg, "num-server-rounds": 2}, 1, delta=1e-7)
    _site_round(tmp_path, {**cfg, "num-server-rounds": 6}, 2, delta=1e-7)
    first, second = (e.release for e in _recorded(tmp_path))
    assert [e.delta for e in _recorded(tmp_path)] == [1e-7, 1e-7]
    assert 3.9 < _compose([first] * 2, 1e-7) <= 4.0  # round 1: the 2-round run
    planned_rest = [first] + [second] * 5
    assert 3.9 < _compose(planned_rest, 1e-7) <= 4.0
    assert _recorded(tmp_path)[-1].epsilon <= 4.0


@pytest.mark.usefixtures("task_identity")
def test_a_delta_of_one_over_n_is_refused_before_training(
    tmp_path: Path, tiny_run_config
) -> None:
    """24 records: delta = 0.05 >= 1/24 would let a record leave in the clear and
    still report a small epsilon. A coordinator cannot set it (the run's dp.delta
    only lowers the site's own: the round trains at 1e-5); a site that sets it
    itself is stopped before training, with nothing recorded."""
    cfg = {
        **tiny_run_config,
        "pii.mode": "off",
        "secagg.enabled": False,
        "dp.delta": 0.05,
    }
    with pytest.raises(ConfigError, match=r"delta must be > 0 and < 1/n = 0\.0417"):
        _site_round(tmp_path / "own", cfg, 1, delta="0.05")
    assert not (tmp_path / "own" / "state" / "ledger.sqlite").exists()
    reply = _site_round(tmp_path / "coordinator", cfg, 1)
    assert reply.content.metric_records["metrics"]["delta"] == 1e-5


def _ledger_round(
    budget: SiteBudget,
    dp: DPConfig,
    *,
    rounds: int,
    server_round: int,
    run: str,
    fingerprint: str = "v1",
) -> Released | Refused | TargetEpsilonSpent:
    """One round through the real ledger and lock, planned as the app plans it
    (q = 1: 10 records, batch 10; the search then costs milliseconds)."""
    try:
        planned = plan_release(
            dp,
            num_examples=10,
            batch_size=10,
            local_epochs=1,
            planned_rounds=rounds,
            server_round=server_round,
            delta=budget.delta,
            history=budget.history(fingerprint),
        )
    except TargetEpsilonSpent as spent:
        return spent

    def trained() -> TrainResult:
        return TrainResult(num_examples=10, mean_loss=0.1, release=planned)

    return release_round(
        budget=budget,
        run_id=run,
        server_round=server_round,
        fingerprint=fingerprint,
        planned=planned,
        accountant=RDP,
        train=trained,
    )


def _ledger(budget: SiteBudget) -> tuple[list[float], list[Release]]:
    """Every recorded epsilon, and every release of the site."""
    with SiteLedger(budget.state_dir) as ledger:
        eps = [r.entry.epsilon for r in ledger.entries()]
        return eps, ledger.history(dataset_fingerprint=None)


@pytest.mark.parametrize("scope", list(BudgetScope), ids=str)
def test_resumes_and_reruns_never_record_epsilon_above_the_target(
    tmp_path: Path, scope: BudgetScope
) -> None:
    """Coordinator attacks on a site without a budget of its own (target 3): run A
    (3 rounds) stops after round 2 and resumes with 10 rounds; run B reuses the
    data; run C trains on an edited copy of it. Every epsilon on the ledger stays
    within the target; once nothing is left a round gets the search's slack or is
    refused before training. With budget-scope=site the edited copy shares the
    target; with the default dataset scope it is other data, with its own."""
    budget = SiteBudget(tmp_path, max_epsilon=0.0, delta=1e-5, scope=scope)
    dp = DPConfig(target_epsilon=3.0)
    for rnd in (1, 2):
        _ledger_round(budget, dp, rounds=3, server_round=rnd, run="run-a")
    for rnd in range(3, 11):
        _ledger_round(budget, dp, rounds=10, server_round=rnd, run="run-a")
    eps, history = _ledger(budget)
    assert len(eps) == 10 and max(eps) <= 3.0 and eps[-1] == pytest.approx(3, abs=0.05)
    for rnd in (1, 2, 3):
        _ledger_round(budget, dp, rounds=3, server_round=rnd, run="run-b")
        _ledger_round(
            budget, dp, rounds=3, server_round=rnd, run="run-c", fingerprint="v2"
        )
    eps, history = _ledger(budget)
    assert max(eps) <= 3.0
    if scope is BudgetScope.SITE:
        assert _compose(history, 1e-5) <= 3.0
    else:  # v2's own three rounds reach its own target
        with SiteLedger(budget.state_dir) as ledger:
            v2 = ledger.history(dataset_fingerprint="v2")
        assert len(v2) == 3 and _compose(v2, 1e-5) == pytest.approx(3.0, abs=0.05)


@pytest.mark.usefixtures("task_identity")
def test_a_spent_target_is_a_refusal_with_its_reason(
    tmp_path: Path, tiny_run_config
) -> None:
    """A first run at a low noise multiplier spends more than epsilon 2 on this
    data; the coordinator then runs it with dp.target-epsilon=2. No sigma keeps the
    data within the target: the site refuses, says why, and records nothing."""
    cfg = {**tiny_run_config, "pii.mode": "off", "secagg.enabled": False}
    first = _site_round(tmp_path, {**cfg, "dp.noise-multiplier": 0.3}, 1)
    assert first.content.metric_records["metrics"]["epsilon"] > 2.0
    again = _site_round(tmp_path, {**cfg, "dp.target-epsilon": 2.0}, 2)
    assert not again.has_error() and not again.content.array_records
    reason = str(again.content.config_records["refusal"]["reason"])
    assert "dp.target-epsilon=2" in reason
    assert len(_recorded(tmp_path)) == 1
