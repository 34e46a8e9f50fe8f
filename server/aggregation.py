"""The aggregation pipeline: one round's updates -> the next global model.

One pipeline for every setting (plain or secure sum, with or without client-level
DP, any FedAvg-family Flower strategy). With ``theta`` the global trainable state,
``delta_k = theta_k - theta`` site k's update and U the sites in the sum (m = |U|):

1. **Sum** ``T = sum_{k in U} w_k delta_k`` and its weight ``W = sum_{k in U} w_k``,
   taken one of two ways:

   - plain (:func:`plain_sum`): from the deltas screening decoded
     (:mod:`server.replies`), ``w_k = n_k``, the site's example count;
   - secure (:func:`server.secagg.secure_sum`): each site masks its unweighted
     ``delta_k`` (``w_k = 1``: a weight the server chose per site could single one
     out) and the server unmasks only T; it never sees one ``delta_k``.

   With client-level DP every ``w_k = 1`` too: example-count weights would let one
   large site move the sum by more than S.
2. **Noise** (client-level DP only). Under secure aggregation the sites added it
   before masking (*distributed* DP, :mod:`privacy.distributed_dp`): T already
   carries Skellam noise of variance at least ``(z S)^2`` per coordinate, and the
   server adds none. Otherwise :func:`with_client_noise` wraps the sum, as Flower's
   ``DifferentialPrivacyServerSideFixedClipping`` wraps a strategy:
   ``T <- T + N(0, z^2 S^2 I)`` (:func:`privacy.client_dp.noisy_sum`). Each site
   clipped its delta to L2 norm S, so adding or removing a site moves T by at most S
   and this is the Gaussian mechanism with multiplier z; everything below is
   post-processing and costs no epsilon.
3. **Mean** over the fixed denominator: ``Delta = T / W`` (:func:`mean_update`). W is
   fixed by who is in the sum (the example counts, or m), never by the noise; under
   client-level DP it is the number of sites *sampled*, public before any reply, so
   refusals and dropouts count as zero updates and the update's scale does not
   tell how many sites made it into the sum.
4. **Server step** (:func:`server_step`): the strategy's ``aggregate_train`` gets
   one reply carrying the model ``theta + Delta`` with weight 1. FedAvg's weighted
   mean of that one reply is ``theta + Delta`` itself (times 1.0, exact). The FedOpt
   strategies have stored ``current = theta`` in ``configure_train`` and take
   ``Delta_t = (theta + Delta) - current`` as the pseudo-gradient; FedAdam, e.g.::

       m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t
       v_t = beta_2 v_{t-1} + (1 - beta_2) Delta_t^2
       theta <- theta + eta sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))
                        * m_t / (sqrt(v_t) + tau)

   FedAvgM steps along ``-(theta - (theta + Delta)) = Delta`` with momentum. So
   every strategy runs on the same (secure, noisy) mean, and with FedAvg the rule is
   ``theta <- theta + T / W``. (Flower's log line "aggregate_train: Received 1
   results" counts that one reply; the round's sites are in the round's table.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedshield.common.schema import Metric, Record
from fedshield.models import (
    StateMismatchError,
    add_delta,
    arrays_to_state,
    check_same_layout,
    state_to_arrays,
)
from fedshield.privacy.client_dp import ClientDPConfig, noisy_sum

__all__ = [
    "UpdateSum",
    "aggregate",
    "aggregation_weights",
    "mean_update",
    "plain_sum",
    "robust_step",
    "server_step",
    "with_client_noise",
]

State = dict[str, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class UpdateSum:
    """A weighted sum of the round's updates, however it was taken."""

    total: State  # T = sum_k w_k delta_k (float32, per parameter)
    weight: float  # W = sum_k w_k, the mean's denominator
    count: int  # m, the updates in the sum
    # distributed DP: the sites' Skellam noise already in T (total variance, in
    # integer units); None when the server must add the client-level noise itself
    noise_variance: float | None = None


def aggregation_weights(
    sites: dict[str, dict[str, float]], *, uniform: bool
) -> dict[str, float]:
    """Each site's weight ``w_k``: its ``num-examples`` metric (FedAvg), or 1 for
    every site with ``uniform`` (client-level DP: the sum's sensitivity must stay S;
    secure aggregation: a weight the server chose per site could single one out)
    or when any site withholds its example count."""
    if uniform or any(Metric.NUM_EXAMPLES not in m for m in sites.values()):
        return dict.fromkeys(sites, 1.0)
    return {site: float(m[Metric.NUM_EXAMPLES]) for site, m in sites.items()}


def plain_sum(*, deltas: list[State], weights: list[float]) -> UpdateSum:
    """``sum_k w_k delta_k`` of decoded updates, all with the same layout."""
    if not deltas or len(deltas) != len(weights):
        raise ValueError(
            f"plain_sum needs one weight per update and at least one update; found "
            f"{len(deltas)} update(s) and {len(weights)} weight(s)."
        )
    total = {
        k: torch.stack([w * d[k] for w, d in zip(weights, deltas, strict=True)]).sum(0)
        for k in deltas[0]
    }
    return UpdateSum(total=total, weight=float(sum(weights)), count=len(deltas))


def with_client_noise(summed: UpdateSum, *, client_dp: ClientDPConfig) -> UpdateSum:
    """The sum with client-level Gaussian noise ``N(0, z^2 S^2 I)`` added.

    Raises ValueError unless the weights are uniform (``W = m``): only then is the
    sum's sensitivity the clip norm S the noise is calibrated to.
    """
    if summed.weight != summed.count:
        raise ValueError(
            f"Client-level DP needs uniform weights, but the sum of {summed.count} "
            f"update(s) has weight {summed.weight}: its sensitivity is not "
            f"client-dp.clip-norm={client_dp.clip_norm}, so the noise would not bound "
            "it. Sum the updates with weight 1 each."
        )
    total = noisy_sum(
        summed.total,
        clip_norm=client_dp.clip_norm,
        noise_multiplier=client_dp.noise_multiplier,
    )
    return replace(summed, total=total)


def mean_update(summed: UpdateSum) -> State:
    """``Delta = T / W``: the mean update over the fixed denominator."""
    return {k: v / summed.weight for k, v in summed.total.items()}


def server_step(
    strategy: FedAvg, *, server_round: int, global_state: State, mean: State
) -> State:
    """The strategy's new global model from the round's mean update ``mean``.

    The strategy must have configured this round with ``global_state``
    (``configure_train``, as :func:`server.rounds.run_round` does): FedOpt
    strategies remember it there as the point their optimizer steps from.
    """
    return _strategy_model(
        strategy, server_round=server_round, global_state=global_state, deltas=[mean]
    )


def robust_step(
    strategy: FedAvg, *, server_round: int, global_state: State, deltas: list[State]
) -> State:
    """The new global model of a robust Flower strategy (FedMedian, FedTrimmedAvg,
    Krum, MultiKrum, Bulyan) from the sites' individual updates: each site's model
    ``theta + delta_k`` becomes one reply of weight 1 (a site's own example count
    would let a poisoner weigh itself up), and the strategy's ``aggregate_train``
    combines them. Only without secure aggregation and client-level DP
    (:func:`server.strategy.check_robust`)."""
    return _strategy_model(
        strategy, server_round=server_round, global_state=global_state, deltas=deltas
    )


def _strategy_model(
    strategy: FedAvg, *, server_round: int, global_state: State, deltas: list[State]
) -> State:
    """``strategy.aggregate_train`` of one reply per update, each carrying the
    model ``theta + delta`` with weight 1; the new model, checked."""
    replies = [
        Message(
            content=RecordDict(
                {
                    strategy.arrayrecord_key: state_to_arrays(
                        add_delta(global_state, delta)  # theta + Delta
                    ),
                    Record.METRICS: MetricRecord({strategy.weighted_by_key: 1.0}),
                }
            ),
            dst_node_id=0,
            message_type=MessageType.TRAIN,
        )
        for delta in deltas
    ]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    if arrays is None:
        raise StateMismatchError(
            f"{type(strategy).__name__}.aggregate_train returned no model for round "
            f"{server_round}."
        )
    what = f"The new global model of {type(strategy).__name__}"
    new_state = arrays_to_state(arrays, what=what)  # finite values
    check_same_layout(global_state, new_state, what)
    return new_state


def aggregate(
    summed: UpdateSum,
    *,
    client_dp: ClientDPConfig,
    strategy: FedAvg,
    server_round: int,
    global_state: State,
    sampled: int = 0,
    guard: Callable[[State], State | None] | None = None,
) -> State:
    """The pipeline after the sum: noise (client-level DP), mean, the root guard's
    test of the mean (``strategy.root-guard``, :mod:`server.guard`: post-processing
    of the released mean; a rejected mean takes no server step at all), server
    step.

    Under client-level DP the mean divides by ``sampled``, the sites asked to
    train this round (refusals and dropouts count as zero updates)."""
    if client_dp.enabled:
        if summed.noise_variance is None:  # central: the Gaussian mechanism here
            summed = with_client_noise(summed, client_dp=client_dp)
        if sampled < summed.count:
            raise ValueError(
                f"{summed.count} updates in the sum but only {sampled} sites sampled"
            )
        summed = replace(summed, weight=float(sampled))
    mean = mean_update(summed)
    if guard is not None:
        guarded = guard(mean)
        if guarded is None:  # rejected: no server step (momentum would still move)
            return global_state
        mean = guarded
    return server_step(
        strategy, server_round=server_round, global_state=global_state, mean=mean
    )
