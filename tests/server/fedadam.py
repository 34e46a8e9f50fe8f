"""FedAdam's server update written out, independently of Flower's code, for the
tests that check the strategy's step on the round's mean update."""

from __future__ import annotations

import math

import numpy as np


def fedadam_reference(
    theta: np.ndarray,
    means: list[np.ndarray],
    *,
    eta: float = 0.1,
    beta_1: float = 0.9,
    beta_2: float = 0.99,
    tau: float = 1e-3,
) -> np.ndarray:
    """``theta`` after one FedAdam step per round's mean update (Reddi et al. 2021,
    Algorithm 2) as Flower 1.41 takes it: the pseudo-gradient is the mean update,
    moments start at 0, and the bias correction of round t uses the exponent t + 1."""
    m = v = np.zeros_like(theta)
    for t, delta in enumerate(means, start=1):
        m = beta_1 * m + (1 - beta_1) * delta
        v = beta_2 * v + (1 - beta_2) * delta**2
        eta_t = eta * math.sqrt(1 - beta_2 ** (t + 1)) / (1 - beta_1 ** (t + 1))
        theta = theta + eta_t * m / (np.sqrt(v) + tau)
    return theta
