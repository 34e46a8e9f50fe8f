"""A site's own settings: its node config, parsed once into a frozen dataclass.

The node config is what the site's operator passes to its SuperNode
(``flower-supernode ... --node-config "data-path='/data/notes.csv' max-epsilon=8"``);
the coordinator never sets it. In a simulation Flower sets ``partition-id`` and
``num-partitions`` instead, and the simulation wiring (``fedshield.simulations.apps``)
fills in what a simulated site has no operator for.

Keys:
    data-path        CSV/TSV/JSONL training file of this site (read-only).
    eval-data-path   optional held-out file for federated evaluation.
    data-encoding    text encoding of those files (default: the run's
                     ``data.encoding``, ``utf-8``); the site knows its files.
    site-name        label used in summaries (default ``node-<id>``, or
                     ``site-<partition-id>`` in simulation).
    state-dir        where the site keeps its ledger, keys and scrub cache
                     (default ``~/.fedshield/sites/<site-name>``, or
                     ``data-<hash of data-path>``; never the node id).
    max-epsilon      the site's sample-level budget (0 or absent = none).
    delta            the site's delta (default 1e-5; a run's ``dp.delta`` may lower
                     it, never raise it).
    budget-scope     ``dataset`` (compose over releases of the same data, across
                     runs; default) or ``site`` (over every release of the site).

The site's privacy policy (secure aggregation required, its scrubbing floor, which
metrics may leave) has its own keys: :mod:`client.policy`.

An unknown key is an error, with a suggestion: a misspelt ``max-epsilon`` must
never run the site without its budget.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedshield.common.config import ConfigError, parse_enum
from fedshield.common.keys import TEXT_ENCODING

from .policy import POLICY_KEYS, SitePolicy

__all__ = ["BudgetScope", "NodeConfig"]


class BudgetScope(StrEnum):
    """Which releases a site's epsilon composes."""

    DATASET = "dataset"  # same dataset fingerprint, across runs
    SITE = "site"  # every release on the site's data, whatever the fingerprint


# Flower's own node-config keys in a simulation (one per simulated SuperNode).
SIMULATION_KEYS = ("partition-id", "num-partitions")
SITE_KEYS = (
    "data-path",
    "eval-data-path",
    "data-encoding",
    "site-name",
    "state-dir",
    "max-epsilon",
    "delta",
    "budget-scope",
    *POLICY_KEYS,
)


_DECIMAL = re.compile(r"[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def _number(raw: dict[str, Any], key: str) -> float | None:
    """A non-negative decimal number written plainly (``8``, ``0.5``, ``1e-6``):
    a value that Python's ``float`` would bend (``8_0``, non-ASCII digits, a
    magnitude that underflows to 0) is refused, never read as something else."""
    if key not in raw:
        return None
    value = raw[key]
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, bool) or not _DECIMAL.fullmatch(text.strip()):
        raise ConfigError(
            f"Node config `{key}` must be a plain non-negative decimal number. Found "
            f'{value!r}. Set it in the SuperNode\'s --node-config, e.g. "{key}=8.0".'
        )
    number = float(text)
    mantissa = re.split("[eE]", text)[0]
    if not math.isfinite(number) or (number == 0 and mantissa.strip("+0.") != ""):
        raise ConfigError(
            f"Node config `{key}` = {value!r} is out of range (it would read as "
            f'{number}). Write the value plainly, e.g. "{key}=8.0".'
        )
    return number


def _count(raw: dict[str, Any], key: str) -> int | None:
    """A non-negative integer (Flower sets ``partition-id``/``num-partitions``)."""
    if key not in raw:
        return None
    value = raw[key]
    if isinstance(value, bool) or not (
        isinstance(value, int)
        or (isinstance(value, str) and value.isascii() and value.strip().isdigit())
    ):
        raise ConfigError(
            f"Node config `{key}` must be an integer >= 0. Found {value!r}."
        )
    return int(value)


def _path(raw: dict[str, Any], key: str) -> Path | None:
    if key not in raw or str(raw[key]) == "":
        return None
    return Path(str(raw[key])).expanduser()


def _encoding(raw: dict[str, Any]) -> str | None:
    if str(raw.get("data-encoding", "")) == "":
        return None
    value = str(raw["data-encoding"])
    problem = TEXT_ENCODING.problem(value)
    if problem:
        raise ConfigError(f"Node config `data-encoding` = {value!r} {problem}.")
    return value


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """A site's node config. ``None`` = not set by the site."""

    data_path: Path | None = None
    eval_data_path: Path | None = None
    data_encoding: str | None = None
    site_name: str | None = None
    state_dir: Path | None = None
    max_epsilon: float | None = None
    delta: float | None = None
    budget_scope: BudgetScope = BudgetScope.DATASET
    policy: SitePolicy = field(default_factory=SitePolicy)
    partition_id: int | None = None  # simulation only
    num_partitions: int | None = None  # simulation only

    def __post_init__(self) -> None:
        # max-epsilon and delta are checked where they take effect (SiteBudget)
        if (self.partition_id is None) != (self.num_partitions is None):
            raise ConfigError(
                "Node config has only one of `partition-id` and `num-partitions`; "
                "a simulated site needs both (Flower's simulation engine sets them)."
            )
        if self.partition_id is not None and (
            self.data_path is not None or self.eval_data_path is not None
        ):
            # a deployed site's files with a simulated site's keys: the run config
            # (site budgets, policies, poisoning) would then reach its real data
            raise ConfigError(
                "Node config has `data-path`/`eval-data-path` (a deployed site's "
                "files) and `partition-id` (which only Flower's simulation engine "
                "sets): a node is one or the other. Remove `partition-id`/"
                "`num-partitions` from a deployed SuperNode's node config."
            )
        if self.partition_id is not None and not (
            0 <= self.partition_id < (self.num_partitions or 0)
        ):
            raise ConfigError(
                f"Node config `partition-id` = {self.partition_id} is outside "
                f"[0, num-partitions = {self.num_partitions})."
            )

    @property
    def simulated(self) -> bool:
        """A site of Flower's simulation engine (it has a partition, no operator)."""
        return self.partition_id is not None

    def name(self, node_id: int) -> str:
        """The site's label in summaries and its state folder."""
        if self.site_name:
            return self.site_name
        if self.partition_id is not None:
            return f"site-{self.partition_id}"
        return f"node-{node_id}"

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> NodeConfig:
        """Parse ``context.node_config``; unknown keys are refused."""
        known = (*SITE_KEYS, *SIMULATION_KEYS)
        for key in raw:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean `{close[0]}`?" if close else ""
                raise ConfigError(
                    f"Unknown node config key `{key}`.{hint} A site's node config "
                    f"takes: {', '.join(SITE_KEYS)}."
                )
        return cls(
            data_path=_path(raw, "data-path"),
            eval_data_path=_path(raw, "eval-data-path"),
            data_encoding=_encoding(raw),
            site_name=str(raw["site-name"]) if raw.get("site-name") else None,
            state_dir=_path(raw, "state-dir"),
            max_epsilon=_number(raw, "max-epsilon"),
            delta=_number(raw, "delta"),
            budget_scope=parse_enum(
                BudgetScope,
                "budget-scope",
                str(raw.get("budget-scope", BudgetScope.DATASET.value)),
            ),
            policy=SitePolicy.parse(raw),
            partition_id=_count(raw, "partition-id"),
            num_partitions=_count(raw, "num-partitions"),
        )
