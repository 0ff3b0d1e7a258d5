"""A client's side of one secure round: keys, shares, the masked input, and what it reveals.

A :class:`ClientSession` lives for one round and refuses anything out of order or inconsistent (a
roster without its own keys, too few neighbours left, a request to reveal both secrets of one
neighbour): an honest client aborts rather than help a server learn one input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from fma_core.secagg import crypto, shamir
from fma_core.secagg.field import Quantizer
from fma_core.secagg.params import RoundParams

SELF_MASK = b"self-mask"
PAIR_MASK = b"pair-mask"
SHARE_KEY = b"share-encryption"


class SecAggAbort(Exception):
    """This client stops taking part in the round; the reason says why (never a secret)."""


@dataclass(frozen=True)
class PublicKeys:
    """What a client advertises: its key for encrypting shares to it, and its key for agreeing masks."""

    encryption: bytes
    masking: bytes

    def __post_init__(self) -> None:
        if len(self.encryption) != crypto.KEY_BYTES or len(self.masking) != crypto.KEY_BYTES:
            raise ValueError("a public key is 32 bytes")
        if self.encryption == self.masking:
            raise ValueError("the two public keys must differ")
        crypto.check_public(self.encryption)
        crypto.check_public(self.masking)


SHARE_KINDS = ("self_mask", "mask_key")
# what a client sends each neighbour at share_keys: its two shares for it, sealed (nonce, text, GCM tag)
SEALED_SHARES_BYTES = crypto.NONCE_BYTES + 2 * shamir.SHARE_BYTES + 16


@dataclass(frozen=True)
class Share:
    """One share revealed at unmasking: whose secret, which one (``self_mask`` or ``mask_key``), y."""

    owner: str
    kind: str
    value: bytes

    def __post_init__(self) -> None:
        # checked when a client sends it, so that a malformed share is refused then (400), not met
        # when the unmasking stage closes and every survivor's round depends on it
        if self.kind not in SHARE_KINDS:
            raise ValueError(f"a share's kind is {' or '.join(SHARE_KINDS)}, not {self.kind[:40]!r}")
        shamir.from_bytes(self.value)  # 66 bytes, in the field


def share_aad(params: RoundParams, sender: str, receiver: str) -> bytes:
    return params.context + f"|share|{sender}|{receiver}".encode()


def pair_sign(own: str, peer: str) -> int:
    """+1 or −1: the lower id adds the pairwise mask, the higher subtracts it, so the pair cancels."""
    return 1 if own < peer else -1


def pair_seed(own_mask_key, peer_masking_public: bytes, params: RoundParams, a: str, b: str) -> bytes:
    low, high = sorted((a, b))
    return crypto.agree(
        own_mask_key, peer_masking_public, params.context, PAIR_MASK + f"|{low}|{high}".encode()
    )


def self_seed(seed_secret: bytes, params: RoundParams, owner: str) -> bytes:
    return crypto.derive(seed_secret, params.context, SELF_MASK + f"|{owner}".encode())


class ClientSession:
    """One client in one round. Call the stages in order: advertise, share_keys, masked_input, unmask."""

    def __init__(self, client_id: str, params: RoundParams):
        self.id = client_id
        self.params = params
        self._encryption_key = crypto.new_private_key()
        self._mask_key = crypto.new_private_key()
        self._seed_secret = os.urandom(crypto.KEY_BYTES)
        self.keys = PublicKeys(crypto.public_bytes(self._encryption_key), crypto.public_bytes(self._mask_key))
        self._roster: dict[str, PublicKeys] | None = None
        self._neighbours: frozenset[str] = frozenset()
        self._received: dict[str, tuple[int, int]] | None = None
        self._masked_with: frozenset[str] | None = None
        self._revealed = False

    # -- stage 1 ---------------------------------------------------------------------------------
    def advertise(self) -> PublicKeys:
        return self.keys

    # -- stage 2 ---------------------------------------------------------------------------------
    def share_keys(self, roster: Mapping[str, PublicKeys]) -> dict[str, bytes]:
        """The encrypted shares of this client's two secrets, one ciphertext per neighbour."""
        if self._roster is not None:
            raise SecAggAbort("keys were already shared this round")
        if roster.get(self.id) != self.keys:
            raise SecAggAbort("the roster does not carry this client's own keys")
        self._roster = dict(roster)
        ids = sorted(roster)
        t = self.params.shares_needed(len(ids))
        self._neighbours = self.params.graph(ids)[self.id]
        if len(ids) < 3 or len(self._neighbours) < t:
            raise SecAggAbort(f"{len(ids)} clients advertised keys; too few to hide any one input")
        x = {j: ids.index(j) + 1 for j in self._neighbours}
        mask_shares = shamir.split(int.from_bytes(crypto.private_bytes(self._mask_key), "big"), t, x.values())
        seed_shares = shamir.split(int.from_bytes(self._seed_secret, "big"), t, x.values())
        out = {}
        for j in sorted(self._neighbours):
            key = crypto.agree(self._encryption_key, roster[j].encryption, self.params.context, SHARE_KEY)
            plaintext = shamir.to_bytes(mask_shares[x[j]]) + shamir.to_bytes(seed_shares[x[j]])
            out[j] = crypto.seal(key, plaintext, share_aad(self.params, self.id, j))
        return out

    # -- stage 3 ---------------------------------------------------------------------------------
    def receive_shares(self, inbox: Mapping[str, bytes]) -> None:
        """Decrypt the shares the neighbours who finished stage 2 sent to this client."""
        if self._roster is None or self._received is not None:
            raise SecAggAbort("shares arrive once, after keys were shared")
        unknown = set(inbox) - self._neighbours
        if unknown:
            raise SecAggAbort("shares from clients that are not this client's neighbours")
        t = self.params.shares_needed(len(self._roster))
        if len(inbox) < t:
            raise SecAggAbort(f"{len(inbox)} neighbours shared keys, {t} needed")
        received = {}
        for j, ciphertext in inbox.items():
            key = crypto.agree(
                self._encryption_key, self._roster[j].encryption, self.params.context, SHARE_KEY
            )
            try:
                plaintext = crypto.open_sealed(key, ciphertext, share_aad(self.params, j, self.id))
            except crypto.DecryptionFailed as exc:
                raise SecAggAbort(f"the shares from {j} do not authenticate") from exc
            n = shamir.SHARE_BYTES
            received[j] = (shamir.from_bytes(plaintext[:n]), shamir.from_bytes(plaintext[n:]))
        self._received = received
        self._masked_with = frozenset(received)

    def masked_input(
        self,
        blocks: Iterable[np.ndarray],
        num_examples: int,
        rng: np.random.Generator | None = None,
    ) -> Iterator[np.ndarray]:
        """The masked vector, block by block: one element holding the weight, then the encoded update.

        The weight comes first so a server reading the masked inputs forward has the sum of weights
        before the first block it dequantizes.

        Pairwise masks are added only for the neighbours whose shares arrived (they may be dropped
        later: their masks can then be rebuilt from shares); the self mask always.
        """
        if self._masked_with is None:
            raise SecAggAbort("the masked input needs the neighbours' shares first")
        quantizer = Quantizer(self.params.field, num_examples, rng)
        own_seed = self_seed(self._seed_secret, self.params, self.id)
        pair = [
            (
                pair_sign(self.id, j),
                pair_seed(self._mask_key, self._roster[j].masking, self.params, self.id, j),
            )
            for j in sorted(self._masked_with)
        ]
        start = 0

        def masked(encoded: np.ndarray) -> np.ndarray:
            nonlocal start
            out = encoded + crypto.mask_block(own_seed, start, encoded.size)
            for sign, seed in pair:
                mask = crypto.mask_block(seed, start, encoded.size)
                if sign > 0:
                    out += mask
                else:
                    out -= mask
            start += encoded.size
            return out

        yield masked(np.array([quantizer.weight], dtype=np.uint64))
        for block in blocks:
            yield masked(quantizer.encode(block))

    # -- stage 4 ---------------------------------------------------------------------------------
    def unmask(self, survivors: Iterable[str]) -> list[Share]:
        """Per neighbour that shared keys: its self-mask share if it sent an input, else its mask-key share."""
        if self._received is None:
            raise SecAggAbort("nothing to reveal before shares were received")
        if self._revealed:
            raise SecAggAbort("shares are revealed once per round")
        survivors = set(survivors)
        if self.id not in survivors:
            raise SecAggAbort("the server says this client sent no input")
        if not survivors <= set(self._roster):
            raise SecAggAbort("survivors that never advertised keys")
        t = self.params.shares_needed(len(self._roster))
        alive = len(survivors & (self._neighbours | {self.id}))
        if alive < t:
            raise SecAggAbort(f"{alive} of this client's neighbourhood sent inputs, {t} needed")
        self._revealed = True
        out = []
        for j, (mask_share, seed_share) in sorted(self._received.items()):
            if j in survivors:
                out.append(Share(j, "self_mask", shamir.to_bytes(seed_share)))
            else:
                out.append(Share(j, "mask_key", shamir.to_bytes(mask_share)))
        return out
