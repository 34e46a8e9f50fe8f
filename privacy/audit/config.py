"""The ``audit.*`` run-config keys: canaries planted during the run and the attacks
``fedshield audit`` runs on it afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedshield.models.config import ConfigError, parse_enum, require

from .canaries import CanaryKind

__all__ = ["AuditConfig"]


@dataclass(frozen=True)
class AuditConfig:
    """canaries: per site, 0 = no canary audit; guess_fraction: share of the
    canaries the auditor guesses on (half "in", half "out", fixed in advance);
    lira_references: K reference models for offline LiRA (0 = loss attack only);
    reference_examples: population records each reference model trains on;
    confidence: of the empirical epsilon lower bound."""

    canaries: int = 0
    canary_kind: CanaryKind = CanaryKind.MISLABELLED
    guess_fraction: float = 0.2
    lira_references: int = 2
    reference_examples: int = 1000
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.canaries < 0:
            raise ConfigError(
                f"`audit.canaries` (per site, 0 = off) must be >= 0. Found "
                f"{self.canaries}."
            )
        if not 0 < self.guess_fraction <= 1:
            raise ConfigError(
                "`audit.guess-fraction` must be in (0, 1]. Found "
                f"{self.guess_fraction}."
            )
        if self.lira_references < 0:
            raise ConfigError(
                "`audit.lira-references` (reference models, 0 = no LiRA) must be >= 0. "
                f"Found {self.lira_references}."
            )
        if self.reference_examples < 1:
            raise ConfigError(
                "`audit.reference-examples` must be >= 1. Found "
                f"{self.reference_examples}."
            )
        if not 0 < self.confidence < 1:
            raise ConfigError(
                f"`audit.confidence` must be in (0, 1). Found {self.confidence}."
            )

    @property
    def guesses(self) -> tuple[int, int]:
        """(k_plus, k_minus): guesses "in" on the highest scores, "out" on the
        lowest."""
        r = max(2, round(self.guess_fraction * self.canaries))
        r = min(r, self.canaries)
        return (r + 1) // 2, r // 2

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> AuditConfig:
        return cls(
            canaries=require(run_config, "audit.canaries", int),
            canary_kind=parse_enum(
                CanaryKind,
                "audit.canary-kind",
                require(run_config, "audit.canary-kind", str),
            ),
            guess_fraction=require(run_config, "audit.guess-fraction", float),
            lira_references=require(run_config, "audit.lira-references", int),
            reference_examples=require(run_config, "audit.reference-examples", int),
            confidence=require(run_config, "audit.confidence", float),
        )
