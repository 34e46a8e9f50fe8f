"""SecAgg+ protocol properties, without Flower.

The privacy tests play the server: they take what it legitimately learns in a round
(the masked uploads, the self-mask seeds of the survivors, the mask keys of the sites
it calls dropped), remove every mask that knowledge lets it remove, and check that
what is left of any one site's upload is still uniform and unrelated to its input.
Their statistical checks run on fixed key material (the ``fixed_keys`` fixture), so
each compares one fixed sample with its bound: the same verdict on every run.
"""

import hashlib
import itertools
import os
import secrets

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import stats

from fedshield.privacy.secagg import (
    ClientSession,
    ProtocolError,
    Quantizer,
    SecAggAborted,
    SecAggParams,
    ServerSession,
    masks,
    modulus_bits,
)
from fedshield.privacy.secagg import client as secagg_client
from fedshield.privacy.secagg.primitives import KeyPair, expand_mask, private_from_bytes
from fedshield.privacy.secagg.shamir import PRIME, SHARE_BYTES, combine, split

STAGES = ("advertise", "share", "mask", "unmask")
QUANT = Quantizer(clip_range=1.0, bits=16)
SESSION = bytes(range(16))  # a fixed session id, for the deterministic tests
Drops = dict[str, set[int]]


def _params(
    n: int,
    *,
    num_shares: int | None = None,
    t: int | None = None,
    d: int = 64,
    session: bytes | None = None,
) -> SecAggParams:
    shares = num_shares or n
    holders = n if shares >= n else 2 * (shares // 2) + 1
    return SecAggParams(
        session=session or os.urandom(16),
        nodes=tuple(range(100, 100 + n)),
        num_shares=shares,
        threshold=t or max(2, holders // 2 + 1),  # more than half of the holders
        quantizer=QUANT,
        vector_length=d,
    )


@pytest.fixture()
def fixed_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key pair and self-mask seed the protocol draws comes from a counter
    (SHA-256 of a label) instead of the OS CSPRNG, so the masks, and the verdict of
    each statistical test that uses this fixture, are the same on every run."""
    counter = itertools.count()

    def keypair() -> KeyPair:
        seed = hashlib.sha256(b"fedshield-test-key/%d" % next(counter)).digest()
        return private_from_bytes(seed)

    monkeypatch.setattr(secagg_client, "new_keypair", keypair)


def _sites(p: SecAggParams) -> tuple[ServerSession, dict[int, ClientSession]]:
    return ServerSession(p), {u: ClientSession(u, p) for u in p.nodes}


def _unmask(
    clients: dict[int, ClientSession],
    survivors: set[int],
    dropped: set[int],
    *,
    answering: set[int] | None = None,
) -> dict[int, tuple[dict[int, bytes], dict[int, bytes]]]:
    """Stages 4-5 for the ``answering`` survivors (all by default): each confirms
    the view (S, D), the tags are relayed, each reveals its shares."""
    answering = set(survivors if answering is None else answering)
    tags = {v: clients[v].confirm(set(survivors), set(dropped)) for v in answering}
    return {
        v: clients[v].unmask({w: tags[w][v] for w in answering if w != v})
        for v in sorted(answering)
    }


def _run(
    server: ServerSession,
    clients: dict[int, ClientSession],
    xs: dict[int, np.ndarray],
    drops: Drops,
) -> tuple[np.ndarray, set[int]]:
    """One round; ``drops[stage]`` = sites that vanish before answering it. A site
    that refuses to share (too few of its holders advertised keys) drops out, as it
    does through the client mod."""
    p = server.params
    for u in p.nodes:
        if u not in drops.get("advertise", set()):
            server.receive_keys(u, *clients[u].advertise())
    roster = server.roster()
    for u in roster:
        if u in drops.get("share", set()):
            continue
        # every stage survives a round trip through the site's stored state
        clients[u] = ClientSession.from_json(clients[u].to_json())
        try:
            ciphertexts = clients[u].share_keys(roster)
        except SecAggAborted:
            continue
        server.receive_shares(u, ciphertexts)
    for u in list(server.ciphertexts):
        if u not in drops.get("mask", set()):
            server.receive_masked(u, clients[u].masked_input(server.inbox(u), xs[u]))
    survivors, dropped = server.unmask_request()
    signers = survivors - drops.get("unmask", set())  # vanish before confirming
    for u in sorted(signers):
        server.receive_tags(u, clients[u].confirm(survivors, dropped))
    for u in sorted(signers):
        server.receive_unmask(u, *clients[u].unmask(server.tags_for(u)))
    return server.aggregate()


def _outcome(p: SecAggParams, drops: Drops) -> set[int] | None:
    """The survivors U2 whose inputs the round must sum, or None where it must
    abort: fewer than t sites left at a stage, fewer than t survivors confirming the
    view, or a secret the server needs (b_u of a survivor, s_u of a
    site that dropped after sharing) with fewer than t holders among them."""
    t = p.threshold
    advertised = set(p.nodes) - drops["advertise"]
    if len(advertised) < t:
        return None
    shared = {
        u
        for u in advertised - drops["share"]
        if len(set(p.holders(u)) & advertised) >= t  # else the site refuses
    }
    survivors = shared - drops["mask"]
    if len(shared) < t or len(survivors) < t:
        return None
    answering = survivors - drops["unmask"]
    if len(answering) < t:
        return None
    if any(len(set(p.holders(u)) & answering) < t for u in shared):
        return None
    return survivors


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.sampled_from([3, 5, 10]),
    sparse=st.booleans(),
    data=st.data(),
)
def test_unmasked_sum_equals_plaintext_sum_under_random_dropouts(n, sparse, data):
    """The round aborts exactly when the protocol says it must, and otherwise sums
    exactly the inputs of the sites that uploaded."""
    num_shares = 3 if sparse and n > 3 else n
    holders = num_shares if num_shares < n else n
    t = data.draw(st.integers(max(2, holders // 2 + 1), holders), label="threshold")
    p = _params(n, num_shares=num_shares, t=t)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    floats = {u: rng.uniform(-1.2, 1.2, p.vector_length) for u in p.nodes}
    k = p.modulus_bits
    xs = {u: QUANT.encode(x, modulus=k).values for u, x in floats.items()}
    drops = {
        stage: data.draw(
            st.sets(st.sampled_from(p.nodes), max_size=max(1, n // 3)), label=stage
        )
        for stage in STAGES
    }
    expected = _outcome(p, drops)
    server, clients = _sites(p)
    if expected is None:
        event("aborted")
        with pytest.raises(SecAggAborted):
            _run(server, clients, xs, drops)
        return
    event("completed")
    total, survivors = _run(server, clients, xs, drops)
    assert survivors == expected
    plain = sum(np.clip(floats[u], -1, 1) for u in survivors)
    decoded = QUANT.decode_sum(total, count=len(survivors))
    assert np.abs(decoded - plain).max() <= len(survivors) * 2 / QUANT.levels + 1e-9
    exact = sum(xs[u].astype(np.uint64) for u in survivors) % (1 << k)
    assert np.array_equal(total.astype(np.uint64), exact)


def _shared(n: int = 3, *, share: bool = False, **kw):
    """Params, server and sites after key advertisement (and key sharing)."""
    p = _params(n, **kw)
    server, clients = _sites(p)
    for u in p.nodes:
        server.receive_keys(u, *clients[u].advertise())
    if share:
        for u in p.nodes:
            server.receive_shares(u, clients[u].share_keys(server.roster()))
    return p, server, clients


def _input(p: SecAggParams, shift: int = 0) -> np.ndarray:
    """A quantized update near zero, the usual case: every value within 100 levels
    of L/2, so its top bits are constant and it is far from uniform."""
    values = QUANT.levels // 2 - 100 + (np.arange(p.vector_length) * 7 + shift) % 200
    return values.astype(p.dtype)


def _sub(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """(a - b) mod 2^bits, as uint64."""
    diff = a.astype(np.uint64) - b.astype(np.uint64)
    return diff & np.uint64((1 << bits) - 1)


def _pairwise_masks(
    p: SecAggParams, u: int, mask_key: bytes, server: ServerSession, peers: set[int]
) -> np.ndarray:
    """sum_{v in peers} sign(u, v) PRG(s_uv) mod 2^k: the pairwise part of y_u, from
    u's mask key and the public mask keys the server holds."""
    total = np.zeros(p.vector_length, dtype=np.uint64)
    for v in sorted(peers):
        seed = masks.mask_seed(mask_key, server.keys[v][1], p.session)
        mask = expand_mask(seed, p.vector_length, bits=p.modulus_bits).astype(np.uint64)
        total = total + mask if u < v else total - mask
    return total & np.uint64((1 << p.modulus_bits) - 1)


def _assert_hides(r: np.ndarray, x: np.ndarray, bits: int) -> None:
    """``r`` (values mod 2^bits) is uniform and unrelated to the input ``x``: its top
    and its bottom 6 bits each pass a chi-square test against uniform (64 bins), it
    equals x in almost no coordinate, and it does not correlate with x."""
    r = r.astype(np.uint64)
    assert int(r.max()) < 1 << bits
    top, bottom = r >> np.uint64(bits - 6), r & np.uint64(63)
    for part, digits in (("top", top), ("bottom", bottom)):
        counts = np.bincount(digits.astype(np.int64), minlength=64)
        _, pvalue = stats.chisquare(counts)
        assert pvalue > 1e-6, (part, counts)
    assert np.count_nonzero(r == x.astype(np.uint64)) <= 5
    assert abs(np.corrcoef(r.astype(np.float64), x.astype(np.float64))[0, 1]) < 0.05


def test_the_uniformity_check_rejects_an_unmasked_input() -> None:
    p = _params(3, d=20_000)
    with pytest.raises(AssertionError):
        _assert_hides(_input(p), _input(p, shift=1), p.modulus_bits)


def test_masked_vector_alone_is_indistinguishable_from_uniform(fixed_keys) -> None:
    p, server, clients = _shared(3, share=True, d=20_000, session=SESSION)
    for u in p.nodes:
        x = _input(p, shift=u)
        y = clients[u].masked_input(server.inbox(u), x)
        _assert_hides(y, x, p.modulus_bits)


def test_pairwise_masks_alone_hide_an_upload_once_its_self_mask_is_removed(
    fixed_keys,
) -> None:
    """The server legitimately reconstructs b_u of every survivor. Stripping PRG(b_u)
    from y_u leaves x_u plus u's pairwise masks, which must still hide x_u: without
    pairwise masks (self mask only) the server would read every input here."""
    p = _params(3, t=2, d=20_000, session=SESSION)
    server, clients = _sites(p)
    xs = {u: _input(p, shift=u) for u in p.nodes}
    total, survivors = _run(server, clients, xs, {})
    k = p.modulus_bits
    assert survivors == set(p.nodes)
    assert np.array_equal(total, sum(xs.values()))  # the round itself is right
    for u in p.nodes:
        self_seed = combine(list(server.revealed_b[u].items()))
        self_mask = expand_mask(self_seed, p.vector_length, bits=k)
        rest = _sub(server.masked[u], self_mask, k)
        _assert_hides(rest, xs[u], k)
        # nor is b_u a key to the pairwise masks: tried as u's mask key, it strips
        # nothing
        peers = set(p.nodes) - {u}
        guess = _pairwise_masks(p, u, self_seed, server, peers)
        _assert_hides(_sub(rest, guess, k), xs[u], k)
        # what is left is x_u plus u's pairwise masks and nothing else (checked with
        # u's own mask key, which the server never holds)
        pairwise = _pairwise_masks(p, u, clients[u].s_private, server, peers)
        assert np.array_equal(_sub(rest, pairwise, k), xs[u])


def test_self_mask_alone_hides_an_upload_once_its_pairwise_masks_are_removed(
    fixed_keys,
) -> None:
    """A site whose upload arrives after the deadline, or that a curious server just
    calls dropped, has its mask key s_u reconstructed, so the server can strip all of
    its pairwise masks from y_u. The self mask PRG(b_u) must still hide x_u, and no
    site may reveal a share of b_u as well."""
    p = _params(3, t=2, d=20_000, session=SESSION)
    server, clients = _sites(p)
    xs = {u: _input(p, shift=u) for u in p.nodes}
    late = 102
    for u in p.nodes:
        server.receive_keys(u, *clients[u].advertise())
    roster = server.roster()
    for u in p.nodes:
        server.receive_shares(u, clients[u].share_keys(roster))
    uploads = {u: clients[u].masked_input(server.inbox(u), xs[u]) for u in p.nodes}
    for u in set(p.nodes) - {late}:
        server.receive_masked(u, uploads[u])
    survivors, dropped = server.unmask_request()
    assert dropped == {late}
    for v in sorted(survivors):
        server.receive_tags(v, clients[v].confirm(survivors, dropped))
    for v in sorted(survivors):
        b_shares, s_shares = clients[v].unmask(server.tags_for(v))
        assert late not in b_shares and set(s_shares) == {late}
        server.receive_unmask(v, b_shares, s_shares)
    total, _ = server.aggregate()
    assert np.array_equal(total, xs[100] + xs[101])  # the round itself is right
    k = p.modulus_bits
    mask_key = combine(list(server.revealed_s[late].items()))
    pairwise = _pairwise_masks(p, late, mask_key, server, survivors)
    rest = _sub(uploads[late], pairwise, k)
    _assert_hides(rest, xs[late], k)
    # nor is s_u a key to the self mask: tried as the seed b_u, it strips nothing
    guess = expand_mask(mask_key, p.vector_length, bits=k)
    _assert_hides(_sub(rest, guess, k), xs[late], k)
    # what is left is x_u plus u's self mask and nothing else (checked with b_u,
    # which the server never holds)
    self_mask = expand_mask(clients[late].self_seed, p.vector_length, bits=k)
    assert np.array_equal(_sub(rest, self_mask, k), xs[late])


def test_self_mask_seeds_are_fresh_full_length_secrets() -> None:
    """The server knows every public value of a round (session, node ids, keys): a
    self-mask seed derived from them, or one with few random bytes (Flower 1.41
    expands 32-bit seeds), would let it strip the self mask without any share. The
    same three sites in the same session, eight times, draw 24 distinct seeds, and
    no byte position holds the same value in all of them."""
    seeds = []
    for _ in range(8):
        p, _server, clients = _shared(3, share=True, session=SESSION)
        seeds += [clients[u].self_seed for u in p.nodes]
    assert {len(s) for s in seeds} == {32}
    assert len(set(seeds)) == len(seeds)
    columns = np.frombuffer(b"".join(seeds), dtype=np.uint8).reshape(len(seeds), 32)
    assert all(len(set(column)) > 1 for column in columns.T)


def test_too_few_survivors_abort_and_the_server_holds_no_unmasked_input(
    fixed_keys,
) -> None:
    p = _params(5, t=4, d=20_000, session=SESSION)
    server, clients = _sites(p)
    xs = {u: _input(p, shift=u) for u in p.nodes}
    with pytest.raises(SecAggAborted, match="below the threshold 4"):
        _run(server, clients, xs, {"mask": {100, 101}})
    # the server stopped before stage 4: it holds no share of any secret ...
    assert not server.revealed_b and not server.revealed_s
    assert not server.unmask_replies
    # ... and a server that ignores its own abort and asks anyway gets nothing
    survivors = set(server.masked)
    assert survivors == {102, 103, 104}
    for u in survivors:
        with pytest.raises(SecAggAborted, match="no share is revealed"):
            clients[u].confirm(survivors, {100, 101})
    # what it does hold, three masked uploads, hides each input and their sum (the
    # masks shared with the two sites that dropped do not cancel)
    k = p.modulus_bits
    for u, y in server.masked.items():
        _assert_hides(y, xs[u], k)
    total = sum(server.masked[u].astype(np.uint64) for u in survivors)
    _assert_hides(total % (1 << k), sum(xs[u] for u in survivors), k)


def test_a_site_reveals_nothing_when_survivors_are_below_threshold() -> None:
    p, server, clients = _shared(5, share=True, t=4)
    xs = {u: np.arange(p.vector_length, dtype=p.dtype) * (u - 99) for u in p.nodes}
    for u in (100, 101, 102):
        server.receive_masked(u, clients[u].masked_input(server.inbox(u), xs[u]))
    with pytest.raises(SecAggAborted):
        server.unmask_request()
    with pytest.raises(SecAggAborted, match="no share is revealed"):
        clients[100].confirm({100, 101, 102}, {103, 104})  # a lying server
    assert not server.revealed_b and not server.revealed_s
    for u, y in server.masked.items():  # only masked vectors, none equals its input
        assert not np.array_equal(y, xs[u])


def test_fewer_than_threshold_shares_are_consistent_with_any_secret() -> None:
    secret = secrets.token_bytes(32)
    t = 4
    shares = split(secret, num_shares=7, threshold=t)
    assert combine(shares[:t]) == secret and combine(shares[2 : 2 + t]) == secret
    known = shares[: t - 1]
    # interpolating t - 1 shares as if they were enough gives a random field element,
    # not the secret (a polynomial of too low a degree would give the secret here)
    for few in (known, shares[3 : 3 + t - 1]):
        with pytest.raises(ValueError, match="do not reconstruct"):
            combine(few)
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
    for u in p2.nodes:
        server2.receive_shares(u, clients2[u].share_keys(server2.roster()))
    fresh = ClientSession.from_json(clients2[100].to_json())
    assert fresh.masked_input(server2.inbox(100), x) is not None  # its own inbox works
    with pytest.raises(ProtocolError, match="fails authentication"):
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
    for u in sorted(survivors):
        server.receive_tags(u, clients[u].confirm(survivors, dropped))
    for u in sorted(survivors):
        server.receive_unmask(u, *clients[u].unmask(server.tags_for(u)))
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
        clients[100].confirm({100, 101, 102}, {102, 103})


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
    from fedshield.common.config import ConfigError
    from fedshield.privacy.secagg import SecAggConfig

    # a fraction f gives floor(f h) + 1 of h holders: more than half, for any n
    assert SecAggConfig(num_shares=1.0, threshold=0.5).counts(4) == (4, 3)
    assert SecAggConfig(num_shares=1.0, threshold=0.5).counts(2) == (2, 2)
    assert SecAggConfig(num_shares=1.0, threshold=0.5).counts(3) == (3, 2)
    assert SecAggConfig(num_shares=1.0, threshold=1.0).counts(5) == (5, 5)
    assert SecAggConfig(num_shares=20, threshold=11).counts(20) == (20, 11)
    assert SecAggConfig(num_shares=30, threshold=3).counts(2) == (2, 2)  # capped
    for n in range(2, 200):
        shares, t = SecAggConfig().counts(n)  # the defaults hold for every n >= 2
        assert shares == n and n / 2 < t <= n and t >= 2
    with pytest.raises(ConfigError, match="must exceed half"):
        SecAggConfig(num_shares=1.0, threshold=10).counts(20)
    with pytest.raises(ConfigError, match="at least 2"):
        SecAggConfig(num_shares=5, threshold=1)
    with pytest.raises(ConfigError, match="sparse SecAgg"):
        SecAggConfig(num_shares=5, threshold=3).counts(20)
    with pytest.raises(ConfigError, match="sparse SecAgg"):
        SecAggConfig(num_shares=0.5)
    with pytest.raises(ConfigError, match="in \\[0.5, 1\\]"):
        SecAggConfig(threshold=0.4)
    with pytest.raises(ConfigError, match="secagg.clip-range"):
        SecAggConfig(clip_range=0.0)
    with pytest.raises(ConfigError, match="must be of type int or float"):
        SecAggConfig.from_run_config(
            {
                "secagg.enabled": True,
                "secagg.num-shares": "all",
                "secagg.threshold": 0.5,
                "secagg.clip-range": 1.0,
                "secagg.quantization-bits": 24,
            }
        )


def test_a_threshold_below_two_is_refused_since_one_share_is_the_secret() -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, num_shares=3, threshold=1)
    assert all(combine([share]) == secret for share in shares)  # why it is refused
    with pytest.raises(ProtocolError, match="threshold must be more than half"):
        _params(3, t=1)


def test_a_site_answers_one_unmask_request_only() -> None:
    """The classic attack on SecAgg: ask a site to unmask twice, first calling node
    u a survivor (for the shares of b_u), then dropped (for the shares of s_u); with
    both, y_u alone unmasks. The site answers once, also after a round trip through
    its stored state; any later request is refused."""
    p, server, clients = _shared(4, share=True, t=3)
    for u in p.nodes:
        x = _input(p, shift=u)
        server.receive_masked(u, clients[u].masked_input(server.inbox(u), x))
    everyone = set(p.nodes)
    b_shares, s_shares = _unmask(clients, everyone, set())[100]
    assert set(b_shares) == everyone and not s_shares
    for site in (clients[100], ClientSession.from_json(clients[100].to_json())):
        with pytest.raises(ProtocolError, match="out of order"):
            site.confirm(everyone - {103}, {103})
        with pytest.raises(ProtocolError, match="out of order"):
            site.unmask({})  # the same request, replayed
