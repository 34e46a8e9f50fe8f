"""Adversarial-training defenses: embedding-space attacks (FGM/FGSM, PGD, FreeLB)
and the per-record adversarial objective DP-SGD clips (:mod:`.attacks` argues
why the privacy accounting is unchanged), plus character-level text attacks for
robustness evaluation (:mod:`.text_attacks`)."""

from .attacks import (
    LossOf,
    attack_deltas,
    ball_radius,
    fgm_in_parts,
    frozen,
    objective,
    project,
    random_start,
)
from .config import AdversarialConfig, AdversarialMethod, BallNorm

__all__ = [
    "AdversarialConfig",
    "AdversarialMethod",
    "BallNorm",
    "LossOf",
    "attack_deltas",
    "ball_radius",
    "fgm_in_parts",
    "frozen",
    "objective",
    "project",
    "random_start",
]
