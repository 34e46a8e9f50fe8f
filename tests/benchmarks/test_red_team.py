"""The red team (benchmarks/red_team.py) as tests: a curious or malicious
coordinator against real sites, one test per attack, each asserting that the attack
was refused or learned nothing.

An attack that succeeds against today's code is a strict ``xfail`` naming what is
missing (issue 14); when the fix lands the test passes, strict xfail turns that
into a failure, and the mark comes off.

The second half shows that each attack is real: against a site weakened on
purpose (its own policy switched off, or the guard patched away) the same attack
succeeds. An attack that could not succeed anywhere would prove nothing.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedshield.privacy.secagg import ClientSession, SecAggParams

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import red_team  # noqa: E402  (registers every attack)
from red_team_harness import REGISTRY, Attack, Env, Federation, Outcome  # noqa: E402

pytestmark = pytest.mark.usefixtures("task_identity")

# What today's code lacks, per attack that still succeeds (issue 14).
MISSING = {
    "sybil-sites": "outside the threat model (Sybil sites): a coordinator that "
    "runs every other participant reads the last real site from the sum; needs "
    "authenticated site identities",
}


def _params() -> list[Any]:
    return [
        pytest.param(
            a,
            id=a.name,
            marks=[pytest.mark.xfail(strict=True, reason=MISSING[a.name])]
            if a.name in MISSING
            else [],
        )
        for a in REGISTRY
    ]


@pytest.fixture(scope="session")
def red_team_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """One tiny model and run config for every attack (the metric-reading attacks
    share one observed round through ``Env.cache``)."""
    return Env.create(tmp_path_factory.mktemp("red-team"))


def test_the_registry_plays_every_attack_the_issue_names() -> None:
    names = {a.name for a in REGISTRY if a.in_scope}
    assert len(names) >= 12
    assert {
        "downgrade-train",
        "downgrade-train-default",
        "switch-off-secagg",
        "weaken-threshold",
        "pii-off",
        "pii-fewer-entities",
        "pii-higher-threshold",
        "ring-attack",
        "split-holders",
        "withheld-shares",
        "replay-setup",
        "budget-reset-by-settings",
        "m-from-update-norm",
        "read-pii-counts",
        "read-train-metrics",
        "target-epsilon-resume",
        "weights-isolation",
    } <= names
    assert set(MISSING) <= {a.name for a in REGISTRY}


def test_the_benchmark_writes_its_headline(tmp_path: Path) -> None:
    out = tmp_path / "red_team.json"
    doc = red_team.main(["--only", "downgrade-train", "sybil-sites", "--out", str(out)])
    assert json.loads(out.read_text()) == doc
    assert doc["headline"] == {
        "attacks_tried": 1,
        "attacks_succeeded": 0,
        "attacks_errored": 0,
        "out_of_scope_tried": 1,
        "out_of_scope_succeeded": 1,
    }
    rows = {r["name"]: r for r in doc["attacks"]}
    assert rows["downgrade-train"]["outcome"] == "refused"
    assert rows["downgrade-train"]["claim"] and rows["downgrade-train"]["detail"]


@pytest.mark.parametrize("attack", _params())
def test_the_coordinator_learns_nothing(attack: Attack, red_team_env: Env) -> None:
    result = attack.play(red_team_env)
    assert result.outcome is not Outcome.SUCCEEDED, (attack.claim, result.detail)


# -- the attacks are real: each succeeds against a site weakened on purpose ----------

Weaken = Callable[[pytest.MonkeyPatch], None]


def _policy(**keys: str) -> Weaken:
    """Sites whose operator switched the guard off in their own node config."""

    def weaken(monkeypatch: pytest.MonkeyPatch) -> None:
        policy = {k.replace("_", "-"): v for k, v in keys.items()}
        monkeypatch.setattr(Federation, "site_policy", policy)

    return weaken


def _patch(target: str, replacement: Any) -> Weaken:
    def weaken(monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(target, replacement)

    return weaken


def _any_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parameters are taken as sent: no 't > holders / 2', no range check."""
    monkeypatch.setattr(SecAggParams, "__post_init__", lambda self: None)


def _masks_with_any_inbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """The site masks however few shares arrived (the check reads t; it sees 1)."""
    real = ClientSession.masked_input

    def masked_input(self: ClientSession, inbox: Any, x: Any) -> Any:
        strict = self.params
        loose = copy.copy(strict)  # reads t = 1, binds shares to the real round
        loosened = type(
            "Loose",
            (SecAggParams,),
            {
                "threshold": property(lambda _: 1),
                "transcript": property(lambda _: strict.transcript),
            },
        )
        object.__setattr__(loose, "__class__", loosened)
        self.params = loose
        try:
            return real(self, inbox, x)
        finally:
            self.params = strict

    monkeypatch.setattr(ClientSession, "masked_input", masked_input)


def _unstable_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    """A site whose budget scope changes every run (as when it fingerprinted the
    scrubbed text, which each pii.* setting changes)."""
    monkeypatch.setattr(
        "fedshield.client.app.dataset_fingerprint", lambda *a: os.urandom(16).hex()
    )


def _trains_every_setup(msg: Any, context: Any) -> int:
    return int(msg.content.config_records["config"]["server-round"])


WEAKENED: dict[str, Weaken] = {
    "downgrade-train": _policy(require_secagg="false"),
    "downgrade-train-default": _policy(require_secagg="false"),
    "switch-off-secagg": _policy(require_secagg="false"),
    "pii-off": _policy(pii_mode="off"),
    "pii-fewer-entities": _policy(pii_entities="AGE"),
    "pii-higher-threshold": _policy(pii_score_threshold="1.0"),
    "read-pii-counts": _policy(release_metrics="all"),
    "read-train-metrics": _policy(release_metrics="all"),
    "read-saturation": _policy(release_metrics="all"),
    "split-holders": _any_threshold,
    "weaken-threshold": _any_threshold,
    "ring-attack": _patch(
        "fedshield.client.secagg_mod._check_params", lambda params, policy: None
    ),
    "withheld-shares": _masks_with_any_inbox,
    "threshold-below-site-floor": _patch(
        "fedshield.client.policy.SitePolicy.check_secagg", lambda self, params: None
    ),
    "replay-setup": _patch(
        "fedshield.client.secagg_mod._check_round", _trains_every_setup
    ),
    "replay-fresh-run-key": _patch(
        "fedshield.client.secagg_mod._check_round", _trains_every_setup
    ),
    "budget-reset-by-settings": _unstable_fingerprint,
}


def _trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sites that assume no other site colludes with the coordinator
    (secagg-max-colluders=0): small rounds and low thresholds are then allowed, so
    that the guard switched off is the one the attack meets."""
    merged = {**Federation.site_policy, "secagg-max-colluders": 0}
    monkeypatch.setattr(Federation, "site_policy", merged)


def _any_story(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every consistency tag counts: holders act on their own story of who survived
    (the check of Bonawitz et al.'s active variant switched off)."""
    monkeypatch.setattr(
        "fedshield.privacy.secagg.client.hmac.compare_digest", lambda a, b: True
    )
    monkeypatch.setattr(
        "fedshield.client.policy.SitePolicy.check_secagg", lambda self, params: None
    )
    _any_threshold(monkeypatch)


WEAKENED["split-holders"] = _any_story
WEAKENED["weaken-threshold"] = _any_story


@pytest.mark.slow  # a second run of each attack
@pytest.mark.parametrize("name", sorted(WEAKENED))
def test_the_attack_succeeds_against_a_weakened_site(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (attack,) = [a for a in REGISTRY if a.name == name]
    WEAKENED[name](monkeypatch)
    _trusting(monkeypatch)
    result = attack.play(Env.create(tmp_path))
    assert result.outcome is Outcome.SUCCEEDED, result.detail
