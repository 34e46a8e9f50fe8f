from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from fedshield.common.layout import RunLayout
from fedshield.privacy.client_dp import ClientDPConfig
from fedshield.privacy.dp import AccountantKind
from fedshield.privacy.ledger import LedgerReader, Mechanism
from fedshield.server.central_dp import ClientLevelAccountant


def _accountant(out: Path, run: str = "run-1") -> ClientLevelAccountant:
    return ClientLevelAccountant(
        out_dir=out,
        run_id=run,
        config=ClientDPConfig(enabled=True, clip_norm=0.5, noise_multiplier=1.2),
        accountant=AccountantKind.RDP,
    )


def test_client_level_epsilon_composes_rounds_without_sampling_amplification(
    tmp_path: Path,
) -> None:
    """Flower samples a fixed number of sites without replacement, with randomness
    the coordinator controls: no Poisson amplification, every round at q = 1."""
    acc = _accountant(tmp_path)
    eps = [acc.record_round(server_round=r, sampled=5, available=10) for r in (1, 2)]
    # a restart (resume) opens the same ledger and keeps composing
    eps.append(
        _accountant(tmp_path).record_round(server_round=3, sampled=5, available=10)
    )
    reference = RDPAccountant()
    for _ in range(3):
        reference.step(noise_multiplier=1.2, sample_rate=1.0)
    assert eps[2] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
    assert eps[0] < eps[1] < eps[2]
    # another run in the same out-dir does not inherit this run's epsilon
    other = _accountant(tmp_path, run="run-2")
    assert other.record_round(server_round=1, sampled=5, available=10) == eps[0]


def test_summary_reads_the_same_epsilon_as_the_server_ledger(tmp_path: Path) -> None:
    acc = _accountant(tmp_path)
    for r in (1, 2):
        acc.record_round(server_round=r, sampled=3, available=3)
    summary = acc.summary()
    with LedgerReader(RunLayout(tmp_path).server_ledger) as ledger:
        entries = ledger.entries()
        assert ledger.verify().ok
    assert [e.entry.mechanism for e in entries] == [Mechanism.CLIENT_GAUSSIAN] * 2
    assert summary["epsilon"] == entries[-1].entry.epsilon
    assert summary["rounds"] == 2 and summary["delta"] == 1e-5


def test_impossible_sampling_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sampling rate"):
        _accountant(tmp_path).record_round(server_round=1, sampled=4, available=3)


def test_distributed_rounds_compose_the_skellam_noise_the_survivors_added(
    tmp_path: Path,
) -> None:
    """Under secure aggregation the sites add the noise: each round is recorded as
    mechanism client-skellam with the variance its survivors reported, composed by
    RDP across rounds and across a resume; fewer survivors (less noise) cost more."""
    from fedshield.privacy.distributed_dp import (
        DistributedRound,
        SkellamCalibration,
        distributed_epsilon,
    )

    cal = SkellamCalibration(
        clip_norm=0.5,
        step=2 / (2**16 - 1),
        dimension=1000,
        noise_multiplier=1.2,
        min_survivors=2,
    )

    def accountant() -> ClientLevelAccountant:
        return ClientLevelAccountant(
            out_dir=tmp_path,
            run_id="run-1",
            config=ClientDPConfig(enabled=True, clip_norm=0.5, noise_multiplier=1.2),
            accountant=AccountantKind.RDP,
            distributed=cal,
        )

    acc = accountant()
    variances = [4 * cal.site_variance, 2 * cal.site_variance]  # 4, then 2 survive
    eps = [
        acc.record_round(server_round=1, sampled=4, available=4, noise_variance=v)
        for v in variances[:1]
    ]
    eps.append(  # a resume: the same ledger, composing on
        accountant().record_round(
            server_round=2, sampled=4, available=4, noise_variance=variances[1]
        )
    )
    rounds = [
        DistributedRound(
            l2_sensitivity=cal.l2_sensitivity,
            l1_sensitivity=cal.l1_sensitivity,
            variance=v,
        )
        for v in variances
    ]
    assert eps[1] == pytest.approx(distributed_epsilon(rounds, delta=1e-5), rel=1e-12)
    # the round with 2 survivors (half the noise) cost more than a second with 4
    assert eps[1] > distributed_epsilon([rounds[0]] * 2, delta=1e-5)
    summary = acc.summary()
    assert summary["epsilon"] == eps[1] and summary["rounds"] == 2
    assert summary["neighbouring"].startswith("zero-out")
    with LedgerReader(RunLayout(tmp_path).server_ledger) as ledger:
        assert ledger.verify().ok
        assert {e.entry.mechanism for e in ledger.entries()} == {
            Mechanism.CLIENT_SKELLAM
        }
    with pytest.raises(ValueError, match="noise variance"):
        acc.record_round(server_round=3, sampled=4, available=4)


def test_a_resume_refuses_a_client_level_ledger_removed_or_replaced(tmp_path) -> None:
    """Whoever can write out-dir must not shrink the run's client-level epsilon
    by removing or replacing out-dir/ledger beside a (signed) checkpoint."""
    import shutil

    from fedshield.server.app import LEDGER_KEY_FIELD, _check_server_ledger
    from fedshield.server.checkpoint import CheckpointError

    acc = _accountant(tmp_path, "run-1")
    history = {"rounds": []}
    for rnd in (1, 2):
        eps = acc.record_round(server_round=rnd, sampled=3, available=3)
        history["rounds"].append({"round": rnd, "client_epsilon": eps})
    history[LEDGER_KEY_FIELD] = acc.key_fingerprint()
    _check_server_ledger(acc, history)  # intact: resumes
    shutil.rmtree(acc.state_dir)
    with pytest.raises(CheckpointError, match="holds 0 release"):
        _check_server_ledger(_accountant(tmp_path, "run-1"), history)
    # a new ledger with as many releases, signed by another key
    fresh = _accountant(tmp_path, "run-1")
    for rnd in (1, 2):
        fresh.record_round(server_round=rnd, sampled=3, available=3)
    with pytest.raises(CheckpointError, match="another key"):
        _check_server_ledger(fresh, history)
