"""Scenarios: the embedded default dataset, IID/Dirichlet partitions, the CLI."""

from .datasets import default_split, rotten_tomatoes
from .partition import PartitionError, PartitionScheme, partition_indices
from .scenario import ScenarioConfig, central_test_split, simulated_site

__all__ = [
    "PartitionError",
    "PartitionScheme",
    "ScenarioConfig",
    "central_test_split",
    "default_split",
    "partition_indices",
    "rotten_tomatoes",
    "simulated_site",
]
