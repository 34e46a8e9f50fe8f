"""The ``audit.*`` run-config keys: canaries planted during the run and the attacks
``fedshield audit`` runs on it afterwards."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fedshield.common.config import ConfigError
from fedshield.common.run_config import check_fields, default, read_fields

from .canaries import CanaryKind

__all__ = ["AuditConfig"]


@dataclass(frozen=True)
class AuditConfig:
    """canaries: per site, 0 = no canary audit; guess_fraction: share of the
    canaries the auditor guesses on (half "in", half "out", fixed in advance);
    lira_references: K reference models for offline LiRA (0 = the confidence
    attack only);
    reference_examples: population records each reference model trains on;
    confidence: of the empirical epsilon lower bound;
    repeated_secrets, secret_repeats: ``secret`` canaries only, per site, secrets
    always trained on, ``secret_repeats`` copies each (exposure only)."""

    canaries: int = default("audit.canaries")
    canary_kind: CanaryKind = CanaryKind(default("audit.canary-kind"))
    guess_fraction: float = default("audit.guess-fraction")
    lira_references: int = default("audit.lira-references")
    reference_examples: int = default("audit.reference-examples")
    confidence: float = default("audit.confidence")
    repeated_secrets: int = default("audit.repeated-secrets")
    secret_repeats: int = default("audit.secret-repeats")

    KEYS: ClassVar[dict[str, str]] = {
        "canaries": "audit.canaries",
        "canary_kind": "audit.canary-kind",
        "guess_fraction": "audit.guess-fraction",
        "lira_references": "audit.lira-references",
        "reference_examples": "audit.reference-examples",
        "confidence": "audit.confidence",
        "repeated_secrets": "audit.repeated-secrets",
        "secret_repeats": "audit.secret-repeats",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)

    def check_task(self, causal_lm: bool) -> None:
        """Refuse a canary kind the task cannot score: labels mean nothing to a
        causal LM; a classifier has no loss on a secret's digits."""
        if self.repeated_secrets and (
            self.canaries == 0 or self.canary_kind is not CanaryKind.SECRET
        ):
            raise ConfigError(
                f"`audit.repeated-secrets` = {self.repeated_secrets} plants repeated "
                "Secret-Sharer records beside the `secret` canaries; found "
                f"audit.canary-kind = {self.canary_kind.value!r} with "
                f"audit.canaries = {self.canaries}. Set audit.canary-kind='secret' "
                "and audit.canaries > 0, or audit.repeated-secrets=0."
            )
        if self.canaries == 0:
            return
        kind = self.canary_kind
        if causal_lm and kind is CanaryKind.MISLABELLED:
            raise ConfigError(
                '`audit.canary-kind` = "mislabelled" needs labels, which a causal LM '
                'does not train on. Use "secret", "crafted" or "gradient".'
            )
        if not causal_lm and kind is CanaryKind.SECRET:
            raise ConfigError(
                '`audit.canary-kind` = "secret" plants Secret-Sharer records for a '
                'causal LM (model.task="causal-lm"). For a classifier use '
                '"mislabelled", "crafted" or "gradient".'
            )

    @property
    def guesses(self) -> tuple[int, int]:
        """(k_plus, k_minus) for one site's canaries."""
        return self.guesses_for(self.canaries)

    def guesses_for(self, canaries: int) -> tuple[int, int]:
        """(k_plus, k_minus) for ``canaries`` canaries (one site's, or every
        site's pooled): guesses "in" on the highest scores, "out" on the lowest,
        ``guess_fraction`` of them in all (at least 2)."""
        r = min(max(2, round(self.guess_fraction * canaries)), canaries)
        return (r + 1) // 2, r // 2

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> AuditConfig:
        return cls(
            **read_fields(run_config, cls.KEYS, convert={"canary_kind": CanaryKind})
        )
