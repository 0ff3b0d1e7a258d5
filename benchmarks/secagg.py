"""What secure aggregation (fma_core.secagg) costs, as ratios to a plain push of the same update.

N clients × P float32 parameters (default N = 10 and 100, P = 1M; ``--quick``: N = 10 and 30,
P = 200k). Both sides are measured in the same run, on the same updates, in memory, protocol only
(no HTTP, no database: the API stages are not built yet, see docs/secure_aggregation.md):

- **client time**: plain = the update serialized to safetensors and hashed (what a push computes
  before sending); secure = the four stages (keys, Shamir shares encrypted to each neighbour,
  decrypting the neighbours' shares, quantizing + masking + serializing + hashing the masked
  vector, revealing shares), mean per client;
- **server time**: plain = the weighted mean of the N float32 updates read from their safetensors
  bytes, block by block; secure = the N masked uint64 vectors read and summed, the secrets rebuilt
  from the shares, the masks removed and the sum dequantized, block by block. ``--drop`` clients
  (default 10%) vanish after sharing keys, so the server also rebuilds their pairwise masks;
- **bytes sent per client**: plain = the safetensors update; secure = the public keys, the
  encrypted shares, the masked vector (uint64: twice float32's bytes) and the revealed shares.

    python benchmarks/secagg.py [--quick] [--json] [--clients 10 100] [--params 1000000] [--drop 0.1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

import numpy as np
from safetensors.numpy import load, save

from fma_core.secagg import ClientSession, FieldParams, RoundParams, reconstruct_secrets

BLOCK = 1 << 16


def plain_round(updates: dict[str, np.ndarray], weights: dict[str, int]) -> dict:
    start = time.perf_counter()
    bodies = {}
    for client, update in updates.items():
        body = save({"w": update})
        hashlib.sha256(body).hexdigest()
        bodies[client] = body
    client_seconds = (time.perf_counter() - start) / len(updates)
    sent = sum(len(b) for b in bodies.values()) / len(bodies)
    start = time.perf_counter()
    arrays = {c: load(b)["w"] for c, b in bodies.items()}
    total_weight = sum(weights.values())
    size = next(iter(arrays.values())).size
    mean = np.empty(size, dtype=np.float32)
    for s in range(0, size, BLOCK):
        acc = np.zeros(min(BLOCK, size - s), dtype=np.float64)
        for c, a in arrays.items():
            acc += a[s : s + BLOCK] * (weights[c] / total_weight)
        mean[s : s + BLOCK] = acc
    server_seconds = time.perf_counter() - start
    return {
        "client_seconds": client_seconds,
        "server_seconds": server_seconds,
        "bytes_per_client": sent,
        "mean": mean,
    }


def secure_round(updates: dict[str, np.ndarray], weights: dict[str, int], drop: float) -> dict:
    field = FieldParams(clip=8.0, bits=24, max_weight=2**20)
    params = RoundParams("bench", 1, graph_seed=1, field=field)
    ids = sorted(updates)
    dropped = set(ids[: int(len(ids) * drop)])
    client_seconds = {c: 0.0 for c in ids}
    sent = {c: 0 for c in ids}

    def timed(client, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        client_seconds[client] += time.perf_counter() - start
        return result

    sessions = {c: ClientSession(c, params) for c in ids}
    roster = {}
    for c in ids:
        roster[c] = timed(c, sessions[c].advertise)
        sent[c] += 64
    outbox = {}
    for c in ids:
        outbox[c] = timed(c, sessions[c].share_keys, roster)
        sent[c] += sum(len(ct) for ct in outbox[c].values())
    bodies = {}
    for c in ids:
        if c in dropped:
            continue

        def masked_body(c=c):
            sessions[c].receive_shares({j: outbox[j][c] for j in outbox if c in outbox[j]})
            blocks = (updates[c][s : s + BLOCK] for s in range(0, updates[c].size, BLOCK))
            vector = np.concatenate(list(sessions[c].masked_input(blocks, weights[c])))
            body = save({"masked": vector})
            hashlib.sha256(body).hexdigest()
            return body

        bodies[c] = timed(c, masked_body)
        sent[c] += len(bodies[c])
    revealed = {}
    for c in bodies:
        revealed[c] = timed(c, sessions[c].unmask, list(bodies))
        sent[c] += sum(len(s.value) + len(s.owner) + 1 for s in revealed[c])
    survivors = list(bodies)
    start = time.perf_counter()
    size = updates[ids[0]].size
    unmasker = reconstruct_secrets(params, roster, ids, survivors, revealed, size)
    vectors = [load(b)["masked"] for b in bodies.values()]
    last = np.zeros(1, dtype=np.uint64)
    for v in vectors:
        last += v[:1]
    weight_sum = unmasker.weight_sum(int(last[0]))
    mean = np.empty(size, dtype=np.float32)
    for s in range(0, size, BLOCK):
        acc = np.zeros(min(BLOCK, size - s), dtype=np.uint64)
        for v in vectors:
            acc += v[1 + s : 1 + s + acc.size]
        mean[s : s + acc.size] = unmasker.mean(1 + s, acc, weight_sum)
    server_seconds = time.perf_counter() - start
    survivors_set = set(survivors)
    return {
        "client_seconds": sum(client_seconds[c] for c in survivors_set) / len(survivors_set),
        "server_seconds": server_seconds,
        "bytes_per_client": sum(sent[c] for c in survivors_set) / len(survivors_set),
        "mean": mean,
        "survivors": survivors,
        "degree": params.degree_for(len(ids)),
        "threshold": params.shares_needed(len(ids)),
        "step": 1 / field.scale,
    }


def run(clients: int, params: int, drop: float) -> dict:
    rng = np.random.default_rng(clients)
    ids = [f"client-{i:04d}" for i in range(clients)]
    updates = {c: rng.normal(0, 0.5, params).astype(np.float32) for c in ids}
    weights = {c: int(rng.integers(100, 1000)) for c in ids}
    secure = secure_round(updates, weights, drop)
    survivors = {c: updates[c] for c in secure["survivors"]}
    plain = plain_round(survivors, {c: weights[c] for c in survivors})
    error = float(np.max(np.abs(secure["mean"].astype(np.float64) - plain["mean"])))
    return {
        "clients": clients,
        "params": params,
        "dropped": clients - len(survivors),
        "degree": secure["degree"],
        "threshold": secure["threshold"],
        "plain": {k: plain[k] for k in ("client_seconds", "server_seconds", "bytes_per_client")},
        "secure": {k: secure[k] for k in ("client_seconds", "server_seconds", "bytes_per_client")},
        "ratio": {k: secure[k] / plain[k] for k in ("client_seconds", "server_seconds", "bytes_per_client")},
        "max_abs_error": error,
        "quantization_step": secure["step"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--clients", type=int, nargs="+")
    parser.add_argument("--params", type=int)
    parser.add_argument("--drop", type=float, default=0.1)
    args = parser.parse_args()
    clients = args.clients or ([10, 30] if args.quick else [10, 100])
    params = args.params or (200_000 if args.quick else 1_000_000)
    rows = [run(n, params, args.drop) for n in clients]
    load_average = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"rows": rows, "load_average": load_average}, indent=2))
        return
    print(f"secure aggregation vs plain push, {params:,} float32 parameters, load {load_average:.1f}")
    print(
        f"{'clients':>7} {'dropped':>7} {'k':>3} {'t':>3} {'client s':>17} {'server s':>17} {'bytes/client':>22} {'max err':>9}"
    )
    for r in rows:
        s, x = r["secure"], r["ratio"]
        print(
            f"{r['clients']:>7} {r['dropped']:>7} {r['degree']:>3} {r['threshold']:>3} "
            f"{s['client_seconds']:>7.3f} ({x['client_seconds']:>5.1f}×) "
            f"{s['server_seconds']:>7.3f} ({x['server_seconds']:>5.1f}×) "
            f"{s['bytes_per_client'] / 1e6:>9.2f} MB ({x['bytes_per_client']:>4.2f}×)  "
            f"{r['max_abs_error']:.1e}"
        )


if __name__ == "__main__":
    main()
