"""Membership-inference scores from a model's outputs on candidate records.

- **Confidence threshold**: the score is phi (below); for two classes it orders
  records as the loss attack of Yeom et al. ("Privacy Risk in Machine Learning",
  CSF 2018) does, at full resolution where the float32 loss saturates to 0.
- **LiRA, offline** (Carlini et al., "Membership Inference Attacks From First
  Principles", S&P 2022, Sec. VI-C): for a record (x, y), the target model's
  confidence is mapped to the logit scale, phi = log p_y - log(1 - p_y), where it is
  close to Gaussian. K reference models trained on population data that excludes
  the candidate records give phi's distribution when (x, y) is OUT; the score is
  the one-sided likelihood that the target's phi is that high when OUT,
  ``Phi((phi - mu_out) / sigma_out)`` (higher = more likely a member). With few
  reference models the per-record variance is unreliable, so, as the paper
  recommends for small K, sigma_out is the pooled standard deviation over all
  records (``global_variance=True``); with K = 1 it is the spread of the one
  reference model's phi across records.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.stats import norm

__all__ = ["lira_offline_scores", "logit_confidence"]


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """phi = log p_y - log(1 - p_y) per record, computed stably from the logits
    (b, num_labels) as logit_y - logsumexp(other logits)."""
    correct = logits.gather(1, labels[:, None]).squeeze(1)  # (b,)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return correct - torch.logsumexp(others, dim=1)


def lira_offline_scores(
    target_phi: ArrayLike, reference_phi: ArrayLike, *, global_variance: bool = True
) -> np.ndarray:
    """Offline LiRA scores: ``target_phi`` (n,) of the audited model, and
    ``reference_phi`` (K, n) of K reference models none of which trained on the n
    records."""
    target = np.asarray(target_phi, dtype=np.float64)
    refs = np.asarray(reference_phi, dtype=np.float64)
    if refs.ndim != 2 or refs.shape[1] != target.shape[0] or refs.shape[0] < 1:
        raise ValueError(
            f"Reference confidences must be (K, {target.shape[0]}) with K >= 1; found "
            f"{refs.shape}."
        )
    mu = refs.mean(axis=0)
    if refs.shape[0] == 1:  # one reference: the spread of OUT phi across records
        sigma = np.full_like(mu, refs[0].std())
    elif global_variance:  # pooled over records
        sigma = np.full_like(mu, np.sqrt(refs.var(axis=0, ddof=1).mean()))
    else:
        sigma = refs.std(axis=0, ddof=1)
    sigma = np.maximum(sigma, 1e-6)
    return np.asarray(norm.cdf((target - mu) / sigma))
