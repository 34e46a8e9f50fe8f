"""Generation samples of the final causal LM, for summary.json: greedy
continuations of the run's fixed prompts (``eval.prompts``), PII-scrubbed.

The prompts are the coordinator's, the continuations the model's: both are
scrubbed (Presidio, the run's ``pii.*`` entities and threshold, tagged) before the
model reads a prompt and before anything is written, so a prompt that names a
person does not put the name in the summary, and a continuation that reproduces
an identifier from a site's training data (what the memorization audit measures)
is not published by the summary itself. Tagging, not pseudonyms: the server holds
no site key. With ``pii.mode = "off"`` the run asked for no scrubbing anywhere;
the samples are then written as generated, and the summary says so.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fedshield.common.device import pick_device
from fedshield.models.lm import generate_samples
from fedshield.privacy.pii import PIIConfig, PIIMode, Scrubber

from .config import ServerConfig
from .evaluate import CentralEvaluator

__all__ = ["generation_samples", "prompts"]


def prompts(value: str) -> list[str]:
    """``eval.prompts``: ``|``-separated, blanks dropped."""
    return [p.strip() for p in value.split("|") if p.strip()]


def generation_samples(
    evaluator: CentralEvaluator, cfg: ServerConfig
) -> dict[str, Any] | None:
    """``{"scrubbed": ..., "samples": [{"prompt", "text"}]}``, or None when the
    run asks for none (``eval.generate-tokens = 0`` or no prompt)."""
    tokens = int(cfg.run_config["eval.generate-tokens"])
    asked = prompts(str(cfg.run_config["eval.prompts"]))
    if tokens == 0 or not asked:
        return None
    pii = PIIConfig.from_run_config(cfg.run_config)
    scrubbing = pii.mode is not PIIMode.OFF
    scrubber = Scrubber(replace(pii, mode=PIIMode.TAG)) if scrubbing else None

    def clean(texts: list[str]) -> list[str]:
        return list(scrubber.scrub_many(texts)) if scrubber is not None else texts

    clean_prompts = clean(asked)
    texts = generate_samples(
        evaluator.loaded.model,
        evaluator.loaded.tokenizer,
        clean_prompts,
        max_new_tokens=tokens,
        device=pick_device(),
    )
    return {
        "scrubbed": scrubbing,
        "greedy_tokens": tokens,
        "samples": [
            {"prompt": p, "text": t}
            for p, t in zip(clean_prompts, clean(texts), strict=True)
        ],
    }
