"""A site's privacy policy: what it requires of every run, set in its node config by
its operator and never by the coordinator.

The run config comes from the coordinator, the party a site's data is protected
from. So every privacy switch a run config holds is checked here against the site's
own floor before anything is read, scrubbed or trained: a run may *tighten* the
policy (scrub more entity types, a lower score threshold, a stricter mode), never
loosen it. A run that asks for less is refused with the site's reason, which the
server reports; the site sends no update.

Node-config keys (``flower-supernode --node-config "require-secagg=true ..."``):

    require-secagg        ``true`` (default): every training round must run secure
                          aggregation; a plain train message or a run with
                          ``secagg.enabled=false`` is refused.
    secagg-min-sites      fewest sites a secure round may have, at setup and among
                          the survivors whose shares unmask the sum (default 2).
    secagg-min-threshold  smallest Shamir threshold t the site accepts (default 2);
                          t > half of the site's share holders is required always.
    secagg-max-colluders  how many other sites may be colluding with the
                          coordinator (default 1). The sum of m survivors minus the
                          colluders' inputs is the sum of the other honest ones, so
                          the site joins only sums of at least colluders + 2 sites
                          (at least two honest inputs), and under distributed DP
                          calibrates its noise share for the honest survivors only
                          (a colluder adds none). 0 allows 2-site federations.
    pii-mode              the scrubbing floor (default ``tag``): a run may choose
                          another replacing mode (tag, mask, pseudonym), never ``off``
                          unless the site says ``off``.
    pii-entities          entity types that must be scrubbed (default: the run
                          key's default list); a run may add types, never drop one.
    pii-score-threshold   the highest Presidio score threshold accepted (default
                          0.5); a run may lower it, never raise it.
    pii-spacy-model       the NER model the site scrubs with (default the run key's
                          default); a run naming another model is refused.
    pii-patterns          a TOML file of the site's own patterns (employee, ticket,
                          case numbers: :mod:`fedshield.privacy.pii.site_patterns`),
                          scrubbed in every run whatever its pii.entities; their
                          counts stay at the site.
    allow-evaluate        ``false`` (default): the site answers no ``evaluate``
                          message. Accuracy and loss on the site's held-out records
                          leave without DP noise, for whatever model the
                          coordinator sends: a crafted model turns them into
                          answers about single records.
    release-metrics       which optional metrics may leave the site in the clear,
                          comma-separated (default ``delta,max-epsilon``: its
                          budget's settings, which say nothing about its data).
                          The others are withheld unless listed: ``epsilon`` and
                          ``run-epsilon`` (they depend on the number of records,
                          through the sampling rate and the step count),
                          ``num-examples``, ``train-loss``, ``steps``,
                          ``noise-multiplier``, ``sample-rate``, ``pii`` (counts
                          per entity type) and ``saturated`` (secure
                          aggregation's clipped values). ``all`` releases every
                          one. The site's ledger keeps every epsilon for its
                          auditors either way.

A simulated site (Flower's simulation engine) has no operator: the person running the
simulation is both coordinator and every site, so its policy accepts the run config
(:meth:`SitePolicy.accepting`), and ``simulation.site-release-metrics`` names what
it releases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedshield.common.config import ConfigError
from fedshield.common.schema import PII_METRIC_PREFIX, Metric
from fedshield.privacy.pii import PIIMode
from fedshield.privacy.pii.config import DEFAULT_ENTITIES, DEFAULT_SPACY_MODEL
from fedshield.privacy.pii.site_patterns import SitePattern, read_patterns

if TYPE_CHECKING:
    from fedshield.privacy.pii import PIIConfig
    from fedshield.privacy.secagg import SecAggConfig, SecAggParams

__all__ = [
    "BUDGET_METRICS",
    "OPTIONAL_METRICS",
    "POLICY_KEYS",
    "PolicyRefused",
    "SitePolicy",
]

# the site's budget settings: released unless the site withholds them (epsilon
# is not among them: it depends on the number of records)
DEFAULT_RELEASE = (Metric.DELTA, Metric.MAX_EPSILON)
BUDGET_METRICS = (
    Metric.EPSILON,
    Metric.RUN_EPSILON,
    Metric.DELTA,
    Metric.MAX_EPSILON,
)
PII_COUNTS = "pii"  # every ``pii-<ENTITY>`` count
SATURATED = "saturated"
OPTIONAL_METRICS = (
    *BUDGET_METRICS,
    Metric.NUM_EXAMPLES,
    Metric.TRAIN_LOSS,
    Metric.STEPS,
    Metric.NOISE_MULTIPLIER,
    Metric.SAMPLE_RATE,
    PII_COUNTS,
    SATURATED,
)
ALL = "all"

POLICY_KEYS = (
    "require-secagg",
    "secagg-min-sites",
    "secagg-min-threshold",
    "secagg-max-colluders",
    "pii-mode",
    "pii-entities",
    "pii-score-threshold",
    "pii-spacy-model",
    "pii-patterns",
    "allow-evaluate",
    "release-metrics",
)


class PolicyRefused(Exception):
    """The run asks for less than the site's policy; the message is the site's
    reason, sent to the server in a refusal (it names settings, never data)."""


def parse_release(value: str, *, key: str) -> frozenset[str]:
    """A ``release-metrics`` list: known names only, ``all`` for every one."""
    names = {n.strip() for n in str(value).split(",") if n.strip()}
    if names == {ALL}:
        return frozenset(OPTIONAL_METRICS)
    unknown = sorted(names - set(OPTIONAL_METRICS))
    if unknown:
        raise ConfigError(
            f"`{key}` names unknown metrics {unknown}. Choose from "
            f"{', '.join(OPTIONAL_METRICS)} (comma-separated), or `{ALL}`."
        )
    return frozenset(names)


def _bool(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    if key not in raw:
        return default
    value = raw[key]
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise ConfigError(
        f"Node config `{key}` must be true or false. Found {value!r}; e.g. "
        f'"{key}=true".'
    )


def _int(raw: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    if key not in raw:
        return default
    value = raw[key]
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()):
        raise ConfigError(f"Node config `{key}` must be an integer. Found {value!r}.")
    number = int(text)
    if number < minimum:
        raise ConfigError(f"Node config `{key}` must be >= {minimum}. Found {number}.")
    return number


def _threshold(raw: Mapping[str, Any], key: str, default: float) -> float:
    if key not in raw:
        return default
    value = raw[key]
    try:
        number = float(str(value))
    except ValueError:
        number = math.nan
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise ConfigError(
            f"Node config `{key}` must be a number in [0, 1]. Found {value!r}."
        )
    return number


@dataclass(frozen=True)
class SitePolicy:
    """What a site requires of every run (defaults: the safe choice)."""

    require_secagg: bool = True
    secagg_min_sites: int = 2
    secagg_min_threshold: int = 2
    secagg_max_colluders: int = 1
    pii_mode: PIIMode = PIIMode.TAG
    pii_entities: frozenset[str] = frozenset(DEFAULT_ENTITIES)
    pii_score_threshold: float = 0.5
    pii_spacy_model: str = DEFAULT_SPACY_MODEL
    pii_patterns: tuple[SitePattern, ...] = ()
    allow_evaluate: bool = False
    release_metrics: frozenset[str] = field(
        default_factory=lambda: frozenset(DEFAULT_RELEASE)
    )

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> SitePolicy:
        """The policy keys of a node config (other keys are the caller's)."""
        entities = raw.get("pii-entities")
        mode = str(raw.get("pii-mode", PIIMode.TAG.value))
        try:
            pii_mode = PIIMode(mode)
        except ValueError:
            raise ConfigError(
                f"Node config `pii-mode` must be one of "
                f"{', '.join(m.value for m in PIIMode)}. Found {mode!r}."
            ) from None
        return cls(
            require_secagg=_bool(raw, "require-secagg", True),
            secagg_min_sites=_int(raw, "secagg-min-sites", 2, minimum=2),
            secagg_min_threshold=_int(raw, "secagg-min-threshold", 2, minimum=2),
            secagg_max_colluders=_int(raw, "secagg-max-colluders", 1, minimum=0),
            pii_mode=pii_mode,
            pii_entities=frozenset(
                e.strip() for e in str(entities).split(",") if e.strip()
            )
            if entities is not None
            else frozenset(DEFAULT_ENTITIES),
            pii_score_threshold=_threshold(raw, "pii-score-threshold", 0.5),
            pii_spacy_model=str(raw.get("pii-spacy-model", DEFAULT_SPACY_MODEL)),
            pii_patterns=read_patterns(Path(str(raw["pii-patterns"])))
            if raw.get("pii-patterns")
            else (),
            allow_evaluate=_bool(raw, "allow-evaluate", False),
            release_metrics=parse_release(
                str(raw.get("release-metrics", ",".join(DEFAULT_RELEASE))),
                key="release-metrics",
            ),
        )

    @classmethod
    def accepting(
        cls, *, secagg: SecAggConfig, pii: PIIConfig, release: frozenset[str]
    ) -> SitePolicy:
        """The policy of a site that accepts exactly what the run config asks (a
        simulated site, whose operator is the coordinator)."""
        return cls(
            require_secagg=secagg.enabled,
            secagg_max_colluders=0,  # one person plays every site
            pii_mode=pii.mode,
            pii_entities=frozenset(pii.entities),
            pii_score_threshold=pii.score_threshold,
            pii_spacy_model=pii.spacy_model,
            allow_evaluate=True,
            release_metrics=release,
        )

    # -- checks of what the coordinator asks ------------------------------------

    def check_run(self, *, secagg: SecAggConfig, pii: PIIConfig) -> None:
        """Raise :class:`PolicyRefused` if the run config asks for less than this
        policy (secure aggregation switched off, weaker scrubbing)."""
        if self.require_secagg and not secagg.enabled:
            raise PolicyRefused(
                "this site requires secure aggregation (node config require-secagg="
                "true) and the run sets secagg.enabled=false"
            )
        self.check_pii(pii)

    def check_pii(self, pii: PIIConfig) -> None:
        if self.pii_mode is not PIIMode.OFF and pii.mode is PIIMode.OFF:
            raise PolicyRefused(
                f"this site scrubs PII before training (node config pii-mode="
                f"{self.pii_mode.value}) and the run sets pii.mode=off"
            )
        if pii.mode is not PIIMode.OFF:
            dropped = sorted(self.pii_entities - set(pii.entities))
            if dropped:
                raise PolicyRefused(
                    f"the run's pii.entities leave out {', '.join(dropped)}, which "
                    "this site's policy (node config pii-entities) scrubs"
                )
            if pii.score_threshold > self.pii_score_threshold:
                raise PolicyRefused(
                    f"the run's pii.score-threshold={pii.score_threshold:g} is above "
                    f"this site's pii-score-threshold={self.pii_score_threshold:g} "
                    "(a higher threshold scrubs less)"
                )
            if pii.spacy_model != self.pii_spacy_model:
                raise PolicyRefused(
                    f"the run's pii.spacy-model={pii.spacy_model!r} is not the NER "
                    f"model this site scrubs with ({self.pii_spacy_model!r})"
                )

    def pii_for(self, pii: PIIConfig) -> PIIConfig:
        """The scrubbing this site runs for a run asking ``pii``: the run's settings
        (checked by :meth:`check_pii`) with the site's own patterns added, their
        entity types scrubbed whatever the run's entities."""
        if not self.pii_patterns or pii.mode is PIIMode.OFF:
            return pii
        return replace(pii, patterns=(*pii.patterns, *self.pii_patterns))

    def check_evaluate(self) -> None:
        if not self.allow_evaluate:
            raise PolicyRefused(
                "this site answers no evaluate message (node config allow-evaluate="
                "false): its held-out accuracy and loss would leave without DP "
                "noise, for a model the coordinator chose"
            )

    @property
    def min_sum(self) -> int:
        """The fewest sites in a sum this site joins: its secagg-min-sites, and at
        least two more than the colluders it guards against."""
        return max(self.secagg_min_sites, self.secagg_max_colluders + 2)

    def check_secagg(self, params: SecAggParams) -> None:
        """Raise :class:`PolicyRefused` if a secure round's parameters are weaker
        than this policy (checked before the site trains)."""
        n = len(params.nodes)
        if n < self.min_sum:
            raise PolicyRefused(
                f"the secure round has {n} sites; this site's policy requires at "
                f"least {self.min_sum} (node config secagg-min-sites="
                f"{self.secagg_min_sites}, secagg-max-colluders="
                f"{self.secagg_max_colluders}: a sum needs two honest sites beyond "
                "the colluders)"
            )
        c = self.secagg_max_colluders
        if 2 * params.threshold <= n + c:
            # colluders confirm any view: two views, each confirmed by t sites,
            # would need 2 (t - c) honest sites; with 2t > n + c there are not
            raise PolicyRefused(
                f"the secure round's threshold {params.threshold} of {n} sites is "
                f"too low against {c} colluding site(s) (node config "
                f"secagg-max-colluders): it must exceed (n + colluders) / 2 = "
                f"{(n + c) / 2:g}; raise secagg.threshold"
            )
        if params.threshold < self.secagg_min_threshold:
            raise PolicyRefused(
                f"the secure round's threshold is {params.threshold}; this site's "
                f"policy requires at least {self.secagg_min_threshold} (node config "
                "secagg-min-threshold)"
            )

    def check_survivors(self, survivors: int, *, needed: int = 0) -> None:
        """Refuse to unmask a sum over fewer sites than the policy's minimum, or
        than ``needed`` (the survivors its distributed DP noise was calibrated
        for)."""
        least = max(self.min_sum, needed)
        if survivors < least:
            raise PolicyRefused(
                f"only {survivors} sites survived to unmasking; this site requires "
                f"at least {least} in a sum (its policy's secagg-min-sites and "
                "secagg-max-colluders, and the survivors its client-level noise "
                "was calibrated for)"
            )

    # -- what leaves the site ---------------------------------------------------

    def releases(self, name: str) -> bool:
        return name in self.release_metrics

    def released(
        self, metrics: Mapping[str, int | float]
    ) -> dict[str, int | float | list[int] | list[float]]:
        """The metrics this policy lets leave the site in the clear."""
        out: dict[str, int | float | list[int] | list[float]] = {}
        for key, value in metrics.items():
            kind = PII_COUNTS if key.startswith(PII_METRIC_PREFIX) else key
            if kind in self.release_metrics:
                out[key] = value
        return out
