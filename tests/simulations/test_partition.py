import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedshield.simulations.datasets import default_split, rotten_tomatoes
from fedshield.simulations.partition import (
    PartitionError,
    PartitionScheme,
    partition_indices,
)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 300),
    k=st.integers(1, 6),
    alpha=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**16),
    scheme=st.sampled_from(list(PartitionScheme)),
)
def test_partitions_are_disjoint_complete_and_seeded(n, k, alpha, seed, scheme) -> None:
    labels = [i % 2 for i in range(n)]
    parts = partition_indices(
        labels, num_sites=k, scheme=scheme, alpha=alpha, seed=seed
    )
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(n))
    assert len(parts) == k and min(len(p) for p in parts) >= 2
    again = partition_indices(
        labels, num_sites=k, scheme=scheme, alpha=alpha, seed=seed
    )
    assert parts == again


def test_small_alpha_skews_labels_more_than_iid() -> None:
    labels = [i % 2 for i in range(2000)]

    def skew(parts):
        return max(abs(sum(labels[i] for i in p) / len(p) - 0.5) for p in parts)

    dir_parts = partition_indices(
        labels, num_sites=4, scheme=PartitionScheme.DIRICHLET, alpha=0.1, seed=1
    )
    iid_parts = partition_indices(
        labels, num_sites=4, scheme=PartitionScheme.IID, seed=1
    )
    assert skew(dir_parts) > 0.2 > skew(iid_parts)


def test_quantity_skew_skews_sizes_not_labels() -> None:
    labels = [i % 2 for i in range(4000)]
    parts = partition_indices(
        labels, num_sites=8, scheme=PartitionScheme.QUANTITY, alpha=0.5, seed=2
    )
    sizes = sorted(len(p) for p in parts)
    iid = partition_indices(labels, num_sites=8, scheme=PartitionScheme.IID, seed=2)
    assert sizes[-1] > 4 * sizes[0]  # some sites hold far more than others
    assert max(len(p) for p in iid) - min(len(p) for p in iid) <= 1
    for p in parts:  # each site's label mix is the pool's (up to sampling noise)
        if len(p) >= 200:
            assert abs(sum(labels[i] for i in p) / len(p) - 0.5) < 0.1


def test_too_few_examples_is_a_clear_error() -> None:
    with pytest.raises(PartitionError, match="cannot give 5 sites"):
        partition_indices([0, 1, 0], num_sites=5, scheme=PartitionScheme.IID)


def test_default_dataset_drops_plots_and_splits_disjointly() -> None:
    data = rotten_tomatoes()
    assert len(data) == 7403 + 5405
    assert sum(data.labels) == 7403  # fresh = 1
    split = default_split(seed=3, train_examples=500, test_examples=100)
    assert len(split.train) == 500 and len(split.test) == 100
    assert not set(split.train.texts) & set(split.test.texts) - set(
        t for t in data.texts if data.texts.count(t) > 1
    )
