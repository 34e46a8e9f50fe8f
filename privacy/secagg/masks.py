"""The masks of SecAgg+, as arithmetic mod 2^k: what a site adds to its input
(stage 3) and what the server removes from the survivors' sum (stage 4).

Site u uploads::

    y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U1} sign(u, v) PRG(s_uv)     (mod 2^k)
    s_uv = HKDF(X25519(s_u^sk, s_v)),  sign = +1 if u < v else -1

where b_u is u's self-mask seed and N(u) its holders other than itself. The
pairwise masks of two survivors cancel in the sum. With U2 the survivors and
D = U1 \\ U2 the sites that dropped after sharing keys, the server, holding b_u of
every u in U2 and s_u^sk of every u in D (each rebuilt from t shares), computes::

    sum_{u in U2} x_u = sum_{u in U2} (y_u - PRG(b_u))
                        - sum_{u in D} sum_{v in N(u) ∩ U2} sign(v, u) PRG(s_uv)

PRG is the ChaCha20 keystream under a 256-bit seed (:func:`.primitives.expand_mask`);
s_uv is bound to the round's session id, so no two rounds share a mask.
"""

from __future__ import annotations

import numpy as np

from .params import SecAggParams
from .primitives import agree, expand_mask

__all__ = ["mask_input", "mask_seed", "reduce_mod", "unmask_sum"]


def mask_seed(private: bytes, peer_public: bytes, session: bytes) -> bytes:
    """s_uv: the pairwise mask seed of two sites in one round (symmetric in u, v)."""
    return agree(private, peer_public, label=b"fedshield-secagg/mask/" + session)


def reduce_mod(y: np.ndarray, bits: int) -> np.ndarray:
    """``y`` mod 2^bits, in place (nothing to do when the dtype is that wide)."""
    width = y.dtype.itemsize * 8
    if bits < width:
        y &= y.dtype.type((1 << bits) - 1)
    return y


def mask_input(
    x: np.ndarray,
    *,
    params: SecAggParams,
    node: int,
    self_seed: bytes,
    mask_private: bytes,
    peer_mask_keys: dict[int, bytes],
) -> np.ndarray:
    """y_u of site ``node``: ``x`` (already of ``params.dtype``) plus its self mask
    PRG(``self_seed``) and a signed pairwise mask with each peer v in
    ``peer_mask_keys`` (v -> s_v, the peers in N(u) ∩ U1), mod 2^k."""
    p = params
    y = x.astype(p.dtype, copy=True)
    y += expand_mask(self_seed, p.vector_length, bits=p.modulus_bits)
    for v in sorted(peer_mask_keys):
        seed = mask_seed(mask_private, peer_mask_keys[v], p.session)
        mask = expand_mask(seed, p.vector_length, bits=p.modulus_bits)
        if node < v:
            y += mask
        else:
            y -= mask
    return reduce_mod(y, p.modulus_bits)


def unmask_sum(
    *,
    params: SecAggParams,
    masked: dict[int, np.ndarray],
    self_seeds: dict[int, bytes],
    dropped_mask_keys: dict[int, bytes],
    mask_keys: dict[int, bytes],
) -> np.ndarray:
    """sum_{u in U2} x_u mod 2^k from the survivors' uploads ``masked`` (u -> y_u),
    their rebuilt self-mask seeds ``self_seeds`` (u -> b_u), the rebuilt mask keys
    of the dropped sites ``dropped_mask_keys`` (u -> s_u^sk, u in D) and the mask
    public keys ``mask_keys`` (v -> s_v) of the survivors."""
    p = params
    survivors = set(masked)
    total = np.zeros(p.vector_length, dtype=p.dtype)
    for node in sorted(survivors):
        total += masked[node]
        total -= expand_mask(self_seeds[node], p.vector_length, bits=p.modulus_bits)
    for u in sorted(dropped_mask_keys):
        s_private = dropped_mask_keys[u]
        # u is in U1, so every neighbour v in U2 masked with u (and vice versa)
        for v in sorted((set(p.holders(u)) - {u}) & survivors):
            seed = mask_seed(s_private, mask_keys[v], p.session)
            mask = expand_mask(seed, p.vector_length, bits=p.modulus_bits)
            if v < u:  # v added +PRG(s_vu); remove it
                total -= mask
            else:
                total += mask
    return reduce_mod(total, p.modulus_bits)
