"""Scoring: each record's confidence under a model, the reference models LiRA
compares against, and the attacks and canary tests run on those scores.

- Confidence threshold: score = phi = logit_y - logsumexp(other logits) under the
  final model. For two classes it orders records as the loss does (Yeom et al.
  2018's loss attack) but keeps full resolution where the float32 loss saturates
  to exactly 0 (logit margins above ~17) and ties. A causal LM's score is minus
  the record's mean next-token loss (the loss attack itself: a mean over tokens
  does not saturate).
- Offline LiRA (Carlini et al. 2022): phi under the final model against phi under
  reference models trained the way the run trained (same model, LoRA/full, DP
  settings and noise multiplier, rounds x local epochs) on population records no
  site holds.
- Both ROC curves compare members with non-members reweighted to the members'
  label mix (:func:`fedshield.privacy.audit.roc`).
- One-run canary tests (:func:`canary_test`): a site's (or all sites' pooled)
  canary scores, guesses on the extremes fixed in advance, an empirical epsilon
  lower bound and its ceiling, against the claimed epsilon.

The statistics themselves (ROC, LiRA's Gaussian fit, the one-run bound) are the
pure functions of :mod:`fedshield.privacy.audit`; this module feeds them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from fedshield.client.config import ClientConfig
from fedshield.client.trainer import train_site
from fedshield.common.device import pick_device
from fedshield.models import LoadedModel, TaskKind, load_model, tasks
from fedshield.models.lm import causal_lm_per_sample_loss, token_nll
from fedshield.models.texts import LabeledTexts, batch_inputs
from fedshield.privacy.audit import (
    PRIMARY_ANALYSIS,
    PRIMARY_BOUND,
    SECRET_FORMAT,
    AuditConfig,
    CanaryTest,
    ExposureAudit,
    ExposureMethod,
    PlantedSecrets,
    RocCurve,
    SiteAudit,
    audit_guesses,
    lira_offline_scores,
    logit_confidence,
    measure_exposure,
    roc,
)

from .records import SiteRecords
from .run import site_index

__all__ = [
    "RecordScores",
    "SiteScores",
    "attack_site",
    "canary_scores",
    "canary_test",
    "pooled_curves",
    "score_records",
    "score_site",
    "secret_exposure",
    "train_reference",
]

#: Candidates sampled from the 10**9 secrets to rank each secret against: the
#: estimate resolves exposure up to about log2(2000) = 11 bits (a secret below
#: every sample is flagged a lower bound), at ~30 s of SmolLM2-135M on 2 CPU cores.
EXPOSURE_SAMPLES = 2000


@dataclass(frozen=True)
class RecordScores:
    """Per-record confidence phi under one model, and the records' labels (for
    label-stratified ROC curves)."""

    phi: np.ndarray  # (n,)
    labels: np.ndarray  # (n,)


@dataclass(frozen=True, kw_only=True)
class SiteScores:
    """A site's members and non-members scored under one model."""

    members: RecordScores
    non_members: RecordScores


PerRecord = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # -> (b,)


@torch.no_grad()
def _per_record(
    loaded: LoadedModel,
    data: LabeledTexts,
    score: PerRecord,
    *,
    max_length: int,
    batch_size: int = 128,
    device: torch.device | None = None,
) -> np.ndarray:
    """``score(logits, labels)`` of every record of ``data`` under ``loaded``,
    the records encoded for its task at ``max_length``."""
    device = device or pick_device()
    cfg = dataclasses.replace(loaded.config, max_length=max_length)
    dataset = tasks.encode(data, loaded.tokenizer, cfg)
    model = loaded.model.to(device).eval()
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate):
        inputs, labels = batch_inputs(batch, device)
        logits = model(**inputs).logits.float()  # (b, num_labels) or (b, t, vocab)
        out.append(score(logits, labels).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def _minus_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -causal_lm_per_sample_loss(logits, labels)


def score_records(
    loaded: LoadedModel,
    data: LabeledTexts,
    *,
    max_length: int,
    batch_size: int = 128,
    device: torch.device | None = None,
) -> RecordScores:
    """Each record's score under ``loaded``: phi = log p_y - log(1 - p_y) for a
    classifier; for a causal LM minus the record's loss (its mean next-token
    cross-entropy, Yeom et al.'s loss attack: higher = more likely trained on)."""
    causal = loaded.config.task is TaskKind.CAUSAL_LM
    phi = _per_record(
        loaded,
        data,
        _minus_loss if causal else logit_confidence,
        max_length=max_length,
        batch_size=batch_size,
        device=device,
    )
    return RecordScores(phi=phi, labels=np.asarray(data.labels, dtype=np.int64))


def score_site(
    loaded: LoadedModel, records: SiteRecords, *, max_length: int
) -> SiteScores:
    """A site's members and non-members scored under ``loaded``."""
    return SiteScores(
        members=score_records(loaded, records.members, max_length=max_length),
        non_members=score_records(loaded, records.non_members, max_length=max_length),
    )


def _total_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return token_nll(logits, labels)[0].sum(dim=1)


def record_nll(
    loaded: LoadedModel, texts: Sequence[str], *, max_length: int
) -> np.ndarray:
    """Each text's *total* next-token negative log-likelihood (end token
    included, as training saw it) under a causal LM. For texts sharing a prefix,
    the prefix's tokens add the same amount to every text, so the total ranks
    texts as the likelihood of what follows the prefix does."""
    data = LabeledTexts(texts=tuple(texts), labels=(0,) * len(texts))
    return _per_record(loaded, data, _total_nll, max_length=max_length)


def secret_exposure(
    final: LoadedModel,
    records: Mapping[str, SiteRecords],
    names: Sequence[str],
    *,
    max_length: int,
) -> dict[str, ExposureAudit]:
    """Per site with ``secret`` canaries, their Secret-Sharer exposure under the
    final model: the included secrets as planted, the excluded ones as the
    held-out baseline (same format, never trained on), ranked against the same
    :data:`EXPOSURE_SAMPLES` sampled candidates."""
    out = {}
    for name in names:
        planted = records[name].canaries
        if planted is None or not planted.values:
            continue
        pairs = list(zip(planted.values, planted.included, strict=True))
        once = tuple(v for v, inc in pairs if inc)
        secrets = PlantedSecrets(
            format=SECRET_FORMAT,
            values=once + planted.repeated,
            repeats=(1,) * len(once) + (planted.repeats,) * len(planted.repeated),
            held_out=tuple(v for v, inc in pairs if not inc),
        )
        out[name] = measure_exposure(
            secrets,
            lambda texts: record_nll(final, texts, max_length=max_length),
            method=ExposureMethod.SAMPLED,
            samples=EXPOSURE_SAMPLES,
            seed=site_index(name),
        )
    return out


def train_reference(
    cfg: ClientConfig,
    population: LabeledTexts,
    *,
    examples: int,
    noise_multiplier: float,
    seed: int,
) -> LoadedModel:
    """A reference model trained like the run: same starting model, rounds x
    local epochs over ``examples`` population records, the run's DP and
    adversarial-training settings."""
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
        dataset=tasks.encode(data, loaded.tokenizer, cfg.model),
        train_cfg=train_cfg,
        dp_cfg=cfg.dp,
        mode=cfg.grad_sample_mode,
        noise_multiplier=noise_multiplier,
        seed=seed,
        per_sample_loss=tasks.per_sample_loss(cfg.model),
        adversarial=cfg.adversarial,  # a robust run's references train robustly too
    )
    return loaded


def _lira_curve(target: SiteScores, references: Sequence[SiteScores]) -> RocCurve:
    """Offline LiRA on ``target``'s members and non-members, each reference model
    having scored the same records in the same order."""
    ins, outs = target.members, target.non_members
    phi = np.concatenate([ins.phi, outs.phi])  # (n_in + n_out,)
    ref_phi = np.stack(  # (K, n_in + n_out)
        [np.concatenate([r.members.phi, r.non_members.phi]) for r in references]
    )
    lira = lira_offline_scores(phi, ref_phi)
    return _roc(lira[: ins.phi.size], lira[ins.phi.size :], target)


def _roc(members: np.ndarray, non_members: np.ndarray, scores: SiteScores) -> RocCurve:
    """ROC with the non-members stratified to the members' label mix."""
    return roc(
        members,
        non_members,
        member_labels=scores.members.labels.tolist(),
        non_member_labels=scores.non_members.labels.tolist(),
    )


def canary_scores(
    final: RecordScores, references: Sequence[RecordScores] = ()
) -> np.ndarray:
    """Data canaries' scores: their confidence phi under the final model (full
    resolution where the float32 loss saturates to 0), calibrated per canary by
    offline LiRA against reference models that never saw them, when there are
    any."""
    if not references:
        return final.phi
    return lira_offline_scores(final.phi, np.stack([r.phi for r in references]))


def canary_test(
    *,
    scope: str,
    scores: np.ndarray,
    included: Sequence[bool],
    audit: AuditConfig,
    claimed_epsilon: float,
    delta: float,
    confidence: float,
) -> CanaryTest:
    """The one-run test of ``scope``'s canaries: ``audit.guesses_for(m)`` guesses,
    fixed before scoring ("in" on the highest scores, "out" on the lowest), bound
    at ``confidence`` by the primary analysis, against the claim."""
    k_plus, k_minus = audit.guesses_for(len(scores))
    one_run = audit_guesses(
        scores,
        included,
        k_plus=k_plus,
        k_minus=k_minus,
        delta=delta,
        confidence=confidence,
        bound=PRIMARY_BOUND,
        analysis=PRIMARY_ANALYSIS,
    )
    return CanaryTest(
        scope=scope, canaries=one_run, claimed_epsilon=claimed_epsilon, delta=delta
    )


def attack_site(
    *,
    site: str,
    target: SiteScores,
    references: Sequence[SiteScores],
    test: CanaryTest,
) -> SiteAudit:
    """Both attacks on one site's scores under the final model (LiRA only with
    reference models), beside its canary test."""
    ins, outs = target.members, target.non_members
    return SiteAudit(
        site=site,
        phi_attack=_roc(ins.phi, outs.phi, target),
        lira=_lira_curve(target, references) if references else None,
        test=test,
    )


def pooled_curves(
    target: Mapping[str, SiteScores],
    references: Sequence[Mapping[str, SiteScores]],
    names: Sequence[str],
) -> dict[str, RocCurve]:
    """Both attacks over every site's members and non-members together."""
    pooled = _pool(target, names)
    ins, outs = pooled.members, pooled.non_members
    curves = {"phi": _roc(ins.phi, outs.phi, pooled)}
    if references:
        curves["lira"] = _lira_curve(pooled, [_pool(r, names) for r in references])
    return curves


def _pool(scores: Mapping[str, SiteScores], names: Sequence[str]) -> SiteScores:
    """The sites' members, in ``names`` order, and their non-members likewise."""

    def cat(side: Sequence[RecordScores]) -> RecordScores:
        return RecordScores(
            phi=np.concatenate([s.phi for s in side]),
            labels=np.concatenate([s.labels for s in side]),
        )

    return SiteScores(
        members=cat([scores[n].members for n in names]),
        non_members=cat([scores[n].non_members for n in names]),
    )
