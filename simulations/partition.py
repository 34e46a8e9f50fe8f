"""Split one pool of labelled examples across simulated sites: IID, Dirichlet
label skew, or quantity skew.

Dirichlet(alpha) label skew (Hsu et al. 2019): for every class c, draw
``p_c ~ Dir(alpha * 1_K)`` over the K sites and give site k the share ``p_c[k]`` of
class c's examples. Small alpha -> each site sees mostly one class; large alpha ->
close to IID. Draws are repeated (same seeded generator) until every site holds at
least ``min_per_site`` examples.

Quantity skew (Li et al., "Federated Learning on Non-IID Data Silos", ICDE 2022):
site sizes ``q ~ Dir(alpha * 1_K)`` of the pool, examples assigned at random, so
every site's label mix is the pool's but some sites hold far more than others.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

__all__ = ["PartitionError", "PartitionScheme", "partition_indices"]


class PartitionError(ValueError):
    """The pool cannot be split as configured."""


class PartitionScheme(StrEnum):
    IID = "iid"
    DIRICHLET = "dirichlet"
    QUANTITY = "quantity"


def partition_indices(
    labels: list[int] | tuple[int, ...],
    *,
    num_sites: int,
    scheme: PartitionScheme,
    alpha: float = 1.0,
    seed: int = 0,
    min_per_site: int = 2,
    max_tries: int = 1000,
) -> list[list[int]]:
    """Indices of ``labels`` for each of ``num_sites`` sites (disjoint, complete)."""
    n = len(labels)
    if num_sites < 1:
        raise PartitionError(f"Number of sites must be >= 1. Found {num_sites}.")
    if n < num_sites * min_per_site:
        raise PartitionError(
            f"{n} examples cannot give {num_sites} sites {min_per_site} each. Raise "
            "`data.train-examples` or simulate fewer sites."
        )
    rng = np.random.default_rng(seed)
    if scheme is PartitionScheme.IID:
        return [
            sorted(part.tolist())
            for part in np.array_split(rng.permutation(n), num_sites)
        ]
    if not alpha > 0:
        raise PartitionError(f"`data.dirichlet-alpha` must be > 0. Found {alpha}.")
    if scheme is PartitionScheme.QUANTITY:
        return _quantity(n, num_sites, alpha, rng, min_per_site)
    y = np.asarray(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_sites)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = np.cumsum(rng.dirichlet([alpha] * num_sites))[:-1] * len(idx)
            for k, chunk in enumerate(np.split(idx, cuts.astype(int))):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_per_site:
            return [sorted(p) for p in parts]
    raise PartitionError(
        f"After {max_tries} Dirichlet(alpha={alpha}) draws some site still had fewer "
        f"than {min_per_site} examples. Raise `data.dirichlet-alpha` or "
        "`data.train-examples`, or simulate fewer sites."
    )


def _quantity(
    n: int, num_sites: int, alpha: float, rng: np.random.Generator, min_per_site: int
) -> list[list[int]]:
    """Sizes ``min_per_site + Dir(alpha)`` share of the rest; examples at random."""
    spare = n - num_sites * min_per_site
    sizes = np.full(num_sites, min_per_site)
    shares = rng.dirichlet([alpha] * num_sites) * spare
    extra = np.floor(shares).astype(int)
    # the examples floor() left over go to the largest remainders
    left = spare - int(extra.sum())
    extra[np.argsort(shares - extra)[::-1][:left]] += 1
    sizes += extra
    order = rng.permutation(n)
    cuts = np.cumsum(sizes)[:-1]
    return [sorted(part.tolist()) for part in np.split(order, cuts)]
