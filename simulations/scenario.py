"""The default scenario: simulated sites sharing the embedded Rotten Tomatoes data.

With ``data.inject-pii`` > 0 that fraction of each site's train and eval records
gets a synthetic PII sentence (names, emails, cards, addresses ... from
presidio-evaluator, seeded by the run seed and the site) appended, so the demo's
sites hold text like a real site's and scrubbing has something to remove.

With ``audit.canaries`` = m > 0 each site also gets m canary records
(:mod:`privacy.audit.canaries`), each included in its training share with
probability 1/2; ``fedshield audit`` regenerates them (and which were included)
from the same config to run the one-run audit.

Every process (server, each simulated site) derives the same split from the run
config and seed, so no data has to be shipped: site k reads only its own share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedshield.client.data import LabeledTexts
from fedshield.models.config import ConfigError, parse_enum, require
from fedshield.privacy.audit import AuditConfig, Canaries, CanaryKind, make_canaries

from .datasets import DefaultSplit, default_split
from .partition import PartitionScheme, partition_indices

if TYPE_CHECKING:
    from fedshield.privacy.pii.synthetic import SyntheticSentence

__all__ = [
    "ScenarioConfig",
    "central_test_split",
    "injected_pii",
    "reference_population",
    "simulated_site",
    "site_canaries",
]


@dataclass(frozen=True)
class ScenarioConfig:
    partition: PartitionScheme
    dirichlet_alpha: float
    train_examples: int
    test_examples: int
    seed: int
    inject_pii: float = 0.0

    def split(self) -> DefaultSplit:
        """The default dataset's test set, site pool and population for this
        seed and these sizes (cached by ``default_split``)."""
        return default_split(
            seed=self.seed,
            train_examples=self.train_examples,
            test_examples=self.test_examples,
        )

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ScenarioConfig:
        alpha = require(run_config, "data.dirichlet-alpha", float)
        inject = require(run_config, "data.inject-pii", float)
        if not 0 <= inject <= 1:
            raise ConfigError(
                "`data.inject-pii` is the fraction of simulated records that get a "
                f"synthetic PII sentence, in [0, 1]. Found {inject}."
            )
        if not alpha > 0:
            raise ConfigError(f"`data.dirichlet-alpha` must be > 0. Found {alpha}.")
        return cls(
            partition=parse_enum(
                PartitionScheme,
                "data.partition",
                require(run_config, "data.partition", str),
            ),
            dirichlet_alpha=alpha,
            train_examples=require(run_config, "data.train-examples", int),
            test_examples=require(run_config, "data.test-examples", int),
            seed=require(run_config, "seed", int),
            inject_pii=inject,
        )


def central_test_split(run_config: dict[str, Any]) -> LabeledTexts:
    cfg = ScenarioConfig.from_run_config(run_config)
    return cfg.split().test


def simulated_site(
    *, partition_id: int, num_partitions: int, run_config: dict[str, Any]
) -> tuple[LabeledTexts, LabeledTexts]:
    """(train share, eval share) of simulated site ``partition_id``."""
    train, held, _ = _site_shares(partition_id, num_partitions, run_config)
    return train, held


def injected_pii(
    *, partition_id: int, num_partitions: int, run_config: dict[str, Any]
) -> list[SyntheticSentence]:
    """The synthetic PII sentences ``simulated_site`` put into that site's train
    and eval shares (for canary checks)."""
    return _site_shares(partition_id, num_partitions, run_config)[2]


def _site_shares(
    partition_id: int, num_partitions: int, run_config: dict[str, Any]
) -> tuple[LabeledTexts, LabeledTexts, list[SyntheticSentence]]:
    cfg = ScenarioConfig.from_run_config(run_config)
    split = cfg.split()
    train_parts = partition_indices(
        split.train.labels,
        num_sites=num_partitions,
        scheme=cfg.partition,
        alpha=cfg.dirichlet_alpha,
        seed=cfg.seed,
    )
    eval_parts = partition_indices(
        split.test.labels,
        num_sites=num_partitions,
        scheme=PartitionScheme.IID,
        seed=cfg.seed + 1,
        min_per_site=1,
    )
    train = split.train.subset(train_parts[partition_id])
    held = split.test.subset(eval_parts[partition_id])
    injected: list[SyntheticSentence] = []
    if cfg.inject_pii > 0:  # make the shares look like a site's real text
        train, in_train = _with_pii(train, cfg, seed=2 * partition_id)
        held, in_held = _with_pii(held, cfg, seed=2 * partition_id + 1)
        injected = [*in_train.values(), *in_held.values()]
    canaries = site_canaries(
        partition_id=partition_id, num_partitions=num_partitions, run_config=run_config
    )
    if canaries is not None:
        texts, labels = canaries.included_records()
        train = LabeledTexts(train.texts + texts, train.labels + labels)
    return train, held, injected


def site_canaries(
    *, partition_id: int, num_partitions: int, run_config: dict[str, Any]
) -> Canaries | None:
    """The ``audit.canaries`` canaries of a simulated site (None when 0): for
    mislabelled ones, the site's own slice of the population, so that no two sites
    and no reference model share a canary; crafted ones need no population."""
    audit = AuditConfig.from_run_config(run_config)
    if audit.canaries == 0:
        return None
    cfg = ScenarioConfig.from_run_config(run_config)
    num_labels = require(run_config, "model.num-labels", int)
    seed = cfg.seed * 1_000_003 + 7919 * (partition_id + 1)
    m = audit.canaries
    if audit.canary_kind is CanaryKind.CRAFTED:
        return make_canaries(
            kind=audit.canary_kind, count=m, num_labels=num_labels, seed=seed
        )
    population = cfg.split().population
    if len(population) < num_partitions * m:
        raise ConfigError(
            f"`audit.canaries` = {m} per site for {num_partitions} sites needs "
            f"{num_partitions * m} population records; the default dataset has "
            f"{len(population)} beyond data.train-examples + data.test-examples. "
            "Lower one of them."
        )
    own = range(partition_id * m, (partition_id + 1) * m)
    return make_canaries(
        kind=audit.canary_kind,
        count=m,
        num_labels=num_labels,
        seed=seed,
        population=[(population.texts[i], population.labels[i]) for i in own],
    )


def reference_population(
    *, num_partitions: int, run_config: dict[str, Any]
) -> LabeledTexts:
    """Population records no site trains on and no canary comes from, with PII
    injected as into the sites' shares: what LiRA's reference models train on."""
    cfg = ScenarioConfig.from_run_config(run_config)
    audit = AuditConfig.from_run_config(run_config)
    population = cfg.split().population
    mislabelled = audit.canary_kind is CanaryKind.MISLABELLED
    start = num_partitions * audit.canaries if mislabelled else 0
    rest = population.subset(list(range(start, len(population))))
    if cfg.inject_pii > 0:
        rest, _ = _with_pii(rest, cfg, seed=-1)
    return rest


def _with_pii(
    texts: LabeledTexts, cfg: ScenarioConfig, *, seed: int
) -> tuple[LabeledTexts, dict[int, SyntheticSentence]]:
    from fedshield.privacy.pii.synthetic import inject_pii

    injected, which = inject_pii(
        texts.texts, fraction=cfg.inject_pii, seed=cfg.seed * 1_000_003 + seed
    )
    return LabeledTexts(texts=tuple(injected), labels=texts.labels), which
