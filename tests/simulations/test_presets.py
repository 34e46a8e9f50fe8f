"""``fedshield simulate --preset``: the preset's values, overridden key by key by
the user's own --run-config, and every preset value a declared run-config key."""

from __future__ import annotations

import pytest

from fedshield.common.run_config import RunConfig
from fedshield.simulations.launcher import override_pairs
from fedshield.simulations.presets import PRESETS, preset_overrides


def test_the_users_values_win_key_by_key() -> None:
    given = {"num-server-rounds": "5", "dp.target-epsilon": "3.0"}
    items = preset_overrides("causal-lm", given)
    pairs = override_pairs([*items, "num-server-rounds=5 dp.target-epsilon=3.0"])
    assert pairs["num-server-rounds"] == "5" and pairs["dp.target-epsilon"] == "3.0"
    assert pairs["model.task"] == "'causal-lm'"
    assert not any(i.startswith("num-server-rounds=") for i in items)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_value_is_a_valid_run_config_value(name: str) -> None:
    import tomllib

    values = {k: tomllib.loads(f"v = {v}")["v"] for k, v in PRESETS[name].items()}
    parsed = RunConfig.parse(values)  # unknown keys or bad values raise
    assert all(parsed[k] == v for k, v in values.items())


def test_an_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="causal-lm"):
        preset_overrides("gpt", {})
