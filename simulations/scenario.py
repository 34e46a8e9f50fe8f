"""The default scenario: simulated sites sharing the embedded Rotten Tomatoes data.

With ``data.inject-pii`` > 0 that fraction of each site's train and eval records
gets a synthetic PII sentence (names, emails, cards, addresses ... from
presidio-evaluator, seeded by the run seed and the site) appended, so the demo's
sites hold text like a real site's and scrubbing has something to remove.

Every process (server, each simulated site) derives the same split from the run
config and seed, so no data has to be shipped: site k reads only its own share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from client.data import LabeledTexts
from models.config import ConfigError, parse_enum, require

from .datasets import default_split
from .partition import PartitionScheme, partition_indices

if TYPE_CHECKING:
    from privacy.pii.synthetic import SyntheticSentence

__all__ = ["ScenarioConfig", "central_test_split", "injected_pii", "simulated_site"]


@dataclass(frozen=True)
class ScenarioConfig:
    partition: PartitionScheme
    dirichlet_alpha: float
    train_examples: int
    test_examples: int
    seed: int
    inject_pii: float = 0.0

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
    return default_split(
        seed=cfg.seed,
        train_examples=cfg.train_examples,
        test_examples=cfg.test_examples,
    ).test


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
    split = default_split(
        seed=cfg.seed,
        train_examples=cfg.train_examples,
        test_examples=cfg.test_examples,
    )
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
    if cfg.inject_pii == 0:
        return train, held, []
    # make the shares look like a site's real text
    train, in_train = _with_pii(train, cfg, seed=2 * partition_id)
    held, in_held = _with_pii(held, cfg, seed=2 * partition_id + 1)
    return train, held, [*in_train.values(), *in_held.values()]


def _with_pii(
    texts: LabeledTexts, cfg: ScenarioConfig, *, seed: int
) -> tuple[LabeledTexts, dict[int, SyntheticSentence]]:
    from privacy.pii.synthetic import inject_pii

    injected, which = inject_pii(
        texts.texts, fraction=cfg.inject_pii, seed=cfg.seed * 1_000_003 + seed
    )
    return LabeledTexts(texts=tuple(injected), labels=texts.labels), which
