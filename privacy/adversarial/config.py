"""The adversarial-training settings of a run (``adversarial.*``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from fedshield.common.run_config import check_fields, default, read_fields

__all__ = ["AdversarialConfig", "AdversarialMethod", "BallNorm"]


class AdversarialMethod(StrEnum):
    OFF = "off"
    FGM = "fgm"  # Miyato et al. 2017 (FGSM of Goodfellow et al. 2015 under linf)
    PGD = "pgd"  # Madry et al. 2018
    FREELB = "freelb"  # Zhu et al. 2020


class BallNorm(StrEnum):
    L2 = "l2"
    LINF = "linf"


@dataclass(frozen=True)
class AdversarialConfig:
    """How each record's adversarial input is found and weighted.

    Attributes:
        method: the attack the objective trains against (``off``: clean loss only).
        epsilon: the ball's radius: ``l2``, ``||delta_i||_2 <= epsilon *
            sqrt(tokens_i)`` over record i's real tokens (epsilon is the
            root-mean-square move per token, so long and short records get the
            same per-token budget); ``linf``, ``|delta| <= epsilon`` per coordinate.
        steps: ascent steps K of ``pgd`` and ``freelb``.
        alpha: each step's size in epsilon's units; 0 = ``2.5 * epsilon / K``.
        norm: the ball (and the step: normalized gradient for l2, sign for linf).
        mix: weight of the adversarial loss, ``1 - mix`` on the clean loss.
    """

    method: AdversarialMethod = AdversarialMethod(default("adversarial.method"))
    epsilon: float = default("adversarial.epsilon")
    steps: int = default("adversarial.steps")
    alpha: float = default("adversarial.alpha")
    norm: BallNorm = BallNorm(default("adversarial.norm"))
    mix: float = default("adversarial.mix")

    KEYS: ClassVar[dict[str, str]] = {
        "method": "adversarial.method",
        "epsilon": "adversarial.epsilon",
        "steps": "adversarial.steps",
        "alpha": "adversarial.alpha",
        "norm": "adversarial.norm",
        "mix": "adversarial.mix",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)

    @property
    def enabled(self) -> bool:
        return self.method is not AdversarialMethod.OFF

    @property
    def step_size(self) -> float:
        """Each ascent step's size: ``alpha``, or ``2.5 * epsilon / K``."""
        if self.method is AdversarialMethod.FGM:
            return self.epsilon
        return self.alpha or 2.5 * self.epsilon / self.steps

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> AdversarialConfig:
        return cls(
            **read_fields(
                run_config,
                cls.KEYS,
                convert={"method": AdversarialMethod, "norm": BallNorm},
            )
        )
