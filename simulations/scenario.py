"""The default scenario: simulated sites sharing the embedded Rotten Tomatoes data.

With ``data.inject-pii`` > 0 that fraction of each site's train and eval records
gets a synthetic PII sentence (names, emails, cards, addresses ... from
presidio-evaluator, seeded by the run seed and the site) appended, so the demo's
sites hold text like a real site's and scrubbing has something to remove.

With ``audit.canaries`` = m > 0 each site also gets m canary records
(:mod:`privacy.audit.canaries`), each included in its training share with
probability 1/2, or, with ``audit.canary-kind = "gradient"``, m gradient canaries
inserted into its DP-SGD steps (:mod:`privacy.audit.gradient_canaries`);
``fedshield audit`` regenerates them (and which were included) from the same
config to run the one-run audit.

Every process (server, each simulated site) derives the same split from the run
config and seed, so no data has to be shipped: site k reads only its own share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from fedshield.common.config import ConfigError
from fedshield.common.run_config import RunConfig, check_fields, default, read_fields
from fedshield.models.texts import LabeledTexts
from fedshield.privacy.audit import (
    AuditConfig,
    Canaries,
    CanaryKind,
    GradientCanaries,
    make_canaries,
    make_gradient_canaries,
)

from .datasets import DefaultSplit, default_split
from .partition import PartitionError, PartitionScheme, partition_indices

if TYPE_CHECKING:
    from fedshield.privacy.pii.synthetic import SyntheticSentence

__all__ = ["Scenario", "ScenarioConfig"]


@dataclass(frozen=True, kw_only=True)
class ScenarioConfig:
    """The ``data.*`` keys of a simulation: how the packaged dataset is split."""

    partition: PartitionScheme = PartitionScheme(default("data.partition"))
    dirichlet_alpha: float = default("data.dirichlet-alpha")
    train_examples: int = default("data.train-examples")
    test_examples: int = default("data.test-examples")
    seed: int = default("seed")
    inject_pii: float = default("data.inject-pii")

    KEYS: ClassVar[dict[str, str]] = {
        "partition": "data.partition",
        "dirichlet_alpha": "data.dirichlet-alpha",
        "train_examples": "data.train-examples",
        "test_examples": "data.test-examples",
        "seed": "seed",
        "inject_pii": "data.inject-pii",
    }

    def __post_init__(self) -> None:
        check_fields(self, self.KEYS)

    def split(self) -> DefaultSplit:
        """The default dataset's test set, site pool and population for this
        seed and these sizes (cached by ``default_split``)."""
        return default_split(
            seed=self.seed,
            train_examples=self.train_examples,
            test_examples=self.test_examples,
        )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ScenarioConfig:
        return cls(
            **read_fields(run_config, cls.KEYS, convert={"partition": PartitionScheme})
        )


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """The default scenario of one run config, parsed once: every simulated site's
    share, its canaries and the audit's reference population derive from it."""

    data: ScenarioConfig
    audit: AuditConfig
    num_labels: int

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> Scenario:
        run = RunConfig.parse(run_config)
        audit = AuditConfig.from_run_config(run)
        audit.check_task(causal_lm=run["model.task"] == "causal-lm")
        return cls(
            data=ScenarioConfig.from_run_config(run),
            audit=audit,
            num_labels=run["model.num-labels"],
        )

    def central_test(self) -> LabeledTexts:
        """The held-out test split no site trains on."""
        return self.data.split().test

    def site(
        self, partition_id: int, num_partitions: int
    ) -> tuple[LabeledTexts, LabeledTexts]:
        """(train share, eval share) of simulated site ``partition_id``."""
        train, held, _ = self._shares(partition_id, num_partitions)
        return train, held

    def injected_pii(
        self, partition_id: int, num_partitions: int
    ) -> list[SyntheticSentence]:
        """The synthetic PII sentences :meth:`site` put into that site's train and
        eval shares (for canary checks)."""
        return self._shares(partition_id, num_partitions)[2]

    def partitions(
        self, num_partitions: int
    ) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
        """Each simulated site's indices into the site pool (``data.partition``)
        and into the test split (its federated-evaluation share, iid, at least
        one record each). Raises :class:`ConfigError` when the split cannot be
        made, so that ``fedshield simulate`` says so before anything starts.
        Made once per process and config: every simulated site's call needs it."""
        return _partitions(self.data, num_partitions)

    def _shares(
        self, partition_id: int, num_partitions: int
    ) -> tuple[LabeledTexts, LabeledTexts, list[SyntheticSentence]]:
        cfg = self.data
        split = cfg.split()
        train_parts, eval_parts = self.partitions(num_partitions)
        train = split.train.subset(train_parts[partition_id])
        held = split.test.subset(eval_parts[partition_id])
        injected: list[SyntheticSentence] = []
        if cfg.inject_pii > 0:  # make the shares look like a site's real text
            train, in_train = self._with_pii(train, seed=2 * partition_id)
            held, in_held = self._with_pii(held, seed=2 * partition_id + 1)
            injected = [*in_train.values(), *in_held.values()]
        canaries = self.canaries(partition_id, num_partitions)
        if canaries is not None and not canaries.kind.after_scrubbing:
            texts, labels = canaries.included_records()
            train = LabeledTexts(train.texts + texts, train.labels + labels)
        return train, held, injected

    def after_scrubbing(
        self, partition_id: int, num_partitions: int
    ) -> LabeledTexts | None:
        """The records a simulated site appends to its training share after PII
        scrubbing: its included ``secret`` canaries (None for other kinds)."""
        canaries = self.canaries(partition_id, num_partitions)
        if canaries is None or not canaries.kind.after_scrubbing:
            return None
        texts, labels = canaries.included_records()
        return LabeledTexts(texts=texts, labels=labels)

    def canaries(self, partition_id: int, num_partitions: int) -> Canaries | None:
        """The ``audit.canaries`` canaries of a simulated site (None when 0): for
        mislabelled ones, the site's own slice of the population, so that no two
        sites and no reference model share a canary; crafted ones need no
        population."""
        audit = self.audit
        if audit.canaries == 0 or not audit.canary_kind.is_data:
            return None
        seed = self.data.seed * 1_000_003 + 7919 * (partition_id + 1)
        m = audit.canaries
        if audit.canary_kind in (CanaryKind.CRAFTED, CanaryKind.SECRET):
            return make_canaries(
                kind=audit.canary_kind,
                count=m,
                num_labels=self.num_labels,
                seed=seed,
                repeated=audit.repeated_secrets,
                repeats=audit.secret_repeats,
            )
        population = self.data.split().population
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
            num_labels=self.num_labels,
            seed=seed,
            population=[(population.texts[i], population.labels[i]) for i in own],
        )

    def gradient_canaries(
        self, partition_id: int, num_partitions: int, *, clip_norm: float
    ) -> GradientCanaries | None:
        """The ``audit.canaries`` white-box gradient canaries of a simulated site
        (None unless ``audit.canary-kind`` is ``gradient``), each a gradient of
        norm ``clip_norm`` at a coordinate no other site's canary uses."""
        audit = self.audit
        if audit.canaries == 0 or audit.canary_kind is not CanaryKind.GRADIENT:
            return None
        return make_gradient_canaries(
            count=audit.canaries,
            seed=self.data.seed,
            site_index=partition_id,
            num_sites=num_partitions,
            clip_norm=clip_norm,
        )

    def reference_population(self, num_partitions: int) -> LabeledTexts:
        """Population records no site trains on and no canary comes from, with PII
        injected as into the sites' shares: what LiRA's reference models train on."""
        population = self.data.split().population
        mislabelled = self.audit.canary_kind is CanaryKind.MISLABELLED
        start = num_partitions * self.audit.canaries if mislabelled else 0
        rest = population.subset(list(range(start, len(population))))
        if self.data.inject_pii > 0:
            rest, _ = self._with_pii(rest, seed=-1)
        return rest

    def _with_pii(
        self, texts: LabeledTexts, *, seed: int
    ) -> tuple[LabeledTexts, dict[int, SyntheticSentence]]:
        from fedshield.privacy.pii.synthetic import inject_pii  # presidio-evaluator

        injected, which = inject_pii(
            texts.texts,
            fraction=self.data.inject_pii,
            seed=self.data.seed * 1_000_003 + seed,
        )
        return LabeledTexts(texts=tuple(injected), labels=texts.labels), which


@lru_cache(maxsize=4)
def _partitions(
    cfg: ScenarioConfig, num_partitions: int
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    split = cfg.split()
    try:
        train = partition_indices(
            split.train.labels,
            num_sites=num_partitions,
            scheme=cfg.partition,
            alpha=cfg.dirichlet_alpha,
            seed=cfg.seed,
        )
    except PartitionError as err:
        raise ConfigError(
            f"The packaged dataset's site pool cannot be split among "
            f"{num_partitions} sites: {err}"
        ) from err
    try:
        held = partition_indices(
            split.test.labels,
            num_sites=num_partitions,
            scheme=PartitionScheme.IID,
            seed=cfg.seed + 1,
            min_per_site=1,
        )
    except PartitionError as err:
        raise ConfigError(
            f"Each of the {num_partitions} simulated sites holds at least one "
            f"record of the test split for its own evaluation, but "
            f"data.test-examples is {len(split.test)}. Raise "
            f"data.test-examples to at least {num_partitions} or simulate "
            "fewer sites."
        ) from err
    return tuple(map(tuple, train)), tuple(map(tuple, held))
