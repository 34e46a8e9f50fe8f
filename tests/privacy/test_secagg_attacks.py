"""Secure aggregation against a curious or lying coordinator (issue 12's red-team
review): the mask PRG, the randomness and key derivation, Shamir sharing, the share
encryption, and the parameters and weights the server sends.

Each test plays the server. It takes what the protocol hands it (public keys,
ciphertexts, masked uploads, the shares it is sent, the secrets it legitimately
reconstructs), adds what it may know besides (the run's seed, t - 1 colluding
sites), and checks that no single site's secret or input follows. The three
tests at the end play a *lying* server (issue 14): an empty inbox, split unmask
requests and server-chosen weights; each is the attack plus the claim that the
site's input stays hidden.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterable
from typing import cast

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedshield.models import flatten_state, state_to_arrays
from fedshield.privacy.secagg import (
    ClientSession,
    ProtocolError,
    Quantizer,
    SecAggAborted,
    SecAggConfig,
    SecAggParams,
    ServerSession,
    masks,
    modulus_bits,
)
from fedshield.privacy.secagg import client as secagg_client
from fedshield.privacy.secagg.primitives import (
    DecryptionError,
    agree,
    decrypt,
    encrypt,
    expand_mask,
    new_keypair,
)
from fedshield.privacy.secagg.shamir import PRIME, combine, split
from fedshield.server.rounds import collect_replies
from fedshield.server.secagg import SecureSum, prepare_setup, secure_sum
from tests.server.test_secagg_round import GLOBAL, NODES, SECAGG, SiteGrid, _delta

QUANT = Quantizer(clip_range=1.0, bits=16)
RUN_SEED = 1234  # a seed the coordinator knows (it sent it in the run config)


# -- helpers: one round of the protocol, without Flower --------------------------------


def _params(n: int, *, t: int, num_shares: int | None = None) -> SecAggParams:
    return SecAggParams(
        session=os.urandom(16),
        nodes=tuple(range(100, 100 + n)),
        num_shares=num_shares or n,
        threshold=t,
        quantizer=QUANT,
        vector_length=32,
    )


def _shared(
    n: int, *, t: int
) -> tuple[SecAggParams, ServerSession, dict[int, ClientSession]]:
    """Params, server and sites after stages 1-2: keys advertised, shares sent."""
    p = _params(n, t=t)
    server = ServerSession(p)
    sites = {u: ClientSession(u, p) for u in p.nodes}
    for u in p.nodes:
        server.receive_keys(u, *sites[u].advertise())
    roster = server.roster()
    for u in p.nodes:
        server.receive_shares(u, sites[u].share_keys(roster))
    return p, server, sites


def _input(p: SecAggParams, node: int) -> np.ndarray:
    """A site's quantized input: small values in a pattern, far from uniform."""
    return ((np.arange(p.vector_length) * 7 + node) % 200).astype(p.dtype)


def _finish(
    p: SecAggParams,
    server: ServerSession,
    sites: dict[int, ClientSession],
    *,
    late: Iterable[int] = (),
) -> None:
    """Stages 3-4, honestly; the ``late`` sites' uploads never arrive. Checks that
    the round sums the other sites' inputs."""
    for u in p.nodes:
        y = sites[u].masked_input(server.inbox(u), _input(p, u))
        if u not in late:
            server.receive_masked(u, y)
    survivors, dropped = server.unmask_request()
    for v in sorted(survivors):
        server.receive_tags(v, sites[v].confirm(survivors, dropped))
    for v in sorted(survivors):
        server.receive_unmask(v, *sites[v].unmask(server.tags_for(v)))
    total, in_sum = server.aggregate()
    assert in_sum == set(p.nodes) - set(late)
    assert np.array_equal(total, sum(_input(p, u) for u in in_sum))


def _strip(
    p: SecAggParams,
    keys: dict[int, tuple[bytes, bytes]],
    u: int,
    y: np.ndarray,
    *,
    self_seed: bytes | None = None,
    mask_key: bytes | None = None,
    peers: Iterable[int] = (),
) -> np.ndarray:
    """y_u minus the masks the server can compute: PRG(b_u) from the self seed, and
    sign(u, v) PRG(s_uv) for each v in ``peers`` from u's mask key and the public
    mask keys ``keys``; mod 2^k, as uint64."""
    k = p.modulus_bits
    rest = y.astype(np.uint64)
    if self_seed is not None:
        rest = rest - expand_mask(self_seed, p.vector_length, bits=k)
    if mask_key is not None:
        for v in sorted(peers):
            seed = masks.mask_seed(mask_key, keys[v][1], p.session)
            mask = expand_mask(seed, p.vector_length, bits=k).astype(np.uint64)
            rest = rest - mask if u < v else rest + mask
    return rest & np.uint64((1 << k) - 1)


def _assert_hidden(recovered: np.ndarray, x: np.ndarray) -> None:
    """What the server recovered is not the input: a masked value mod 2^k (k >= 18)
    equals a given input value with probability <= 2^-18, so 3 of 32 coordinates
    never agree by chance (< 2^-40)."""
    same = np.count_nonzero(recovered.astype(np.uint64) == x.astype(np.uint64))
    assert same <= 2, f"the server reads the site's input ({same} of {len(x)} values)"


def _rebuild(shares: Iterable[tuple[int, bytes]]) -> bytes | None:
    """Interpolate the shares at 0; None where that is no 32-byte secret."""
    try:
        return combine(list(shares))
    except ValueError:
        return None


# -- mask expansion and randomness -----------------------------------------------------


def test_flipping_any_seed_byte_changes_almost_every_mask_value() -> None:
    """A PRG keyed by part of the seed (Flower 1.41 seeds ``np.random.RandomState``
    with 32 bits) lets the server search a self mask. Every one of the 32 seed bytes
    must reach the mask: flipping one bit of any byte changes almost every value."""
    seed = bytes(range(32))
    base = expand_mask(seed, 64, bits=20)
    for i in range(32):
        flipped = bytearray(seed)
        flipped[i] ^= 0x01
        other = expand_mask(bytes(flipped), 64, bits=20)
        assert np.count_nonzero(other != base) > 60, f"seed byte {i} barely matters"


def _draw_round_secrets() -> list[bytes]:
    """A site process whose global generators were seeded with the run's seed (a
    value the coordinator knows) draws its key pairs and self-mask seed."""
    random.seed(RUN_SEED)
    np.random.seed(RUN_SEED)
    torch.manual_seed(RUN_SEED)
    p = _params(2, t=2)
    site, peer = ClientSession(100, p), ClientSession(101, p)
    roster = {100: site.advertise(), 101: peer.advertise()}
    site.share_keys(roster)
    return [site.c_private, site.s_private, site.self_seed, new_keypair().private]


def test_keys_and_self_seeds_do_not_follow_seeded_global_generators() -> None:
    """The server that knows the run's seed replays ``random``, numpy and torch: if
    the keys came from them it would recompute every site's secrets. Two draws from
    identically seeded generators give all-different keys and self seeds."""
    drawn = _draw_round_secrets() + _draw_round_secrets()
    assert len(set(drawn)) == len(drawn)


# -- key derivation --------------------------------------------------------------------


def test_agreed_key_is_hkdf_of_the_x25519_secret_under_its_label() -> None:
    """Known answer, computed independently of :func:`agree`: HKDF-SHA256 over the
    X25519 secret with the label as info. The raw X25519 output would serve every
    purpose and every round its key pairs are used in."""
    a, b = new_keypair(), new_keypair()
    shared = X25519PrivateKey.from_private_bytes(a.private).exchange(
        X25519PublicKey.from_public_bytes(b.public)
    )
    label = b"fedshield-secagg/test"
    expected = HKDF(hashes.SHA256(), length=32, salt=None, info=label).derive(shared)
    assert agree(a.private, b.public, label=label) == expected
    assert agree(b.private, a.public, label=label) == expected  # symmetric
    assert agree(a.private, b.public, label=b"other") != expected


def test_mask_and_share_keys_differ_by_purpose_and_by_session() -> None:
    """One key pair, two sessions: the mask seeds and the share keys are four
    different keys, none of them the raw X25519 secret. A mask seed shared across
    rounds would let the server subtract two uploads and read the inputs'
    difference."""
    a, b = new_keypair(), new_keypair()
    shared = X25519PrivateKey.from_private_bytes(a.private).exchange(
        X25519PublicKey.from_public_bytes(b.public)
    )
    sessions = (bytes(16), bytes([1]) * 16)
    keys = {
        derive(a.private, b.public, session)
        for derive in (masks.mask_seed, secagg_client._share_key)
        for session in sessions
    }
    assert len(keys) == 4 and shared not in keys


@pytest.mark.usefixtures("task_identity")
def test_each_round_gets_a_fresh_random_session_id() -> None:
    """The session id binds masks, share ciphertexts and stage messages to one
    round; a constant one lets the server replay them across rounds."""
    sessions = []
    for _ in range(2):
        train = [
            Message(content=RecordDict({}), dst_node_id=n, message_type="train")
            for n in (1, 2, 3)
        ]
        messages, params = prepare_setup(train, cfg=SecAggConfig(), global_state=GLOBAL)
        sent = SecAggParams.from_json(
            str(messages[0].content.config_records["secagg"]["params"])
        )
        assert sent.session == params.session
        sessions.append(params.session)
    assert sessions[0] != sessions[1] and bytes(16) not in sessions


# -- the self-mask seed and its sharing ------------------------------------------------


def test_a_cloned_site_draws_a_different_self_seed() -> None:
    """The server reconstructs s_u of every site it calls dropped, so b_u may follow
    from nothing the site shares with it. Two copies of one site (same key pairs,
    session and roster) draw different self-mask seeds, neither of them a key the
    site's mask key agrees on."""
    p = _params(3, t=2)
    server = ServerSession(p)
    sites = {u: ClientSession(u, p) for u in p.nodes}
    for u in p.nodes:
        server.receive_keys(u, *sites[u].advertise())
    roster = server.roster()
    twin = ClientSession.from_json(sites[100].to_json())
    sites[100].share_keys(roster)
    twin.share_keys(roster)
    assert sites[100].self_seed != twin.self_seed
    derived = {
        derive(sites[100].s_private, pk, p.session)
        for derive in (masks.mask_seed, secagg_client._share_key)
        for pair in roster.values()
        for pk in pair
    }
    assert sites[100].self_seed not in derived


@pytest.mark.parametrize(("n", "t"), [(3, 2), (5, 3), (7, 4)])
def test_t_minus_1_holders_cannot_rebuild_a_secret_and_t_holders_can(
    n: int, t: int
) -> None:
    """The shares each holder actually received in a real round: any t - 1 holders
    (colluding with the server) together interpolate neither b_u nor s_u of any
    site; any t of them rebuild both (the round needs that)."""
    p, server, sites = _shared(n, t=t)
    _finish(p, server, sites)
    for u in p.nodes:
        for kind, secret in ((0, sites[u].self_seed), (1, sites[u].s_private)):
            held = [
                (p.share_index(u, v), sites[v].shares[u][kind]) for v in p.holders(u)
            ]
            for few in itertools.combinations(held, t - 1):
                assert _rebuild(few) != secret, (u, kind, [x for x, _ in few])
            for enough in itertools.combinations(held, t):
                assert _rebuild(enough) == secret, (u, kind, [x for x, _ in enough])


def _coefficients(shares: list[tuple[int, bytes]]) -> list[int]:
    """The coefficients (constant term first) of the polynomial of degree
    len(shares) - 1 through ``shares``, by Gauss-Jordan elimination mod p."""
    t = len(shares)
    rows = [
        [pow(x, j, PRIME) for j in range(t)] + [int.from_bytes(y, "big")]
        for x, y in shares
    ]
    for col in range(t):
        pivot = next(r for r in range(col, t) if rows[r][col])
        rows[col], rows[pivot] = rows[pivot], rows[col]
        inverse = pow(rows[col][col], -1, PRIME)
        rows[col] = [v * inverse % PRIME for v in rows[col]]
        for r in range(t):
            if r != col and rows[r][col]:
                f = rows[r][col]
                rows[r] = [
                    (a - f * b) % PRIME for a, b in zip(rows[r], rows[col], strict=True)
                ]
    return [rows[j][t] for j in range(t)]


def test_sharing_polynomial_has_full_size_distinct_random_coefficients() -> None:
    """Recovered from t shares, the sharing polynomial has the secret as constant
    term and t - 1 random coefficients that are full-size field elements (> 400
    bits; a uniform one is shorter with probability 2^-121) and pairwise distinct.
    A repeated or short coefficient lets fewer than t shares solve for the
    secret. The other shares lie on the same polynomial (its degree is t - 1)."""
    secret = bytes(range(32))
    t = 5
    shares = split(secret, num_shares=7, threshold=t)
    coefficients = _coefficients(shares[:t])
    assert coefficients[0] == int.from_bytes(secret, "big")
    random_part = coefficients[1:]
    assert all(c.bit_length() > 400 for c in random_part), random_part
    assert len(set(random_part)) == len(random_part)
    for x, y in shares[t:]:
        value = sum(c * pow(x, j, PRIME) for j, c in enumerate(coefficients)) % PRIME
        assert value == int.from_bytes(y, "big")


# -- share encryption ------------------------------------------------------------------


def test_a_dropped_sites_rebuilt_mask_key_opens_none_of_its_share_ciphertexts() -> None:
    """The server legitimately rebuilds s_u of a site whose upload came late. No key
    it can derive from s_u and any public key of the round (HKDF under either label,
    or the raw X25519 secret) decrypts a share u sent or received: otherwise t
    'dropped' neighbours of a survivor v would hand it s_v, and b_v reads y_v."""
    p, server, sites = _shared(4, t=3)
    late = 103
    _finish(p, server, sites, late=[late])
    s_u = combine(list(server.revealed_s[late].items()))
    assert s_u == sites[late].s_private  # what the server legitimately holds

    def raw(private: bytes, public: bytes, _session: bytes) -> bytes:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )

    derivations: list[Callable[[bytes, bytes, bytes], bytes]] = [
        secagg_client._share_key,
        masks.mask_seed,
        raw,
    ]
    for v in set(p.nodes) - {late}:
        ciphertexts = [
            (server.ciphertexts[late][v], late, v),
            (server.ciphertexts[v][late], v, late),
        ]
        for public in server.keys[v]:
            for derive in derivations:
                key = derive(s_u, public, p.session)
                for ciphertext, src, dst in ciphertexts:
                    with pytest.raises(DecryptionError):
                        decrypt(
                            key,
                            ciphertext,
                            aad=secagg_client._aad(sites[late].round_digest, src, dst),
                        )


def test_no_two_share_ciphertexts_reuse_a_nonce() -> None:
    """The share key of (u, v) is symmetric, so with a repeated nonce u->v and v->u
    reuse one keystream and their XOR is the XOR of the shares. One message
    encrypted twice differs, and no two ciphertexts of a round share a nonce."""
    key = os.urandom(32)
    assert encrypt(key, b"x" * 40, aad=b"") != encrypt(key, b"x" * 40, aad=b"")
    _, server, _ = _shared(4, t=3)
    nonces = [ct[:12] for cts in server.ciphertexts.values() for ct in cts.values()]
    assert len(nonces) == 12 and len(set(nonces)) == len(nonces)


# -- the server's parameters and weights -----------------------------------------------


def _sum_with_weights(weights: dict[int, float]) -> SecureSum:
    """A round through the real client mods (``SiteGrid``) in which the server adds
    its own per-site ``weight`` to every masked-input request (the field sites
    read before issue 14)."""
    grid = cast(Grid, SiteGrid(NODES))  # an in-memory stand-in
    train = [
        Message(
            content=RecordDict(
                {
                    "arrays": state_to_arrays(GLOBAL),
                    "config": ConfigRecord({"server-round": 1}),
                }
            ),
            dst_node_id=n,
            message_type="train",
        )
        for n in NODES
    ]
    messages, params = prepare_setup(train, cfg=SECAGG, global_state=GLOBAL)

    def collect(batch: list[Message]) -> list[Message]:
        for msg in batch:
            record = msg.content.config_records["secagg"]
            if record["stage"] == "masked-input":
                record["weight"] = weights[msg.metadata.dst_node_id]
        return collect_replies(grid, batch, timeout=5.0, progress=lambda d, t: None)

    return secure_sum(
        setup_replies=collect(messages),
        params=params,
        node_ids=NODES,
        collect=collect,
        group="1",
        template=GLOBAL,
    )


@pytest.mark.usefixtures("task_identity")
def test_the_server_sends_the_configured_threshold_and_share_count() -> None:
    """The parameters every site receives are ``secagg.*`` resolved for the round's
    sites, not a looser threshold or a smaller ring the server prefers."""
    train = [
        Message(content=RecordDict({}), dst_node_id=n, message_type="train")
        for n in range(8)
    ]
    for cfg, expected in (
        (SecAggConfig(num_shares=1.0, threshold=0.75), (8, 7)),
        (SecAggConfig(num_shares=8, threshold=5), (8, 5)),
    ):
        messages, params = prepare_setup(train, cfg=cfg, global_state=GLOBAL)
        sent = {
            SecAggParams.from_json(str(m.content.config_records["secagg"]["params"]))
            for m in messages
        }
        assert sent == {params}
        assert (params.num_shares, params.threshold) == cfg.counts(8) == expected


def test_modulus_is_sized_for_all_sites_not_one_neighbourhood() -> None:
    """Under SecAgg+ a site masks with a ring of 3 holders, but the server sums all
    10 uploads: the modulus must hold 10 maximal inputs without wrapping."""
    p = SecAggParams(
        session=bytes(16),
        nodes=tuple(range(10)),
        num_shares=3,
        threshold=2,
        quantizer=QUANT,
        vector_length=4,
    )
    assert p.holders_count == 3
    assert p.modulus_bits == modulus_bits(QUANT.bits, 10)
    assert 10 * QUANT.levels < 1 << p.modulus_bits


# -- a lying server (issue 14): attacks the sites now refuse ---------------------------


def test_a_site_given_an_empty_inbox_keeps_its_input_hidden() -> None:
    """The server forwards no share to site u, so u masks with no neighbour: y_u =
    x_u + PRG(b_u). It then calls u a survivor, collects t shares of b_u in the
    unmask step and strips the self mask. The site must refuse to mask, or what is
    left must still hide x_u."""
    p, server, sites = _shared(4, t=3)
    u = 103
    try:
        y_u = sites[u].masked_input({}, _input(p, u))
    except (ProtocolError, SecAggAborted):
        return  # the site refused to upload: nothing to read
    for v in set(p.nodes) - {u}:
        sites[v].masked_input(server.inbox(v), _input(p, v))
    b_shares = {}
    everyone = set(p.nodes)
    tags = {v: sites[v].confirm(everyone, set()) for v in p.nodes}
    for v in p.nodes:
        revealed, _ = sites[v].unmask({w: tags[w][v] for w in p.nodes if w != v})
        b_shares[p.share_index(u, v)] = revealed[u]
    b_u = combine(list(b_shares.items()))
    _assert_hidden(_strip(p, server.keys, u, y_u, self_seed=b_u), _input(p, u))


def test_split_unmask_requests_keep_a_survivors_input_hidden() -> None:
    """Site u uploads. The server tells u and one holder 'everyone survived' (two
    shares of b_u) and the other two holders 'u dropped' (two shares of s_u); each
    request alone is well formed. With t = 2 of 4 it would hold both secrets and
    strip every mask from y_u; a threshold of half the holders is therefore refused,
    and with t = 3 no holder reveals anything: fewer than t survivors confirm either
    story (the consistency stage)."""
    with pytest.raises(ProtocolError, match="more than half"):
        _params(4, t=2)
    p, server, sites = _shared(4, t=3)
    u = 103
    ys = {v: sites[v].masked_input(server.inbox(v), _input(p, v)) for v in p.nodes}
    everyone = set(p.nodes)
    requests = {
        100: (everyone, set()),
        u: (everyone, set()),
        101: (everyone - {u}, {u}),
        102: (everyone - {u}, {u}),
    }
    b_shares, s_shares = {}, {}
    tags = {}
    for v, (survivors, dropped) in requests.items():
        try:
            tags[v] = sites[v].confirm(survivors, dropped)
        except (ProtocolError, SecAggAborted):
            continue  # this holder saw through the lie
    for v in tags:
        try:
            b_out, s_out = sites[v].unmask(
                {w: t[v] for w, t in tags.items() if w != v and v in t}
            )
        except (ProtocolError, SecAggAborted):
            continue  # this holder saw through the lie
        x = p.share_index(u, v)
        if u in b_out:
            b_shares[x] = b_out[u]
        if u in s_out:
            s_shares[x] = s_out[u]
    if len(b_shares) < p.threshold or len(s_shares) < p.threshold:
        return  # too few shares of one secret: y_u stays masked
    rest = _strip(
        p,
        server.keys,
        u,
        ys[u],
        self_seed=combine(list(b_shares.items())),
        mask_key=combine(list(s_shares.items())),
        peers=set(p.holders(u)) - {u},
    )
    _assert_hidden(rest, _input(p, u))


@pytest.mark.usefixtures("task_identity")
def test_server_chosen_weights_do_not_isolate_one_sites_update() -> None:
    """Without client-level DP the server sends weight 1 to site 22 and 1e-9 to the
    others: were the sites to apply it, the unmasked 'sum' would be site 22's
    update. Sites mask their unweighted update, whatever the server adds to its
    messages: the sum is that of all four updates."""
    result = _sum_with_weights({11: 1e-9, 22: 1.0, 33: 1e-9, 44: 1e-9})
    leaked = flatten_state(result.total)
    target = flatten_state(_delta(22))
    assert not torch.allclose(leaked, target, atol=1e-4), (
        "the server reads site 22's update from the 'sum'"
    )
    everyone = sum(flatten_state(_delta(n)) for n in NODES)
    assert torch.allclose(leaked, everyone, atol=1e-5)


def test_sites_handed_different_parameters_cannot_read_each_others_shares() -> None:
    """The server sends one site a lower threshold than the others (the same session
    and sites otherwise): were shares bound to the session alone, that site would
    share its secrets t'-out-of-n among holders who think the round is t-out-of-n.
    Every share ciphertext is bound to the hash of all the parameters, so the site
    with other parameters cannot open its peers' shares and the round stops."""
    p = _params(5, t=4)
    lower = SecAggParams(
        session=p.session,
        nodes=p.nodes,
        num_shares=p.num_shares,
        threshold=3,
        quantizer=p.quantizer,
        vector_length=p.vector_length,
    )
    assert lower.transcript != p.transcript
    server = ServerSession(p)
    sites = {u: ClientSession(u, lower if u == 104 else p) for u in p.nodes}
    for u in p.nodes:
        server.receive_keys(u, *sites[u].advertise())
    roster = server.roster()
    for u in p.nodes:
        server.receive_shares(u, sites[u].share_keys(roster))
    with pytest.raises(ProtocolError, match="fails authentication"):
        sites[104].masked_input(server.inbox(104), _input(lower, 104))
    with pytest.raises(ProtocolError, match="fails authentication"):
        sites[100].masked_input(server.inbox(100), _input(p, 100))


def test_a_view_confirmed_by_too_few_survivors_reveals_nothing() -> None:
    """5 sites, t = 3. The server tells u, v and w 'everyone survived' and the
    other two 'u dropped'. Each holder reveals only when t survivors tagged its
    own view: two agree with each story at most, and forged tags do not count."""
    p, server, sites = _shared(5, t=3)
    for v in p.nodes:
        sites[v].masked_input(server.inbox(v), _input(p, v))
    everyone = set(p.nodes)
    u = 100
    views = {
        100: (everyone, set()),
        101: (everyone, set()),
        102: (everyone - {u}, {u}),
        103: (everyone - {u}, {u}),
        104: (everyone - {u}, {u}),
    }
    tags = {v: sites[v].confirm(*views[v]) for v in p.nodes}
    # 100 and 101 hold one story (2 < t), and a forged tag from 102 is refused
    forged = {101: tags[101][100], 102: os.urandom(32)}
    with pytest.raises(SecAggAborted, match="confirmed this site's view"):
        sites[100].unmask(forged)
    # the other story has t = 3 confirmations: those holders reveal, but only
    # s_u (u dropped), never b_u: no secret of u is rebuilt in both forms
    b_out, s_out = sites[102].unmask({w: tags[w][102] for w in (103, 104)})
    assert u not in b_out and u in s_out
    with pytest.raises(SecAggAborted, match="confirmed this site's view"):
        sites[101].unmask({100: tags[100][101]})


def test_a_site_confirms_no_view_that_counts_sites_it_did_not_mask_with() -> None:
    """5 sites, t = 3. The server forwards to u only the shares of v1 and v2 (t - 1,
    enough to upload), so u masks with them alone; it then tells everyone, the same
    view, that v1 and v2 dropped: with b_u and their mask keys it would strip every
    mask from y_u. u sees that the view counts w1 and w2, whose shares never reached
    it, and confirms nothing; the other survivors are then too few to reveal."""
    p, server, sites = _shared(5, t=3)
    u, v1, v2 = 100, 101, 102
    inbox = {src: ct for src, ct in server.inbox(u).items() if src in (v1, v2)}
    sites[u].masked_input(inbox, _input(p, u))
    for v in set(p.nodes) - {u}:
        sites[v].masked_input(server.inbox(v), _input(p, v))
    survivors, dropped = {u, 103, 104}, {v1, v2}
    with pytest.raises(SecAggAborted, match="received the shares of"):
        sites[u].confirm(survivors, dropped)
    tags = {v: sites[v].confirm(survivors, dropped) for v in (103, 104)}
    with pytest.raises(SecAggAborted, match="confirmed this site's view"):
        sites[103].unmask({104: tags[104][103]})


def test_sites_handed_different_rosters_cannot_read_each_others_shares() -> None:
    """The server hands site 104 a roster in which 103's mask key is one of its own
    (so that it could compute their pairwise mask). Every share ciphertext is bound
    to the round's roster: 104's shares to the others, and theirs to it, fail to
    authenticate, and the round stops before any upload."""
    p = _params(5, t=3)
    server = ServerSession(p)
    sites = {u: ClientSession(u, p) for u in p.nodes}
    for u in p.nodes:
        server.receive_keys(u, *sites[u].advertise())
    roster = server.roster()
    forged = dict(roster)
    forged[103] = (roster[103][0], new_keypair().public)
    for u in p.nodes:
        server.receive_shares(u, sites[u].share_keys(forged if u == 104 else roster))
    with pytest.raises(ProtocolError, match="fails authentication"):
        sites[104].masked_input(server.inbox(104), _input(p, 104))
    with pytest.raises(ProtocolError, match="fails authentication"):
        sites[100].masked_input(server.inbox(100), _input(p, 100))
