"""ROC curves of a membership-inference attack and the numbers auditors quote.

A score is the attack's belief that a record was a training member (higher =
more likely a member). For a threshold t, TPR(t) = P[score >= t | member] and
FPR(t) = P[score >= t | non-member]. Following Carlini et al. ("Membership
Inference Attacks From First Principles", 2022) we report, besides the AUC, the
TPR at low FPR (0.1 %, 1 %): an attack that identifies a few members with
confidence is a privacy failure even when its AUC is near 0.5. TPR at FPR f is the
highest TPR of any threshold whose FPR does not exceed f, so with n non-members a
target below 1/n can only be met at FPR 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["REPORTED_FPRS", "RocCurve", "roc"]

REPORTED_FPRS = (0.001, 0.01)


@dataclass(frozen=True)
class RocCurve:
    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    auc: float
    members: int
    non_members: int

    def tpr_at(self, fpr: float) -> float:
        """The highest TPR whose FPR is at most ``fpr``."""
        return max(t for f, t in zip(self.fpr, self.tpr, strict=True) if f <= fpr)

    def to_dict(self) -> dict[str, object]:
        return {
            "auc": self.auc,
            **{f"tpr_at_{f:g}_fpr": self.tpr_at(f) for f in REPORTED_FPRS},
            "members": self.members,
            "non_members": self.non_members,
        }


def roc(member_scores: ArrayLike, non_member_scores: ArrayLike) -> RocCurve:
    """The ROC curve of scores on known members and non-members."""
    members = np.asarray(member_scores, dtype=np.float64)
    others = np.asarray(non_member_scores, dtype=np.float64)
    if members.size == 0 or others.size == 0:
        raise ValueError(
            f"An ROC curve needs members and non-members; found {members.size} and "
            f"{others.size}."
        )
    scores = np.concatenate([members, others])
    if not np.all(np.isfinite(scores)):
        raise ValueError("Attack scores must be finite; found NaN or inf.")
    truth = np.concatenate([np.ones(members.size), np.zeros(others.size)])
    fpr, tpr, _ = roc_curve(truth, scores)
    return RocCurve(
        fpr=tuple(float(x) for x in fpr),
        tpr=tuple(float(x) for x in tpr),
        auc=float(roc_auc_score(truth, scores)),
        members=int(members.size),
        non_members=int(others.size),
    )
