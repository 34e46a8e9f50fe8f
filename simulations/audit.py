"""Audit a finished simulation: attack its final global model, score its canaries.

For each simulated site, with the run's own config (``summary.json``):

- members: the site's training records as training saw them (scrubbed, canaries
  left out); non-members: the site's evaluation share, drawn from the same
  distribution (same PII injection and scrubbing) and never trained on.
- loss-threshold attack (Yeom et al. 2018) and offline LiRA (Carlini et al. 2022)
  with ``audit.lira-references`` reference models, trained here the way the run
  trained (same model, LoRA/full, DP settings and noise multiplier, rounds x local
  epochs) on population records no site holds;
- the one-run audit (Steinke et al. 2023) when the run planted canaries
  (``audit.canaries``): the final model's loss ranks each site's canaries, and the
  empirical epsilon lower bound is set beside the site's sample-level epsilon for
  this run from its ledger.

Everything is regenerated from the run config and seed (site shares, canaries,
which canaries were included), so the audit needs no file a site would not keep.
It reads the sites' scrub caches under the run directory (scrubbing again into the
cache only if one is missing); the report goes to ``--out`` (default
``RUN_DIR/audit``). Deployed runs, whose data
stays at the sites, are out of scope: the auditor would need the site's records.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fedshield.client.config import ClientConfig
from fedshield.client.data import LabeledTexts, tokenize
from fedshield.client.scrubbing import scrub_site
from fedshield.client.site import SiteData
from fedshield.client.trainer import batch_inputs, pick_device, train_site
from fedshield.models import LoadedModel, load_model, load_trainable_state
from fedshield.models.config import ConfigError
from fedshield.privacy.audit import (
    AuditConfig,
    RocCurve,
    SiteAudit,
    audit_guesses,
    lira_offline_scores,
    logit_confidence,
    loss_threshold_scores,
    roc,
)
from fedshield.privacy.pii import PIIMode, Scrubber
from fedshield.privacy.pii.engine import KEY_NAME
from torch.utils.data import DataLoader

from .scenario import reference_population, simulated_site, site_canaries

__all__ = ["AuditError", "RecordScores", "audit_run", "score_records"]

logger = logging.getLogger(__name__)
Progress = Callable[[str], None]

# the audit.* defaults, for runs made before the audit keys existed
AUDIT_DEFAULTS = {
    f"audit.{f.name.replace('_', '-')}": (
        str(f.default) if not isinstance(f.default, int | float) else f.default
    )
    for f in dataclasses.fields(AuditConfig)
}


class AuditError(RuntimeError):
    """The run directory cannot be audited; the message says why and what to do."""


@dataclass(frozen=True)
class RecordScores:
    """Per-record cross-entropy loss and LiRA confidence phi under one model."""

    loss: np.ndarray  # (n,)
    phi: np.ndarray  # (n,)


@torch.no_grad()
def score_records(
    loaded: LoadedModel,
    data: LabeledTexts,
    *,
    max_length: int,
    batch_size: int = 128,
    device: torch.device | None = None,
) -> RecordScores:
    """Each record's loss and phi = log p_y - log(1 - p_y) under ``loaded``."""
    device = device or pick_device()
    dataset = tokenize(data, loaded.tokenizer, max_length=max_length)
    model = loaded.model.to(device).eval()
    losses, phis = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate):
        inputs, labels = batch_inputs(batch, device)
        logits = model(**inputs).logits.float()  # (b, num_labels)
        losses.append(F.cross_entropy(logits, labels, reduction="none").cpu())
        phis.append(logit_confidence(logits, labels).cpu())
    return RecordScores(
        loss=torch.cat(losses).numpy().astype(np.float64),
        phi=torch.cat(phis).numpy().astype(np.float64),
    )


def _read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.is_file():
        raise AuditError(
            f"{path} does not exist: expected a fedshield run directory (the --out "
            "of `fedshield simulate`)."
        )
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AuditError(f"{path} is not readable JSON ({err}).") from err
    if summary.get("status") != "completed":
        raise AuditError(
            f"The run in {run_dir} has status {summary.get('status')!r}; only a "
            "completed run has a final model to audit. Resume it first "
            '(--run-config "resume=true").'
        )
    return summary


def _site_index(name: str) -> int:
    match = re.fullmatch(r"site-(\d+)", name)
    if match is None:
        raise AuditError(
            f"Site {name!r} is not a simulated site (site-<k>). Auditing a deployed "
            "run needs that site's records, which stay at the site; run the audit "
            "on a simulation of the same setup."
        )
    return int(match.group(1))


def _final_model(run_dir: Path, summary: dict[str, Any], cfg: ClientConfig) -> Any:
    from safetensors.torch import load_file

    name = summary.get("weights", {}).get("trainable_state", "")
    path = run_dir / name if name else run_dir / "final_trainable.safetensors"
    if not path.is_file():
        raise AuditError(f"{path} (the final model's trainable weights) is missing.")
    loaded = load_model(cfg.model)
    load_trainable_state(loaded.model, load_file(str(path)))
    return loaded


def _train_reference(
    cfg: ClientConfig,
    population: LabeledTexts,
    *,
    examples: int,
    noise_multiplier: float,
    seed: int,
) -> LoadedModel:
    """A reference model trained like the run: same starting model, rounds x
    local epochs over ``examples`` population records, the run's DP settings."""
    rng = np.random.default_rng(seed)
    take = rng.choice(
        len(population), size=min(examples, len(population)), replace=False
    )
    data = population.subset(sorted(int(i) for i in take))
    loaded = load_model(cfg.model)
    train_cfg = dataclasses.replace(
        cfg.train, local_epochs=cfg.num_rounds * cfg.train.local_epochs
    )
    train_site(
        model=loaded.model,
        dataset=tokenize(data, loaded.tokenizer, max_length=cfg.model.max_length),
        train_cfg=train_cfg,
        dp_cfg=cfg.dp,
        mode=cfg.grad_sample_mode,
        noise_multiplier=noise_multiplier,
        seed=seed,
    )
    return loaded


def audit_run(
    run_dir: Path, *, num_sites: int | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the configured attacks on the finished run in ``run_dir``; returns the
    report's data (JSON-safe except the ``RocCurve``s under ``"curves"``).
    ``num_sites``: how many sites the simulation had (default: one more than the
    highest site-<k> in the summary; a site that never reported would make that
    guess wrong, which the check of every site's record count catches)."""
    say = progress or (lambda _msg: None)
    summary = _read_summary(run_dir)
    run_config = {**AUDIT_DEFAULTS, **summary["config"]}
    try:
        cfg = ClientConfig.from_run_config(run_config)
        audit = AuditConfig.from_run_config(run_config)
    except ConfigError as err:
        raise AuditError(f"The run's config in {run_dir}/summary.json: {err}") from err
    sites = summary.get("sites", {})
    if not sites:
        raise AuditError(f"{run_dir}/summary.json lists no sites: nothing to audit.")
    names = sorted(sites, key=_site_index)
    num_partitions = num_sites or max(_site_index(n) for n in names) + 1
    if cfg.pii.mode is PIIMode.PSEUDONYM:
        for name in names:
            if not (run_dir / "sites" / name / KEY_NAME).is_file():
                raise AuditError(
                    f"{run_dir}/sites/{name}/{KEY_NAME} is missing: the audit needs "
                    "the site's pseudonym key to see the text training saw. Restore "
                    "it (a new key would give other surrogates)."
                )

    say("loading the final global model")
    final = _final_model(run_dir, summary, cfg)
    members: dict[str, LabeledTexts] = {}
    others: dict[str, LabeledTexts] = {}
    canary_data: dict[str, tuple[LabeledTexts, tuple[bool, ...]]] = {}
    for name in names:
        k = _site_index(name)
        say(f"{name}: regenerating its records")
        try:
            train, held = simulated_site(
                partition_id=k, num_partitions=num_partitions, run_config=run_config
            )
            canaries = site_canaries(
                partition_id=k, num_partitions=num_partitions, run_config=run_config
            )
        except (ConfigError, ValueError) as err:
            raise AuditError(f"Regenerating {name}'s records: {err}") from err
        if len(train) != int(sites[name].get("examples", -1)):
            raise AuditError(
                f"{name} trained on {sites[name].get('examples')} records, but "
                f"regenerating its share for {num_partitions} sites gives "
                f"{len(train)}. Pass the run's number of sites (--sites N)."
            )
        site = scrub_site(
            SiteData(name=name, train=train, eval=held),
            cfg=cfg.pii,
            state_dir=run_dir / "sites" / name,
        ).site
        assert site.eval is not None
        planted = sum(canaries.included) if canaries else 0
        members[name] = site.train.subset(list(range(len(site.train) - planted)))
        others[name] = site.eval
        if canaries is not None:
            scrubber = _scrubber(cfg, run_dir / "sites" / name)
            texts = tuple(scrubber.scrub_many(canaries.texts))
            canary_data[name] = (
                LabeledTexts(texts=texts, labels=canaries.labels),
                canaries.included,
            )

    def scores(loaded: LoadedModel, data: LabeledTexts) -> RecordScores:
        return score_records(loaded, data, max_length=cfg.model.max_length)

    say("scoring every site's records under the final model")
    target = {
        name: (scores(final, members[name]), scores(final, others[name]))
        for name in names
    }
    references: list[dict[str, tuple[RecordScores, RecordScores]]] = []
    if audit.lira_references:
        pool = reference_population(
            num_partitions=num_partitions, run_config=run_config
        )
        # the references draw from 2x what one trains on (scrubbing all is slow)
        keep = np.random.default_rng(cfg.seed).permutation(len(pool))
        pool = pool.subset(sorted(keep[: 2 * audit.reference_examples].tolist()))
        population = _scrubbed(pool, cfg)
        sigma = max(float(sites[n].get("noise_multiplier") or 0.0) for n in names)
        for i in range(audit.lira_references):
            say(f"training reference model {i + 1}/{audit.lira_references}")
            ref = _train_reference(
                cfg,
                population,
                examples=audit.reference_examples,
                noise_multiplier=sigma,
                seed=cfg.seed * 7_919 + i,
            )
            references.append(
                {n: (scores(ref, members[n]), scores(ref, others[n])) for n in names}
            )

    results: list[SiteAudit] = []
    curves: dict[str, dict[str, RocCurve]] = {}
    for name in names:
        ins, outs = target[name]
        loss_curve = roc(
            loss_threshold_scores(ins.loss), loss_threshold_scores(outs.loss)
        )
        lira_curve = None
        if references:
            phi = np.concatenate([ins.phi, outs.phi])
            ref_phi = np.stack(
                [np.concatenate([r[name][0].phi, r[name][1].phi]) for r in references]
            )
            lira = lira_offline_scores(phi, ref_phi)
            lira_curve = roc(lira[: ins.phi.size], lira[ins.phi.size :])
        delta = float(sites[name].get("delta") or cfg.dp.delta)
        one_run = None
        if name in canary_data:
            data, included = canary_data[name]
            k_plus, k_minus = audit.guesses
            one_run = audit_guesses(
                loss_threshold_scores(scores(final, data).loss),
                included,
                k_plus=k_plus,
                k_minus=k_minus,
                delta=delta,
                confidence=audit.confidence,
            )
        claimed = sites[name].get("run_epsilon")
        dp = bool(sites[name].get("noise_multiplier"))
        result = SiteAudit(
            site=name,
            loss_attack=loss_curve,
            lira=lira_curve,
            canaries=one_run,
            claimed_epsilon=float(claimed) if dp and claimed is not None else math.inf,
            delta=delta,
        )
        if result.violation:
            logger.error("%s: %s", name, result.verdict())
        results.append(result)
        curves[name] = {
            "loss": loss_curve,
            **({"lira": lira_curve} if lira_curve else {}),
        }
    pooled = _pooled(target, references, names)
    curves["all sites"] = pooled
    return {
        "run_dir": str(run_dir),
        "pooled": {k: c.to_dict() for k, c in pooled.items()},
        "summary": summary,
        "audit_config": {
            k: (v.value if hasattr(v, "value") else v)
            for k, v in dataclasses.asdict(audit).items()
        },
        "sites": [r.to_dict() for r in results],
        "violations": [r.site for r in results if r.violation],
        "curves": curves,
    }


def _pooled(
    target: dict[str, tuple[RecordScores, RecordScores]],
    references: list[dict[str, tuple[RecordScores, RecordScores]]],
    names: list[str],
) -> dict[str, RocCurve]:
    """Both attacks over every site's members and non-members together."""
    ins = np.concatenate([target[n][0].loss for n in names])
    outs = np.concatenate([target[n][1].loss for n in names])
    curves = {"loss": roc(loss_threshold_scores(ins), loss_threshold_scores(outs))}
    if references:
        order = [(n, side) for side in (0, 1) for n in names]
        phi = np.concatenate([target[n][side].phi for n, side in order])
        ref_phi = np.stack(
            [np.concatenate([r[n][side].phi for n, side in order]) for r in references]
        )
        lira = lira_offline_scores(phi, ref_phi)
        curves["lira"] = roc(lira[: ins.size], lira[ins.size :])
    return curves


def _scrubber(cfg: ClientConfig, state_dir: Path) -> Scrubber:
    from fedshield.privacy.pii import load_site_key

    if cfg.pii.mode is PIIMode.PSEUDONYM:
        return Scrubber(cfg.pii, key=load_site_key(state_dir))
    return Scrubber(cfg.pii)


def _scrubbed(data: LabeledTexts, cfg: ClientConfig) -> LabeledTexts:
    """Population text scrubbed as a site would (a throwaway pseudonym key: the
    reference models need the same kind of text, not the same surrogates)."""
    if cfg.pii.mode is PIIMode.OFF:
        return data
    key = secrets.token_bytes(32) if cfg.pii.mode is PIIMode.PSEUDONYM else b""
    texts = tuple(Scrubber(cfg.pii, key=key).scrub_many(data.texts))
    return LabeledTexts(texts=texts, labels=data.labels)
