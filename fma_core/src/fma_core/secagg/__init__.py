"""Secure aggregation (SecAgg+): the server learns the sum of the clients' updates and nothing else.

The protocol of Bonawitz et al. (CCS 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning") with the sparse neighbour graph of Bell et al. (CCS 2020, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead"): each client masks its quantized update with one
pairwise mask per neighbour (which cancel in the sum) and a self mask (which the server removes once
the client is known to have sent its input), and Shamir-shares the secrets behind both among its
neighbours so the server can finish the round when clients drop out, as long as at least the
threshold t of each neighbourhood remain.

The four stages, as the client (:class:`~fma_core.secagg.client.ClientSession`) and the server
(:mod:`fma_core.secagg.server`) see them:

1. **advertise keys** — each client sends two X25519 public keys (one to encrypt shares, one to
   agree pairwise masks);
2. **share keys** — the server sends each client the roster of those who advertised; each client
   Shamir-shares its mask key and self-mask seed, encrypting one share to each neighbour;
3. **masked input** — the server hands each client the shares addressed to it; the client sends
   its quantized, weighted update plus the masks, a uniformly random vector modulo 2^64;
4. **unmasking** — the server names who sent an input; each client reveals, per neighbour, the share
   of its self-mask seed (it sent an input) or of its mask key (it did not), never both.

Pure: numpy and ``cryptography`` only, no Django, no I/O, so the server and fma-client run the same
code. Vectors move block by block, so masking and unmasking take memory of a block, not a model.
"""

from fma_core.secagg.client import ClientSession, PublicKeys, SecAggAbort, Share
from fma_core.secagg.coordinator import SecureRound, StageError
from fma_core.secagg.field import FieldParams, Quantizer, dequantize_sum
from fma_core.secagg.graph import neighbour_graph
from fma_core.secagg.params import RoundParams
from fma_core.secagg.server import NotEnoughShares, Unmasker, reconstruct_secrets

__all__ = [
    "ClientSession",
    "FieldParams",
    "NotEnoughShares",
    "PublicKeys",
    "Quantizer",
    "RoundParams",
    "SecAggAbort",
    "SecureRound",
    "Share",
    "StageError",
    "Unmasker",
    "dequantize_sum",
    "neighbour_graph",
    "reconstruct_secrets",
]
