"""The server's side of the unmasking: rebuild the secrets the shares allow, remove the masks.

The server sums the masked inputs of the survivors (uint64, wrapping modulo 2^64). In that sum the
pairwise masks between two survivors cancel; what remains is each survivor's self mask and, for each
client that shared keys but sent no input, the pairwise masks its surviving neighbours added for it.
From the revealed shares the server rebuilds exactly those secrets — a survivor's self-mask seed,
a dropped client's mask key — and nothing else: the clients never reveal both for one client, so no
single input can be unmasked. Below the threshold nothing is rebuilt and :class:`NotEnoughShares`
says whose secret lacked shares.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from fma_core.secagg import crypto, shamir
from fma_core.secagg.client import PublicKeys, Share, pair_seed, pair_sign, self_seed
from fma_core.secagg.field import dequantize_sum
from fma_core.secagg.params import RoundParams


class NotEnoughShares(Exception):
    """The round cannot be unmasked: too few clients remained, or answered, to rebuild a secret."""


class InconsistentShares(Exception):
    """Rebuilt shares do not match what the client advertised: a client sent bad shares."""


class Unmasker:
    """Removes the remaining masks from the survivors' summed input, block by block, and dequantizes."""

    def __init__(
        self,
        params: RoundParams,
        length: int,
        self_seeds: Sequence[bytes],
        pair_seeds: Sequence[tuple[int, bytes]],
    ):
        self.params = params
        self.length = length  # the update's values, elements 1..length; the weight sum is element 0
        self._self_seeds = list(self_seeds)
        self._pair_seeds = list(pair_seeds)

    def unmask(self, start: int, summed: np.ndarray) -> np.ndarray:
        """Elements ``start ..`` of the unmasked sum (element 0: Σ wᵢ; element 1 + j: value j's Σ wᵢ qᵢ)."""
        out = np.array(summed, dtype=np.uint64, copy=True)
        for seed in self._self_seeds:
            out -= crypto.mask_block(seed, start, out.size)
        for sign, seed in self._pair_seeds:
            mask = crypto.mask_block(seed, start, out.size)
            if sign > 0:
                out -= mask
            else:
                out += mask
        return out

    def weight_sum(self, summed_first: int) -> int:
        """Σ wᵢ from the first element of the masked sum (every block's mean needs it)."""
        total = int(self.unmask(0, np.array([summed_first], dtype=np.uint64))[0])
        if total < 1:
            raise InconsistentShares("the unmasked sum of weights is not positive")
        return total

    def mean(self, start: int, summed: np.ndarray, weight_sum: int) -> np.ndarray:
        """The weighted mean of the survivors' updates over elements ``start ..`` (≥ 1), as float64."""
        return dequantize_sum(self.unmask(start, summed), weight_sum, self.params.field)


def reconstruct_secrets(
    params: RoundParams,
    roster: Mapping[str, PublicKeys],
    shared: Collection[str],
    survivors: Collection[str],
    revealed: Mapping[str, Sequence[Share]],
    length: int,
) -> Unmasker:
    """Rebuild what the survivors' sum needs from the shares revealed at unmasking.

    ``roster``: who advertised keys (stage 1); ``shared``: who sent encrypted shares (stage 2);
    ``survivors``: whose masked input was accepted (stage 3); ``revealed``: each answering survivor's
    shares (stage 4). Raises :class:`NotEnoughShares` when a needed secret has fewer than t shares.
    """
    ids = sorted(roster)
    shared, survivors = set(shared), set(survivors)
    if not survivors <= shared <= set(roster):
        raise ValueError("survivors must have shared keys, and those must have advertised them")
    graph = params.graph(ids)
    t = params.shares_needed(len(ids))
    if len(survivors) < t:
        raise NotEnoughShares(f"{len(survivors)} clients sent masked inputs, at least {t} needed")
    x_of = {c: n + 1 for n, c in enumerate(ids)}
    self_shares: dict[str, dict[int, int]] = {i: {} for i in survivors}
    key_shares: dict[str, dict[int, int]] = {j: {} for j in shared - survivors}
    for revealer, shares in revealed.items():
        if revealer not in survivors:
            continue  # only the survivors were asked
        for share in shares:
            if share.owner not in graph[revealer] or share.owner not in shared:
                continue
            if share.kind == "self_mask" and share.owner in survivors:
                self_shares[share.owner][x_of[revealer]] = shamir.from_bytes(share.value)
            elif share.kind == "mask_key" and share.owner in key_shares:
                key_shares[share.owner][x_of[revealer]] = shamir.from_bytes(share.value)
    seeds = []
    for i in sorted(survivors):
        if len(self_shares[i]) < t:
            raise NotEnoughShares(f"{len(self_shares[i])} shares of a survivor's self mask, {t} needed")
        secret = shamir.combine(self_shares[i], t)
        if secret >= 2 ** (8 * crypto.KEY_BYTES):
            raise InconsistentShares("a rebuilt self-mask seed is out of range")
        seeds.append(self_seed(secret.to_bytes(crypto.KEY_BYTES, "big"), params, i))
    pairs = []
    for j in sorted(key_shares):
        masked_by = sorted(graph[j] & survivors)
        if not masked_by:
            continue  # no survivor added a mask for j
        if len(key_shares[j]) < t:
            raise NotEnoughShares(f"{len(key_shares[j])} shares of a dropped client's mask key, {t} needed")
        secret = shamir.combine(key_shares[j], t)
        if secret >= 2 ** (8 * crypto.KEY_BYTES):
            raise InconsistentShares("a rebuilt mask key is out of range")
        key = crypto.private_from_bytes(secret.to_bytes(crypto.KEY_BYTES, "big"))
        if crypto.public_bytes(key) != roster[j].masking:
            raise InconsistentShares("a rebuilt mask key does not match the key its client advertised")
        for i in masked_by:
            pairs.append((pair_sign(i, j), pair_seed(key, roster[i].masking, params, i, j)))
    return Unmasker(params, length, seeds, pairs)
