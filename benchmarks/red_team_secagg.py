"""Attacks on secure aggregation: a coordinator that forges the round's parameters,
lies about who survived, withholds shares, replays a round or picks the weights.

Each attack plays whole rounds against real sites (:class:`Federation`): they train
on their files and mask the update their train handler computed. The attacker's
loot is judged against that update (:class:`UpdateTap`): ``succeeded`` when what it
rebuilt is the site's quantized update on >= 99 % of the coordinates
(:func:`match_fraction`), or, for sums, within 5 % of it in L2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from red_team_harness import (
    Env,
    Federation,
    Outcome,
    Result,
    UpdateTap,
    attack,
)
from red_team_protocol import SecureRound, forge_params, match_fraction

from fedshield.privacy.secagg import Quantizer, SecAggConfig

MATCH = 0.99  # share of coordinates at which a recovered vector is the update


def quantizer(env: Env) -> Quantizer:
    return SecAggConfig.from_run_config(env.run_config).quantizer


def new_round(
    env: Env,
    fed: Federation,
    nodes: Sequence[int | None],
    *,
    num_shares: int | None = None,
    threshold: int,
    server_round: int = 1,
) -> SecureRound:
    params = forge_params(
        nodes=len(nodes),
        num_shares=num_shares or len(nodes),
        threshold=threshold,
        quantizer=quantizer(env),
        length=env.vector_length(),
    )
    return SecureRound(fed, list(nodes), params, server_round=server_round)


def judge(
    env: Env,
    rnd: SecureRound,
    tap: UpdateTap,
    *,
    u: int,
    peers: Sequence[int],
    known: dict[int, bytes],
) -> Result:
    """Did the coordinator strip every mask from participant u's upload?"""
    node = rnd.nodes[u]
    assert node is not None
    x = tap.last(node)
    recovered = rnd.strip(u, peers, known)
    if recovered is not None and x is not None:
        frac = match_fraction(recovered, x, quantizer(env))
        if frac >= MATCH:
            return Result(
                Outcome.SUCCEEDED,
                f"rebuilt site {node}'s quantized update on {frac:.1%} of "
                f"{len(x)} coordinates",
            )
        return Result(
            Outcome.LEARNED_NOTHING,
            f"stripped what it could; {frac:.2%} of coordinates match (masked)",
        )
    if rnd.refused:
        why = sorted({r[:160] for r in rnd.refused.values()})
        return Result(Outcome.REFUSED, f"{len(rnd.refused)} refusal(s): {why}")
    missing = "no upload" if u not in rnd.y else "fewer than t shares of a secret"
    return Result(Outcome.LEARNED_NOTHING, f"could not strip the masks: {missing}")


def run_honestly(rnd: SecureRound, skip: Sequence[int] = ()) -> list[int]:
    """Stages 2-4 without lies; the survivors (everyone who uploaded)."""
    rnd.setup(skip=skip)
    rnd.share_keys()
    rnd.masked_input({i: rnd.inbox(i) for i in rnd.cts})
    survivors = sorted(rnd.y)
    rnd.unmask({i: (set(survivors), set()) for i in survivors})
    return survivors


def split_holders(env: Env, name: str, *, n: int, t: int) -> Result:
    """Complete graph, threshold t; u and t - 1 holders hear 'everyone survived'
    (t shares of b_u), the other n - t hear 'u dropped' (shares of s_u^sk)."""
    fed = Federation(env, name, n)
    rnd = new_round(env, fed, fed.nodes, threshold=t)
    with UpdateTap().installed() as tap:
        rnd.setup()
        rnd.share_keys()
        rnd.masked_input({i: rnd.inbox(i) for i in rnd.cts})
        everyone, u = set(range(n)), 0
        requests = {i: (everyone, set[int]()) for i in range(t)}
        requests |= {i: (everyone - {u}, {u}) for i in range(t, n)}
        rnd.unmask(requests)
    s_u = rnd.secret("s", u)
    known = {u: s_u} if s_u is not None else {}
    return judge(env, rnd, tap, u=u, peers=sorted(rnd.inbox(u)), known=known)


@attack(
    "split-holders",
    "A coordinator that tells some holders 'u survived' and the others 'u "
    "dropped' cannot rebuild both of u's secrets (issue 14: n=4, threshold 0.5).",
)
def split_holders_default(env: Env) -> Result:
    return split_holders(env, "split-holders", n=4, t=2)


@attack(
    "weaken-threshold",
    "A coordinator cannot lower the threshold to half the holders (t=3 of 6) and "
    "then split the holders: sites refuse t <= holders / 2.",
)
def weaken_threshold(env: Env) -> Result:
    return split_holders(env, "weaken-threshold", n=6, t=3)


@attack(
    "ring-attack",
    "Sparse SecAgg+ rings (num-shares < 1.0) do not expose a site: with t - 1 "
    "colluding neighbours staying and k - t honest ones dropping after key "
    "advertisement, the server cannot unmask the target (n=7, k=3, t=2).",
)
def ring_attack(env: Env) -> Result:
    fed = Federation(env, "ring-attack", 6)
    real = iter(fed.nodes)
    colluder, target, dropout = 2, 3, 4
    nodes = [None if i == colluder else next(real) for i in range(7)]
    rnd = new_round(env, fed, nodes, num_shares=3, threshold=2)
    with UpdateTap().installed() as tap:
        rnd.setup()
        rnd.share_keys(skip=[dropout])  # it never sends its shares
        inboxes = {i: rnd.inbox(i) for i in rnd.cts}
        rnd.masked_input(inboxes)
        survivors = set(rnd.y)
        rnd.unmask({i: (survivors, set[int]()) for i in survivors})
    peers = sorted(inboxes.get(target, {}))
    known = {colluder: rnd.fakes[colluder].s_private}
    return judge(env, rnd, tap, u=target, peers=peers, known=known)


@attack(
    "threshold-below-site-floor",
    "A site whose policy sets secagg-min-threshold=4 takes no part in a round with "
    "t=3, where three colluding sites would hold t shares of each of its secrets "
    "(n=5: the target, one honest site, three colluders).",
)
def threshold_below_site_floor(env: Env) -> Result:
    floor = {"secagg-min-threshold": "4", "secagg-max-colluders": 1}
    fed = Federation(env, "threshold-floor", 2, node_config=floor)
    rnd = new_round(env, fed, [*fed.nodes, None, None, None], threshold=3)
    with UpdateTap().installed() as tap:
        survivors = run_honestly(rnd)
    s_0 = rnd.secret("s", 0)
    known = {0: s_0} if s_0 is not None and 0 in survivors else {}
    return judge(env, rnd, tap, u=0, peers=[1, 2, 3, 4], known=known)


@attack(
    "collude-and-drop",
    "With t - 1 = 1 colluding site, calling the other honest site dropped after "
    "it uploaded does not leave a 'sum' of the target and the colluder alone "
    "(n=3, t=2, the site's default policy).",
)
def collude_and_drop(env: Env) -> Result:
    fed = Federation(env, "collude-drop", 2, node_config={"secagg-max-colluders": 1})
    rnd = new_round(env, fed, [*fed.nodes, None], threshold=2)
    target, honest, colluder = 0, 1, 2
    with UpdateTap().installed() as tap:
        rnd.setup()
        rnd.share_keys()
        rnd.masked_input({i: rnd.inbox(i) for i in rnd.cts})
        if set(rnd.y) != {target, honest, colluder}:
            return Result(Outcome.REFUSED, f"{rnd.refused}")
        rnd.unmask({i: ({target, colluder}, {honest}) for i in (target, colluder)})
    x = tap.last(fed.nodes[target])
    if rnd.secret("b", target) is None or rnd.secret("s", honest) is None or x is None:
        why = sorted({r[:160] for r in rnd.refused.values()})
        return Result(Outcome.REFUSED, f"too few shares to unmask: {why}")
    total = rnd.honest_sum([target, colluder], dropped=[honest])  # colluder's is 0
    error = float(np.linalg.norm(total - x) / np.linalg.norm(x))
    if error < 0.05:
        return Result(
            Outcome.SUCCEEDED,
            f"the 2-site 'sum' less the colluder's input is the target's update "
            f"(relative L2 error {error:.1e})",
        )
    return Result(Outcome.LEARNED_NOTHING, f"the sum is {error:.2f} off the target")


@attack(
    "withheld-shares",
    "A site given no shares of its neighbours does not upload an input masked by "
    "its self mask alone (n=4, t=3).",
)
def withheld_shares(env: Env) -> Result:
    fed = Federation(env, "withheld-shares", 4)
    rnd = new_round(env, fed, fed.nodes, threshold=3)
    u, everyone = 0, set(range(4))
    with UpdateTap().installed() as tap:
        rnd.setup()
        rnd.share_keys()
        inboxes = {i: rnd.inbox(i) for i in rnd.cts} | {u: {}}
        rnd.masked_input(inboxes)
        rnd.unmask({i: (everyone, set[int]()) for i in rnd.y})
    return judge(env, rnd, tap, u=u, peers=[], known={})


@attack(
    "withheld-shares-partial",
    "A site given exactly t - 1 of its neighbours' shares (n=5, t=3: allowed by "
    "'abort under t - 1 shares' and 't > holders / 2') stays hidden when the "
    "coordinator then calls those neighbours dropped to some holders and survived "
    "to others.",
)
def withheld_shares_partial(env: Env) -> Result:
    fed = Federation(env, "withheld-partial", 5)
    rnd = new_round(env, fed, fed.nodes, threshold=3)
    u, v1, v2, w1, w2 = range(5)
    with UpdateTap().installed() as tap:
        rnd.setup()
        rnd.share_keys()
        inboxes = {i: rnd.inbox(i) for i in rnd.cts} | {u: rnd.inbox(u, [v1, v2])}
        rnd.masked_input(inboxes)
        # every request is consistent with its receiver's own view of the round
        rnd.unmask(
            {
                u: ({u, v1, v2}, set()),
                v1: ({u, v1, w1}, {v2, w2}),
                v2: ({u, v2, w1}, {v1, w2}),
                w1: ({u, w1, w2}, {v1, v2}),
                w2: ({u, w1, w2}, {v1, v2}),
            }
        )
    known = {v: key for v in (v1, v2) if (key := rnd.secret("s", v)) is not None}
    return judge(env, rnd, tap, u=u, peers=[v1, v2], known=known)


def replay(env: Env, name: str, config: dict[str, str]) -> Result:
    """Non-DP (deterministic) training: a full round with A, B, C, then the same
    round again with A and B only; the difference of the two sums is C's update."""
    fed = Federation(env, name, 3, run_config=env.config(dp__enabled=False))
    first = new_round(env, fed, fed.nodes, threshold=2)
    with UpdateTap().installed() as tap:
        survivors = run_honestly(first)
        if survivors != [0, 1, 2]:
            return Result(Outcome.REFUSED, f"first round: {first.refused}")
        again = new_round(env, fed, fed.nodes[:2], threshold=2)
        again.config = config
        if run_honestly(again) != [0, 1]:
            why = sorted({r[:160] for r in again.refused.values()})
            return Result(Outcome.REFUSED, f"the replayed setup: {why}")
    c = tap.updates[fed.nodes[2]][0]
    diff = first.honest_sum(survivors) - again.honest_sum([0, 1])
    error = float(np.linalg.norm(diff - c) / np.linalg.norm(c))
    if error < 0.05:
        return Result(
            Outcome.SUCCEEDED,
            f"sum(A,B,C) - sum(A,B) is C's update (relative L2 error {error:.1e})",
        )
    return Result(Outcome.LEARNED_NOTHING, f"the difference is {error:.2f} off C")


@attack(
    "replay-setup",
    "A resent setup message (same run, same round) does not make a site train "
    "again, so two sums over different subsets cannot be subtracted.",
)
def replay_setup(env: Env) -> Result:
    return replay(env, "replay-setup", {})


@attack(
    "replay-fresh-run-key",
    "Changing the run-key the server sends does not make a round new: the same "
    "Flower run and round again are refused.",
)
def replay_fresh_run_key(env: Env) -> Result:
    return replay(env, "replay-run-key", {"run-key": "red-team-again"})


@attack(
    "weights-isolation",
    "Server-chosen aggregation weights (1 for one site, 1e-9 for the others) do "
    "not make the unmasked sum one site's update.",
)
def weights_isolation(env: Env) -> Result:
    fed = Federation(env, "weights", 4)
    rnd = new_round(env, fed, fed.nodes, threshold=3)
    with UpdateTap().installed() as tap:
        rnd.setup()
        rnd.share_keys()
        rnd.masked_input(
            {i: rnd.inbox(i) for i in rnd.cts},
            weight=lambda i: 1.0 if i == 0 else 1e-9,
        )
        survivors = sorted(rnd.y)
        rnd.unmask({i: (set(survivors), set[int]()) for i in survivors})
    if survivors != [0, 1, 2, 3]:
        return Result(Outcome.REFUSED, f"{rnd.refused}")
    target = tap.last(fed.nodes[0])
    assert target is not None
    total = rnd.honest_sum(survivors)
    error = float(np.linalg.norm(total - target) / np.linalg.norm(target))
    if error < 0.05:
        return Result(
            Outcome.SUCCEEDED, f"the 'sum' is site 0's update (error {error:.1e})"
        )
    return Result(
        Outcome.LEARNED_NOTHING,
        f"the sum is {error:.2f} (relative L2) away from site 0's update",
    )


@attack(
    "sybil-sites",
    "Out of scope (threat model: Sybil sites): a coordinator that runs every "
    "other participant itself reads the last real site's update from the sum.",
    in_scope=False,
)
def sybil_sites(env: Env) -> Result:
    fed = Federation(env, "sybil", 1)
    rnd = new_round(env, fed, [fed.nodes[0], None, None], threshold=3)
    with UpdateTap().installed() as tap:
        survivors = run_honestly(rnd)
    if 0 not in survivors:
        return Result(Outcome.REFUSED, f"{rnd.refused}")
    known = {v: rnd.fakes[v].s_private for v in rnd.fakes}
    return judge(env, rnd, tap, u=0, peers=[1, 2], known=known)
