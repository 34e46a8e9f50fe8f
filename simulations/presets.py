"""Named sets of run-config values for ``fedshield simulate --preset NAME``: a
starting point the user's own ``--run-config`` values override key by key.

- ``causal-lm``: federated fine-tuning of the packaged SmolLM2-135M-Instruct
  (LoRA on the attention projections, DP-SGD calibrated to epsilon 8 per site
  over the run, secure aggregation: the defaults) on the review snippets as text,
  with synthetic PII injected so that scrubbing matters. Sized for 4 sites on 2
  CPU cores (a LoRA step of 8 x 128 tokens costs about 4.5 s there, most of it the
  49,152-way output layer): 400 training records of at most 48 tokens, 100 held
  out, 2 rounds; measured 5 min 8 s.
"""

from __future__ import annotations

__all__ = ["PRESETS", "preset_overrides"]

PRESETS: dict[str, dict[str, str]] = {
    "causal-lm": {
        "model.task": "'causal-lm'",
        "model.max-length": "48",
        "num-server-rounds": "2",
        "train.batch-size": "16",
        "train.lr": "0.002",
        "data.train-examples": "400",
        "data.test-examples": "100",
        "dp.target-epsilon": "8.0",
        "eval.batch-size": "32",
        "audit.canary-kind": "'secret'",
    },
}


def preset_overrides(name: str, given: dict[str, str]) -> list[str]:
    """The preset's ``key=value`` overrides for the keys ``given`` leaves out."""
    if name not in PRESETS:
        raise ValueError(
            f"No preset {name!r}; the presets are: {', '.join(sorted(PRESETS))}."
        )
    return [f"{k}={v}" for k, v in PRESETS[name].items() if k not in given]
