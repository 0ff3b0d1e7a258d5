"""How fast fma-core aggregates, against baselines measured in the same run.

N updates × P float32 parameters in 10 tensors (default N=100, P=10M; ``--quick``: N=20, P=2M).
Measured side by side, each the best of several runs:

- the read floor (``read_floor``): ``a.sum()`` of every block of the same bytes, on one thread and
  on as many threads as the aggregator uses (``threads``, every core by default), from memory and
  from the files (each block read with ``os.preadv``, then summed): what reading each update once
  costs, and nothing more;
- fma-core ``fedavg`` and ``mean`` over arrays in memory, and ``fedavg`` over safetensors files on
  disk (in the page cache), each with its ratio to the all-core read of the same bytes from the same
  place (``*_ratio_vs_read_all``);
- ``fedavg`` over the same files read as deltas on one base model (``DeltaReader``), the base
  shared by every delta of the round (``SharedBases``: read once per block) against each delta
  reading its own copy of the base, as rounds did before;
- the server optimizers ``fedavgm``, ``fedadam``, ``fedyogi``, ``fedadagrad`` over the same arrays in
  memory, read as each update's change (deltas), with a current model and last round's state (a
  second round), each next to fedavg and the all-core read in the same interleaved runs: its
  throughput as a ratio of fedavg's and of the read's (it also reads the current model and the
  state, and writes both), and its peak extra memory beyond its outputs (the new model and the new
  state);
- ``fedavg`` over the same files with each update's norm, cosine and distance to the aggregate
  measured in the same pass (``fma_core.update_stats``: the blocks kept while the aggregate's is
  computed, the current model read for the reference), against the same round without, interleaved;
- Flower's ``flwr.server.strategy.aggregate.aggregate`` (weighted copies of every update);
- the robust rules ``krum`` and ``bulyan`` at N = 20 and N = 100 updates (``--robust-updates``) of
  P_r = min(P, 1M) parameters (``--robust-params``), f = ⌊(N − 3)/4⌋ (the most Bulyan allows), the
  prepare pass (pairwise distances, selection) included, next to Flower's ``aggregate_krum`` and
  ``aggregate_bulyan`` on the same updates. Flower's Bulyan recomputes every distance at each of its
  θ = N − 2f selections (O(θ·N²·P)): above N = 20 it runs on the updates' first tensor(s), at most
  100k parameters, and its rate is per byte like the others. Peak memory: tracemalloc's, beyond the
  inputs (the result included);
- the original FMA's method: JSON lists parsed, ``np.average`` per layer, ``.tolist()``.
  It is ~100× slower and needs ~30 bytes of Python objects per parameter, so it runs on a
  sample (at most 5 updates × 200k parameters) and its rate is per byte like the others.

Throughput is GB/s of float32 update bytes consumed; the methods compared with each other run
interleaved, each the best of ``--repeat`` runs, so a change in the machine's load hits them alike.
Each ratio to the read floor is also given per CPU second (``*_ratio_vs_read_all_cpu``: the least
CPU time of all the process's threads, the floor's over the method's): how much work each byte
costs, which other jobs on the machine move much less than the wall time. Peak extra memory is
what fedavg allocates beyond its inputs (tracemalloc, which sees numpy's buffers), next to the
model size; for a server optimizer, what it allocates beyond its inputs and its outputs (the new
model and the new state).

    python benchmarks/aggregate.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from read_floor import file_read, memory_read

from fma_core.aggregators import UpdateInput, canonical_order, create_aggregator
from fma_core.aggregators.base import Aggregator, RoundContext, ServerState, Target
from fma_core.update_stats import Measure
from fma_core.weights import ArrayReader, TensorSpec, open_weights, write_file
from fma_core.weights.delta import DeltaReader, SharedBases

TENSORS = 10
FMA_SAMPLE_UPDATES = 5
FMA_SAMPLE_PARAMS = 200_000
ROBUST_PARAMS = 1_000_000
ROBUST_UPDATES = (20, 100)
FLOWER_BULYAN_PARAMS = 100_000  # above 20 updates: Flower's Bulyan is O(θ·N²·P)
SERVER_OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")


def make_updates(count: int, params: int, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    rng = np.random.default_rng(seed)
    per_tensor = params // TENSORS
    updates = [
        {f"layer{t}.weight": rng.random(per_tensor, dtype=np.float32) - 0.5 for t in range(TENSORS)}
        for _ in range(count)
    ]
    num_examples = rng.integers(10, 1000, size=count).tolist()
    return updates, num_examples


def best_time(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def interleaved(
    runs: dict[str, Callable[[], object]], repeat: int, cpu: dict[str, float] | None = None
) -> dict[str, float]:
    """Each run's best seconds over ``repeat`` rounds of all of them, one after the other; into ``cpu``,
    each run's least CPU seconds (every thread of this process)."""
    seconds = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            run()
            seconds[name] = min(seconds[name], time.perf_counter() - started)
            if cpu is not None:
                cpu[name] = min(cpu.get(name, float("inf")), time.process_time() - cpu_started)
    return seconds


def flower(updates: list[dict[str, np.ndarray]], num_examples: list[int]) -> object:
    from flwr.server.strategy.aggregate import aggregate

    return aggregate([(list(u.values()), n) for u, n in zip(updates, num_examples, strict=True)])


def original_fma(payloads: list[str]) -> list[object]:
    """``average_layers`` of the original FMA, starting from the JSON it stored."""
    data = [json.loads(p) for p in payloads]
    return [np.average([u[layer] for u in data], axis=0).tolist() for layer in range(len(data[0]))]


def inputs_in_memory(updates: list[dict[str, np.ndarray]], num_examples: list[int]) -> list[UpdateInput]:
    return [
        UpdateInput(str(i), f"{i:064x}", n, lambda u=u: ArrayReader(u))
        for i, (u, n) in enumerate(zip(updates, num_examples, strict=True))
    ]


def inputs_on_disk(paths: list[Path], num_examples: list[int]) -> list[UpdateInput]:
    return [
        UpdateInput(str(i), f"{i:064x}", n, lambda p=p: open_weights(p))
        for i, (p, n) in enumerate(zip(paths, num_examples, strict=True))
    ]


def files_round(
    aggregator: Aggregator, inputs: list[UpdateInput], spec: TensorSpec, parent: Path, *, measured: bool
) -> None:
    """One round's aggregation over files, with its current model; ``measured``: each update's figures too."""
    out = {t.name: np.empty(t.size, t.numpy_dtype) for t in spec}
    context = RoundContext(parent=lambda: open_weights(parent))
    targets = [Target(t, 0, t.size, out[t.name]) for t in spec]
    aggregator.aggregate_into(inputs, targets, context, Measure() if measured else None)


def deltas_on_disk(
    paths: list[Path], num_examples: list[int], base: Path, *, shared: bool
) -> list[UpdateInput]:
    """The files read as deltas on ``base``: one shared reader of it, or one per delta."""
    bases = SharedBases(open_weights)
    open_base = (lambda: bases.open(str(base))) if shared else (lambda: open_weights(base))
    return [
        UpdateInput(str(i), f"{i:064x}", n, lambda p=p: DeltaReader(open_weights(p), open_base()))
        for i, (p, n) in enumerate(zip(paths, num_examples, strict=True))
    ]


def changes_in_memory(updates: list[dict[str, np.ndarray]], num_examples: list[int]) -> list[UpdateInput]:
    """The arrays as deltas: each is its own change (``open_change``), as a server optimizer reads it."""
    return [
        UpdateInput(str(i), f"{i:064x}", n, lambda u=u: ArrayReader(u), lambda u=u: ArrayReader(u))
        for i, (u, n) in enumerate(zip(updates, num_examples, strict=True))
    ]


def optimizer_round(
    aggregator: Aggregator, spec: TensorSpec, parent: dict[str, np.ndarray]
) -> Callable[[list[UpdateInput]], None]:
    """A second round of ``aggregator``: the current model and last round's state in memory, the new
    model and the new state written into arrays allocated by the round (counted in its memory)."""
    rng = np.random.default_rng(3)
    state = {  # second moments are non-negative
        f"{name}/{info.name}": np.abs(rng.random(info.size, dtype=np.float32) - 0.5)
        for name in aggregator.state_tensors
        for info in spec
    }
    context = RoundContext(
        round_number=2,
        parent=lambda: ArrayReader(parent),
        state=ServerState(aggregator.name, {"rounds": 1}, lambda: ArrayReader(state)),
    )

    def run_round(inputs: list[UpdateInput]) -> None:
        targets = []
        for info in spec:
            outs = {name: np.empty(info.size, np.float32) for name in aggregator.state_tensors}
            targets.append(Target(info, 0, info.size, np.empty(info.size, np.float32), outs))
        aggregator.aggregate_into(inputs, targets, context)

    return run_round


def run_optimizers(
    updates: list[dict[str, np.ndarray]], num_examples: list[int], spec: TensorSpec, repeat: int
) -> dict[str, float | int]:
    """Each server optimizer's seconds and peak extra memory, and fedavg's and the all-core read's seconds
    in the same runs."""
    fedavg = create_aggregator("fedavg")
    in_memory = inputs_in_memory(updates, num_examples)
    changes = changes_in_memory(updates, num_examples)
    parent = make_updates(1, sum(info.size for info in spec), seed=4)[0][0]
    rounds = {name: optimizer_round(create_aggregator(name), spec, parent) for name in SERVER_OPTIMIZERS}
    seconds = interleaved(
        {
            "read_all": memory_read([a for u in updates for a in u.values()], fedavg.threads),
            "fedavg": lambda: fedavg.aggregate(in_memory, spec),
            **{name: lambda r=run_round: r(changes) for name, run_round in rounds.items()},
        },
        repeat,
        cpu := {},
    )
    figures: dict[str, float | int] = {}
    for name, run_round in rounds.items():
        tracemalloc.start()
        run_round(changes)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        outputs = spec.nbytes * (1 + len(create_aggregator(name).state_tensors))
        figures[f"{name}_ratio_vs_fedavg"] = _significant(seconds["fedavg"] / seconds[name])
        figures[f"{name}_ratio_vs_read_all"] = _significant(seconds["read_all"] / seconds[name])
        figures[f"{name}_ratio_vs_read_all_cpu"] = _significant(cpu["read_all"] / cpu[name])
        figures[f"{name}_peak_extra_bytes"] = peak - outputs  # beyond the new model and state
        figures[f"{name}_state_bytes"] = outputs - spec.nbytes
    return figures


def robust_round(name: str, f: int, inputs: list[UpdateInput], spec: TensorSpec) -> Callable[[], object]:
    """One round of a robust rule as the engine runs it: the prepare pass, then the aggregation."""
    aggregator = create_aggregator(name, {"f": f})
    ordered = canonical_order(inputs)

    def run_round() -> object:
        prepared = aggregator.prepare(ordered, spec, RoundContext())
        return aggregator.aggregate(ordered, spec, RoundContext(prepared=prepared))

    return run_round


def peak_of(run: Callable[[], object]) -> int:
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def run_robust(counts: tuple[int, ...], params: int, repeat: int) -> dict[str, float | int]:
    """Krum and Bulyan (prepare pass included) and Flower's on the same updates: GB/s and peak memory."""
    from flwr.server.strategy import aggregate as flower_krum_bulyan

    figures: dict[str, float | int] = {"robust_params": params}
    for count in counts:
        updates, num_examples = make_updates(count, params, seed=5)
        spec = TensorSpec.from_weights(updates[0])
        total = count * spec.nbytes
        f = (count - 3) // 4
        results = [(list(u.values()), n) for u, n in zip(updates, num_examples, strict=True)]
        sample = max(1, min(TENSORS, FLOWER_BULYAN_PARAMS * TENSORS // params)) if count > 20 else TENSORS
        sampled = [(weights[:sample], n) for weights, n in results]
        sampled_bytes = count * sum(w.nbytes for w in sampled[0][0])
        runs = {
            "krum": (robust_round("krum", f, inputs_in_memory(updates, num_examples), spec), total),
            "bulyan": (robust_round("bulyan", f, inputs_in_memory(updates, num_examples), spec), total),
            "flower_krum": (lambda r=results, f=f: flower_krum_bulyan.aggregate_krum(r, f, 0), total),
            "flower_bulyan": (
                lambda s=sampled, f=f: flower_krum_bulyan.aggregate_bulyan(
                    list(s), f, flower_krum_bulyan.aggregate_krum, to_keep=0
                ),
                sampled_bytes,
            ),
        }
        for name, (run_round, consumed) in runs.items():
            seconds = best_time(run_round, repeat if not name.startswith("flower") else 1)
            figures[f"{name}_n{count}_gbps"] = _significant(consumed / seconds / 1e9)
            figures[f"{name}_n{count}_peak_bytes"] = peak_of(run_round)
        figures[f"robust_n{count}_f"] = f
        figures[f"robust_n{count}_model_bytes"] = spec.nbytes
        figures[f"flower_bulyan_n{count}_params"] = sum(w.size for w in sampled[0][0])
        for name in ("krum", "bulyan"):
            figures[f"{name}_n{count}_ratio_vs_flower"] = _significant(
                figures[f"{name}_n{count}_gbps"] / figures[f"flower_{name}_n{count}_gbps"]
            )
    return figures


def run(
    count: int,
    params: int,
    repeat: int,
    robust: tuple[tuple[int, ...], int] = (ROBUST_UPDATES, ROBUST_PARAMS),
) -> dict[str, float | int]:
    updates, num_examples = make_updates(count, params)
    spec = TensorSpec.from_weights(updates[0])
    model_bytes = spec.nbytes
    total_bytes = count * model_bytes
    fedavg = create_aggregator("fedavg")
    mean = create_aggregator("mean")
    threads = fedavg.threads
    in_memory = inputs_in_memory(updates, num_examples)
    arrays = [array for update in updates for array in update.values()]
    cpu: dict[str, float] = {}
    seconds = interleaved(
        {
            "read": memory_read(arrays, 1),
            "read_all": memory_read(arrays, threads),
            "fedavg": lambda: fedavg.aggregate(in_memory, spec),
            "mean": lambda: mean.aggregate(in_memory, spec),
        },
        repeat,
        cpu,
    )

    tracemalloc.start()
    fedavg.aggregate(in_memory, spec)
    peak_extra = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    flower_s = best_time(lambda: flower(updates, num_examples), max(1, repeat // 2))

    with tempfile.TemporaryDirectory(prefix="fma-bench-") as tmp:
        paths = []
        for i, update in enumerate(updates):
            paths.append(Path(tmp) / f"update-{i}.safetensors")
            write_file(update, paths[-1])
        seconds |= interleaved(
            {
                "files_read": file_read(paths, model_bytes, 1),
                "files_read_all": file_read(paths, model_bytes, threads),
                "fedavg_files": lambda: fedavg.aggregate(inputs_on_disk(paths, num_examples), spec),
            },
            repeat,
            cpu,
        )
        base = Path(tmp) / "base.safetensors"
        write_file(make_updates(1, params, seed=2)[0][0], base)
        deltas = interleaved(
            {
                shared: lambda s=shared: fedavg.aggregate(
                    deltas_on_disk(paths, num_examples, base, shared=s), spec
                )
                for shared in (True, False)
            },
            repeat,
        )
        shared_s, separate_s = deltas[True], deltas[False]
        measured = interleaved(
            {
                m: lambda m=m: files_round(
                    fedavg, inputs_on_disk(paths, num_examples), spec, base, measured=m
                )
                for m in (False, True)
            },
            repeat,
        )
        plain_s, measured_s = measured[False], measured[True]

    optimizers = run_optimizers(updates, num_examples, spec, repeat)
    robust_counts, robust_params = robust
    robust_figures = run_robust(robust_counts, robust_params, repeat)

    sample_n, sample_p = min(count, FMA_SAMPLE_UPDATES), min(params, FMA_SAMPLE_PARAMS)
    sample, _ = make_updates(sample_n, sample_p, seed=1)
    payloads = [json.dumps([a.tolist() for a in u.values()]) for u in sample]
    fma_s = best_time(lambda: original_fma(payloads), 1)
    fma_bytes = sample_n * TensorSpec.from_weights(sample[0]).nbytes

    gbps = {
        **{f"{name}_gbps": total_bytes / s / 1e9 for name, s in seconds.items()},
        "deltas_shared_base_gbps": total_bytes / shared_s / 1e9,
        "deltas_base_per_delta_gbps": total_bytes / separate_s / 1e9,
        "files_plain_gbps": total_bytes / plain_s / 1e9,
        "files_measured_gbps": total_bytes / measured_s / 1e9,
        "flower_gbps": total_bytes / flower_s / 1e9,
        "fma_gbps": fma_bytes / fma_s / 1e9,
    }
    return {
        **{k: _significant(v) for k, v in gbps.items()},
        **{
            f"{name}_ratio_vs_read_all{kind}": _significant(measured[floor] / measured[name])
            for name, floor in (
                ("fedavg", "read_all"),
                ("mean", "read_all"),
                ("fedavg_files", "files_read_all"),
            )
            for kind, measured in (("", seconds), ("_cpu", cpu))
        },
        "ratio_vs_flower": _significant(gbps["fedavg_gbps"] / gbps["flower_gbps"]),
        "ratio_vs_fma": _significant(gbps["fedavg_gbps"] / gbps["fma_gbps"]),
        "ratio_shared_base": _significant(
            gbps["deltas_shared_base_gbps"] / gbps["deltas_base_per_delta_gbps"]
        ),
        "ratio_measured": _significant(gbps["files_measured_gbps"] / gbps["files_plain_gbps"]),
        "peak_extra_bytes": peak_extra,
        **optimizers,
        **robust_figures,
        "robust_updates": ",".join(map(str, robust_counts)),
        "model_bytes": model_bytes,
        "updates": count,
        "params": params,
        "threads": threads,
        "fma_sample": f"{sample_n}x{sample_p}",
    }


def _significant(value: float) -> float:
    """Four significant digits: readable, and a small rate is never rounded to zero."""
    return float(f"{value:.4g}")


def table(result: dict[str, float | int]) -> str:
    threads = result["threads"]
    rows = [
        ("read floor: a.sum() of each block, 1 thread", result["read_gbps"], ""),
        (f"read floor: a.sum() of each block, {threads} threads", result["read_all_gbps"], "1.00×"),
        (
            "fma-core fedavg, arrays in memory",
            result["fedavg_gbps"],
            f"{result['fedavg_ratio_vs_read_all']:.2f}× the {threads}-thread read "
            f"({result['fedavg_ratio_vs_read_all_cpu']:.2f}× per CPU second)",
        ),
        (
            "fma-core mean, arrays in memory",
            result["mean_gbps"],
            f"{result['mean_ratio_vs_read_all']:.2f}× the {threads}-thread read "
            f"({result['mean_ratio_vs_read_all_cpu']:.2f}× per CPU second)",
        ),
        ("files read floor: preadv + a.sum(), 1 thread", result["files_read_gbps"], ""),
        (f"files read floor: preadv + a.sum(), {threads} threads", result["files_read_all_gbps"], "1.00×"),
        (
            "fma-core fedavg, safetensors files",
            result["fedavg_files_gbps"],
            f"{result['fedavg_files_ratio_vs_read_all']:.2f}× the {threads}-thread files read "
            f"({result['fedavg_files_ratio_vs_read_all_cpu']:.2f}× per CPU second)",
        ),
        (
            "fedavg, the files as deltas, base shared",
            result["deltas_shared_base_gbps"],
            f"{result['ratio_shared_base']:.2f}× the base read per delta",
        ),
        ("fedavg, the files as deltas, base per delta", result["deltas_base_per_delta_gbps"], ""),
        (
            "fedavg, files + each update's norm/cosine/distance",
            result["files_measured_gbps"],
            f"{result['ratio_measured']:.2f}× the same round without",
        ),
        ("fedavg, files, the same round without", result["files_plain_gbps"], ""),
        ("Flower aggregate()", result["flower_gbps"], f"fedavg is {result['ratio_vs_flower']:.1f}× faster"),
        (
            f"original FMA JSON method ({result['fma_sample']})",
            result["fma_gbps"],
            f"fedavg is {result['ratio_vs_fma']:.0f}× faster",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        f"Aggregating {result['updates']} updates × {result['params']:,} float32 parameters "
        f"({result['model_bytes'] / 1e6:.0f} MB each), {result['threads']} thread(s)",
        "",
        f"{'method':<{width}}  {'GB/s':>8}  comparison",
        f"{'-' * width}  {'-' * 8}  {'-' * 28}",
    ]
    lines += [f"{name:<{width}}  {rate:>8.3f}  {note}" for name, rate, note in rows]
    lines += [
        "",
        f"peak extra memory of fedavg: {result['peak_extra_bytes'] / 1e6:.1f} MB "
        f"= {result['peak_extra_bytes'] / result['model_bytes']:.2f}× the model",
        "",
        "server optimizers (updates read as changes, with the current model and last round's state):",
        f"{'aggregator':<12}  {'vs fedavg':>9}  {'vs read':>8}  {'per CPU s':>9}  "
        "peak extra memory beyond the new model and state",
    ]
    for name in SERVER_OPTIMIZERS:
        extra = result[f"{name}_peak_extra_bytes"]
        lines.append(
            f"{name:<12}  {result[f'{name}_ratio_vs_fedavg']:>8.2f}×  {result[f'{name}_ratio_vs_read_all']:>7.2f}×  "
            f"{result[f'{name}_ratio_vs_read_all_cpu']:>8.2f}×  {extra / 1e6:.1f} MB "
            f"= {extra / result['model_bytes']:.2f}× the model (state: "
            f"{result[f'{name}_state_bytes'] / result['model_bytes']:.0f}× the model)"
        )
    lines += ["", *robust_table(result)]
    return "\n".join(lines)


def robust_table(result: dict[str, float | int]) -> list[str]:
    lines = [
        f"robust rules, prepare pass included ({result['robust_params']:,} float32 parameters per update, "
        "f = ⌊(N − 3)/4⌋):",
        f"{'N':>4} {'f':>3}  {'rule':<14}  {'GB/s':>8}  {'peak memory':>22}  comparison",
    ]
    for count in str(result["robust_updates"]).split(","):
        model = result[f"robust_n{count}_model_bytes"]
        for name in ("krum", "flower_krum", "bulyan", "flower_bulyan"):
            label = name.replace("flower_", "Flower ")
            peak = result[f"{name}_n{count}_peak_bytes"]
            note = ""
            if not name.startswith("flower"):
                note = f"{result[f'{name}_n{count}_ratio_vs_flower']:.1f}× Flower's"
            elif (
                name == "flower_bulyan" and result[f"flower_bulyan_n{count}_params"] < result["robust_params"]
            ):
                note = f"on {result[f'flower_bulyan_n{count}_params']:,} of the parameters"
            lines.append(
                f"{count:>4} {result[f'robust_n{count}_f']:>3}  {label:<14}  "
                f"{result[f'{name}_n{count}_gbps']:>8.3f}  {peak / 1e6:>9.1f} MB = {peak / model:>5.1f}× model  {note}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=20 updates × P=2M parameters")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--updates", type=int, help="number of updates N")
    parser.add_argument("--params", type=int, help="parameters per update P")
    parser.add_argument("--repeat", type=int, help="runs per method (the best one counts)")
    parser.add_argument(
        "--robust-updates",
        default=",".join(map(str, ROBUST_UPDATES)),
        help="numbers of updates N for krum and bulyan, comma-separated (default 20,100; each at least 7)",
    )
    parser.add_argument(
        "--robust-params", type=int, help="parameters per update for krum and bulyan (default min(P, 1M))"
    )
    args = parser.parse_args(argv)
    count = args.updates or (20 if args.quick else 100)
    params = args.params or (2_000_000 if args.quick else 10_000_000)
    repeat = args.repeat or (9 if args.quick else 3)
    if params < TENSORS:
        parser.error(f"--params must be at least {TENSORS}")
    try:
        robust_counts = tuple(int(n) for n in args.robust_updates.split(","))
    except ValueError:
        parser.error(
            f"--robust-updates must be whole numbers separated by commas, not {args.robust_updates!r}"
        )
    if min(robust_counts) < 7:
        parser.error("--robust-updates: bulyan with f = 1 needs at least 7 updates")
    robust_params = args.robust_params or min(params, ROBUST_PARAMS)
    if robust_params < TENSORS:
        parser.error(f"--robust-params must be at least {TENSORS}")
    if not args.json:
        print(f"fma-core aggregation benchmark (pid {os.getpid()}) ...", file=sys.stderr)
    result = run(count, params, repeat, (robust_counts, robust_params))
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
