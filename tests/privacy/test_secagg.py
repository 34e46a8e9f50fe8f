"""SecAgg+ protocol properties, without Flower."""

import os
import secrets

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from privacy.secagg import (
    ClientSession,
    ProtocolError,
    Quantizer,
    SecAggAborted,
    SecAggParams,
    ServerSession,
    modulus_bits,
)
from privacy.secagg.shamir import PRIME, SHARE_BYTES, combine, split

STAGES = ("advertise", "share", "mask", "unmask")
QUANT = Quantizer(clip_range=1.0, bits=16)


def _params(n: int, *, num_shares: int | None = None, t: int | None = None, d=64):
    return SecAggParams(
        session=os.urandom(16),
        nodes=tuple(range(100, 100 + n)),
        num_shares=num_shares or n,
        threshold=t or max(2, (n + 1) // 2),
        quantizer=QUANT,
        vector_length=d,
    )


def _run(p: SecAggParams, xs: dict[int, np.ndarray], drops: dict[str, set[int]]):
    """One round; ``drops[stage]`` = sites that vanish before answering it."""
    server = ServerSession(p)
    clients = {u: ClientSession(u, p) for u in p.nodes}
    for u in p.nodes:
        if u not in drops.get("advertise", set()):
            server.receive_keys(u, *clients[u].advertise())
    roster = server.roster()
    for u in roster:
        if u not in drops.get("share", set()):
            # every stage survives a round trip through the site's stored state
            clients[u] = ClientSession.from_json(clients[u].to_json())
            server.receive_shares(u, clients[u].share_keys(roster))
    for u in list(server.ciphertexts):
        if u not in drops.get("mask", set()):
            server.receive_masked(u, clients[u].masked_input(server.inbox(u), xs[u]))
    survivors, dropped = server.unmask_request()
    for u in survivors:
        if u not in drops.get("unmask", set()):
            server.receive_unmask(u, *clients[u].unmask(survivors, dropped))
    return server, server.aggregate()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.sampled_from([3, 5, 10]),
    sparse=st.booleans(),
    data=st.data(),
)
def test_unmasked_sum_equals_plaintext_sum_under_random_dropouts(n, sparse, data):
    num_shares = 3 if sparse and n > 3 else n
    holders = num_shares if num_shares < n else n
    t = data.draw(st.integers(2, holders), label="threshold")
    p = _params(n, num_shares=num_shares, t=t)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    floats = {u: rng.uniform(-1.2, 1.2, p.vector_length) for u in p.nodes}
    k = p.modulus_bits
    xs = {u: QUANT.encode(x, modulus=k).values for u, x in floats.items()}
    drops = {
        stage: set(
            data.draw(st.sets(st.sampled_from(p.nodes), max_size=n), label=stage)
        )
        for stage in STAGES
    }
    try:
        server, (total, survivors) = _run(p, xs, drops)
    except SecAggAborted:
        return  # too few left: checked in its own test
    assert len(survivors) >= t
    expected = sum(np.clip(floats[u], -1, 1) for u in survivors)
    decoded = QUANT.decode_sum(total, count=len(survivors))
    assert np.abs(decoded - expected).max() <= len(survivors) * 2 / QUANT.levels + 1e-9
    exact = sum(xs[u].astype(np.uint64) for u in survivors) % (1 << k)
    assert np.array_equal(total.astype(np.uint64), exact)


def _shared(n: int = 3, *, share: bool = False, **kw):
    """Params, server and sites after key advertisement (and key sharing)."""
    p = _params(n, **kw)
    server = ServerSession(p)
    clients = {u: ClientSession(u, p) for u in p.nodes}
    for u in p.nodes:
        server.receive_keys(u, *clients[u].advertise())
    if share:
        for u in p.nodes:
            server.receive_shares(u, clients[u].share_keys(server.roster()))
    return p, server, clients


def test_too_few_survivors_abort_and_the_server_holds_no_unmasked_input() -> None:
    p = _params(5, t=4)
    xs = {u: np.full(p.vector_length, 7, dtype=p.dtype) for u in p.nodes}
    with pytest.raises(SecAggAborted, match="below the threshold 4"):
        _run(p, xs, {"mask": {100, 101}})


def test_a_site_reveals_nothing_when_survivors_are_below_threshold() -> None:
    p, server, clients = _shared(5, share=True, t=4)
    xs = {u: np.arange(p.vector_length, dtype=p.dtype) * (u - 99) for u in p.nodes}
    for u in (100, 101, 102):
        server.receive_masked(u, clients[u].masked_input(server.inbox(u), xs[u]))
    with pytest.raises(SecAggAborted):
        server.unmask_request()
    with pytest.raises(SecAggAborted, match="no share is revealed"):
        clients[100].unmask({100, 101, 102}, {103, 104})  # a lying server
    assert not server.revealed_b and not server.revealed_s
    for u, y in server.masked.items():  # only masked vectors, none equals its input
        assert not np.array_equal(y, xs[u])


def test_masked_vector_alone_is_indistinguishable_from_uniform() -> None:
    p, server, clients = _shared(3, share=True, d=200_000)
    x = np.zeros(p.vector_length, dtype=p.dtype)  # the most structured input
    y = clients[100].masked_input(server.inbox(100), x)
    bins = 64
    counts = np.bincount(
        (y.astype(np.uint64) * bins >> p.modulus_bits).astype(int), minlength=bins
    )
    _, pvalue = stats.chisquare(counts)
    assert pvalue > 1e-4, counts


def test_fewer_than_threshold_shares_are_consistent_with_any_secret() -> None:
    secret = secrets.token_bytes(32)
    t = 4
    shares = split(secret, num_shares=7, threshold=t)
    assert combine(shares[:t]) == secret and combine(shares[2 : 2 + t]) == secret
    known = shares[: t - 1]
    for candidate in (bytes(32), secrets.token_bytes(32)):
        # the unique degree t-1 polynomial through (0, candidate) and the t-1 known
        # shares exists for every candidate: the shares say nothing about the secret
        points = [(0, int.from_bytes(candidate, "big"))] + [
            (x, int.from_bytes(y, "big")) for x, y in known
        ]

        def poly(z: int, pts=points) -> int:
            total = 0
            for xi, yi in pts:
                num = den = 1
                for xj, _ in pts:
                    if xj != xi:
                        num, den = num * (z - xj) % PRIME, den * (xi - xj) % PRIME
                total += yi * num * pow(den, -1, PRIME)
            return total % PRIME

        assert all(poly(x) == int.from_bytes(y, "big") for x, y in known)
        assert poly(0) == int.from_bytes(candidate, "big")
    with pytest.raises(ValueError):
        combine([(1, b"\0" * (SHARE_BYTES - 1))])


def test_replayed_duplicate_and_unknown_messages_are_rejected() -> None:
    p, server, clients = _shared()
    with pytest.raises(ProtocolError, match="advertised twice"):
        server.receive_keys(100, os.urandom(32), os.urandom(32))
    with pytest.raises(ProtocolError, match="not in this round"):
        server.receive_keys(999, os.urandom(32), os.urandom(32))
    roster = server.roster()
    cts = {u: clients[u].share_keys(roster) for u in p.nodes}
    server.receive_shares(100, cts[100])
    with pytest.raises(ProtocolError, match="twice"):
        server.receive_shares(100, cts[100])
    with pytest.raises(ProtocolError, match="expected its holders"):
        server.receive_shares(101, {100: cts[101][100]})  # drops a holder
    with pytest.raises(ProtocolError, match="out of order"):
        clients[100].share_keys(roster)  # replayed stage-2 message


def test_shares_from_another_round_or_misaddressed_fail_authentication() -> None:
    p, server, clients = _shared()
    roster = server.roster()
    for u in p.nodes:
        server.receive_shares(u, clients[u].share_keys(roster))
    x = np.zeros(p.vector_length, dtype=p.dtype)
    inbox = server.inbox(100)
    misaddressed = dict(inbox)
    misaddressed[101] = server.ciphertexts[101][102]  # meant for 102
    with pytest.raises(ProtocolError, match="fails authentication"):
        ClientSession.from_json(clients[100].to_json()).masked_input(misaddressed, x)
    # the same sites in a new round (new session id): old ciphertexts are useless
    p2, server2, clients2 = _shared()
    with pytest.raises(ProtocolError):
        for u in p2.nodes:
            server2.receive_shares(u, clients2[u].share_keys(server2.roster()))
        clients2[100].masked_input(inbox, x)
    with pytest.raises(ProtocolError, match="not a neighbour"):
        clients[100].masked_input({999: b"x" * 40}, x)


def test_wrong_vector_length_is_rejected_and_the_round_goes_on_without_it() -> None:
    p, server, clients = _shared(4)
    roster = server.roster()
    for u in p.nodes:
        server.receive_shares(u, clients[u].share_keys(roster))
    xs = {u: np.full(p.vector_length, u, dtype=p.dtype) for u in p.nodes}
    for u in p.nodes:
        y = clients[u].masked_input(server.inbox(u), xs[u])
        if u == 103:
            with pytest.raises(ProtocolError, match="expected"):
                server.receive_masked(u, y[:-1])
            continue
        server.receive_masked(u, y)
    survivors, dropped = server.unmask_request()
    assert dropped == {103}
    for u in survivors:
        server.receive_unmask(u, *clients[u].unmask(survivors, dropped))
    total, _ = server.aggregate()
    assert np.all(total == sum(xs[u] for u in survivors))


def test_a_site_never_reveals_both_shares_of_one_node() -> None:
    p, server, clients = _shared(4)
    for u in p.nodes:
        server.receive_shares(u, clients[u].share_keys(server.roster()))
    x = np.zeros(p.vector_length, dtype=p.dtype)
    for u in p.nodes:
        clients[u].masked_input(server.inbox(u), x)
    with pytest.raises(ProtocolError, match="both"):
        clients[100].unmask({100, 101, 102}, {102, 103})


def test_modulus_is_chosen_so_the_sum_cannot_wrap() -> None:
    assert modulus_bits(16, 3) == 18 and modulus_bits(24, 256) == 33
    with pytest.raises(ValueError, match="cannot wrap"):
        modulus_bits(60, 100)
    q = Quantizer(clip_range=0.5, bits=8)
    enc = q.encode(np.array([0.0, 0.5, -0.5, 2.0, -3.0, 0.25]), modulus=10)
    assert enc.saturated == 2
    assert enc.values.max() <= q.levels
    x = np.full(20_000, 0.123)
    mean = q.decode_sum(
        q.encode(x, modulus=10).values.astype(np.uint64).sum(keepdims=True),
        count=len(x),
    )[0] / len(x)
    assert mean == pytest.approx(0.123, abs=2e-3)  # stochastic rounding is unbiased
    with pytest.raises(ValueError, match="NaN"):
        q.encode(np.array([np.nan]), modulus=10)


def test_shares_and_threshold_take_counts_or_fractions_and_explain_bad_values() -> None:
    from models.config import ConfigError
    from privacy.secagg import SecAggConfig

    assert SecAggConfig(num_shares=1.0, threshold=0.5).counts(4) == (4, 2)
    assert SecAggConfig(num_shares=5, threshold=3).counts(20) == (5, 3)
    assert SecAggConfig(num_shares=4, threshold=1.0).counts(20) == (4, 5)  # odd ring
    with pytest.raises(ConfigError, match="secagg.threshold` resolves to 6"):
        SecAggConfig(num_shares=5, threshold=6).counts(20)
    with pytest.raises(ConfigError, match="as a fraction must be in"):
        SecAggConfig(num_shares=1.5)
    with pytest.raises(ConfigError, match="secagg.clip-range"):
        SecAggConfig(clip_range=0.0)
    with pytest.raises(ConfigError, match="must be a number"):
        SecAggConfig.from_run_config(
            {
                "secagg.enabled": True,
                "secagg.num-shares": "all",
                "secagg.threshold": 0.5,
                "secagg.clip-range": 1.0,
                "secagg.quantization-bits": 24,
            }
        )
