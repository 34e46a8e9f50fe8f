"""ROC curves of a membership-inference attack and the numbers auditors quote.

A score is the attack's belief that a record was a training member (higher =
more likely a member). For a threshold t, TPR(t) = P[score >= t | member] and
FPR(t) = P[score >= t | non-member]. Following Carlini et al. ("Membership
Inference Attacks From First Principles", S&P 2022) we report, besides the AUC, the
TPR at low FPR: an attack that identifies a few members with confidence is a
privacy failure even when its AUC is near 0.5.

Done so that no number says more than the data can:

- Every threshold is kept (``roc_curve(..., drop_intermediate=False)``): dropping
  "suboptimal" points on tied runs under-reports TPR at a fixed FPR.
- With n non-members the smallest FPR above 0 is 1/n. A target FPR f is reported
  at the FPR actually reachable, ``floor(f n) / n``, and labelled by it
  (:meth:`RocCurve.low_fpr`): with 200 non-members "TPR at 0.1 % FPR" is TPR at
  FPR 0, and says so.
- Each TPR at a fixed FPR comes with a Clopper-Pearson interval (exact binomial,
  over the members at the chosen threshold; the threshold itself is fixed by the
  non-members, so the interval does not cover the threshold's own noise).
- Non-members can be stratified by label (``member_labels``/``non_member_labels``):
  each non-member is weighted by ``P_members(label) / P_non_members(label)``, so a
  site whose training share is label-skewed is not compared with held-out records
  of another label mix (an attack would otherwise score the label, not
  membership). FPRs are then weighted fractions: the reachable ones are the
  weighted cumulative sums, not multiples of 1/n, and a few heavy non-members can
  set a threshold, so ``effective_non_members`` = (sum w)^2 / sum w^2 is
  reported beside n. Members whose label no non-member has cannot be matched:
  they are left out of the curve and counted (``unmatched_members``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import beta
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["REPORTED_FPRS", "LowFpr", "RocCurve", "clopper_pearson", "roc"]

REPORTED_FPRS = (0.001, 0.01)
CI_LEVEL = 0.95


def clopper_pearson(k: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided ``level`` interval of a binomial
    proportion with ``k`` successes in ``n`` trials."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"Need 0 <= k <= n and n >= 1; found k={k}, n={n}.")
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return low, high


@dataclass(frozen=True)
class LowFpr:
    """TPR at a target FPR, at the FPR the non-members can resolve."""

    target: float  # the FPR asked for
    fpr: float  # the largest reachable FPR <= target (0 when 1/n > target)
    tpr: float
    ci: tuple[float, float]  # Clopper-Pearson over the members

    @property
    def label(self) -> str:
        if self.fpr == self.target:
            return f"TPR at {self.target:.1%} FPR"
        return f"TPR at {self.fpr:.2%} FPR (asked {self.target:.1%}: not reachable)"

    def to_dict(self) -> dict[str, object]:
        return {
            "target_fpr": self.target,
            "fpr": self.fpr,
            "tpr": self.tpr,
            "tpr_ci": list(self.ci),
        }


@dataclass(frozen=True)
class RocCurve:
    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    auc: float
    members: int
    non_members: int
    min_fpr: float  # the smallest FPR above 0 the non-members can show (1/n)
    effective_non_members: float = 0.0  # (sum w)^2 / sum w^2; n when unweighted
    unmatched_members: int = 0  # left out: no non-member has their label

    def tpr_at(self, fpr: float) -> float:
        """The highest TPR whose FPR is at most ``fpr``."""
        return max(t for f, t in zip(self.fpr, self.tpr, strict=True) if f <= fpr)

    def low_fpr(self, target: float) -> LowFpr:
        """TPR at ``target`` FPR, reported at the largest reachable FPR below it,
        with a Clopper-Pearson interval."""
        reachable = max(f for f in self.fpr if f <= target + 1e-12)
        tpr = self.tpr_at(reachable)
        hits = round(tpr * self.members)
        return LowFpr(
            target=target,
            fpr=reachable,
            tpr=tpr,
            ci=clopper_pearson(hits, self.members),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "auc": self.auc,
            **{f"tpr_at_{f:g}_fpr": self.tpr_at(f) for f in REPORTED_FPRS},
            "low_fpr": [self.low_fpr(f).to_dict() for f in REPORTED_FPRS],
            "members": self.members,
            "non_members": self.non_members,
            "effective_non_members": self.effective_non_members,
            "unmatched_members": self.unmatched_members,
            "min_fpr": self.min_fpr,
        }


def _label_weights(
    member_labels: Sequence[int], non_member_labels: Sequence[int]
) -> np.ndarray:
    """Per non-member weight P_members(label) / P_non_members(label), normalised
    to mean 1; a label no member has gets weight 0."""
    ins = np.asarray(member_labels)
    outs = np.asarray(non_member_labels)
    weights = np.zeros(outs.size)
    for label in np.unique(outs):
        here = outs == label
        weights[here] = np.mean(ins == label) / np.mean(here)
    if not weights.any():
        raise ValueError(
            "No non-member shares a label with the members: they cannot be "
            "stratified by label."
        )
    return weights * (weights.size / weights.sum())


def roc(
    member_scores: ArrayLike,
    non_member_scores: ArrayLike,
    *,
    member_labels: Sequence[int] | None = None,
    non_member_labels: Sequence[int] | None = None,
) -> RocCurve:
    """The ROC curve of scores on known members and non-members; with labels,
    the non-members are reweighted to the members' label mix."""
    members = np.asarray(member_scores, dtype=np.float64)
    others = np.asarray(non_member_scores, dtype=np.float64)
    if members.size == 0 or others.size == 0:
        raise ValueError(
            f"An ROC curve needs members and non-members; found {members.size} and "
            f"{others.size}."
        )
    if not np.all(np.isfinite(np.concatenate([members, others]))):
        raise ValueError("Attack scores must be finite; found NaN or inf.")
    weights = np.ones(others.size)
    unmatched = 0
    if (member_labels is None) != (non_member_labels is None):
        raise ValueError("Give labels for both members and non-members, or neither.")
    if member_labels is not None and non_member_labels is not None:
        if len(member_labels) != members.size or len(non_member_labels) != others.size:
            raise ValueError(
                f"Labels must match the scores: {members.size} and {others.size} "
                f"scores, {len(member_labels)} and {len(non_member_labels)} labels."
            )
        matched = np.isin(np.asarray(member_labels), np.asarray(non_member_labels))
        unmatched = int((~matched).sum())
        if not matched.any():
            raise ValueError(
                "No non-member shares a label with the members: they cannot be "
                "stratified by label."
            )
        member_labels = np.asarray(member_labels)[matched].tolist()
        members = members[matched]
        weights = _label_weights(member_labels, non_member_labels)
    scores = np.concatenate([members, others])
    truth = np.concatenate([np.ones(members.size), np.zeros(others.size)])
    sample_weight = np.concatenate([np.ones(members.size), weights])
    fpr, tpr, _ = roc_curve(
        truth, scores, sample_weight=sample_weight, drop_intermediate=False
    )
    positive = weights[weights > 0]
    return RocCurve(
        fpr=tuple(float(x) for x in fpr),
        tpr=tuple(float(x) for x in tpr),
        auc=float(roc_auc_score(truth, scores, sample_weight=sample_weight)),
        members=int(members.size),
        non_members=int(others.size),
        min_fpr=float(positive.min() / weights.sum()),
        effective_non_members=float(weights.sum() ** 2 / (weights**2).sum()),
        unmatched_members=unmatched,
    )
