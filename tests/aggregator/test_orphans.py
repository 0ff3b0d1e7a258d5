"""Workers SIGKILLed in the middle of a round, of a sharded round and of an upload's completion leave
bytes no record names; the sweep removes them once they are older than its grace period, and nothing
else: not what a record names, not a young object, not anything outside FMA's own folders."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aggregator_support import submit, wait_for, weights

from fma_core.weights import to_bytes
from fma_django import ingestion, services
from fma_django.housekeeping import housekeeping_sweep, orphan_grace_seconds
from fma_django.models import (
    ModelAggregate,
    ModelArtifact,
    ModelUpdate,
    UpdateStatus,
    UploadSession,
    UploadState,
)
from fma_django.storage import weight_store

pytestmark = pytest.mark.usefixtures("require_postgresql")

SHAPES = {"embedding": (64, 32), "hidden": (32, 32), "head": (32, 4), "bias": (4,)}  # 12.8 kB
LEASE = 4  # the workers' FMA_LEASE_SECONDS
OLD = time.time() - 30 * 86400  # a month ago: old enough for any grace period


def files(root: Path) -> set[str]:
    """Every file and symbolic link under ``root``, as paths relative to it; links are not followed."""
    found = set()
    for folder, dirs, names in os.walk(root):
        links = [name for name in dirs if (Path(folder) / name).is_symlink()]
        found |= {(Path(folder) / name).relative_to(root).as_posix() for name in [*names, *links]}
    return found


def empty_folders(root: Path) -> set[str]:
    return {
        Path(folder).relative_to(root).as_posix()
        for folder, dirs, names in os.walk(root)
        if not dirs and not names and Path(folder) != root
    }


def referenced_keys() -> set[str]:
    return {
        *ModelUpdate.objects.filter(weights_removed_on__isnull=True).values_list("weights_key", flat=True),
        *ModelAggregate.objects.values_list("weights_key", flat=True),
        *ModelAggregate.objects.exclude(state_key=None).values_list("state_key", flat=True),
        *ModelArtifact.objects.values_list("weights_key", flat=True),
    }


def killed_in_the_middle(processes, args: list[str], env: dict[str, str], marker: Path) -> None:
    process = processes(args, env)
    wait_for(
        marker.exists, what=f"the process to reach the spot where it is killed; its log:\n{process.output()}"
    )
    process.kill()


def open_upload(experiment) -> UploadSession:
    """An upload session with every part received, waiting for its complete."""
    client, _ = services.client_register(experiment=experiment)
    data = to_bytes(weights(7.0, SHAPES))
    session, _ = ingestion.upload_start(
        experiment=experiment, client=client, size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    for number in range(1, session.part_count + 1):
        offset, size = session.part_range(number)
        ingestion.upload_part_put(
            session=session, number=number, stream=io.BytesIO(data[offset : offset + size]), length=size
        )
    return session


def plant_foreign_files(root: Path, outside: Path) -> list[Path]:
    """Old files FMA did not write: beside its folder, in a folder of the weights directory that is not
    one of FMA's, under a name no key can have, and behind a symbolic link to a folder outside."""
    outside.mkdir()
    foreign = [
        outside / "beside.safetensors",
        root / "backups" / "2026.tar",
        root / "updates" / ".DS_Store",
        root / "lost+found" / "block",
    ]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not FMA's")
    (root / "updates" / "elsewhere").symlink_to(outside, target_is_directory=True)
    foreign.append(root / "updates" / "elsewhere")
    for path in foreign:
        os.utime(path, (OLD, OLD), follow_symlinks=False)
    return foreign


def test_the_sweep_removes_what_killed_workers_left_and_only_that(
    settings, make_experiment, worker_env, processes, weights_dir, tmp_path, caplog
):
    settings.FMA_UPLOAD_TIMEOUT_SECONDS = 2
    settings.FMA_ORPHAN_SWEEP_SECONDS = 0
    grace = orphan_grace_seconds(lease_seconds=LEASE)
    assert grace == LEASE  # the longer of the lease and the upload sessions' lifetime
    root = Path(weights_dir)
    policy = {"policy": "require_x_updates", "x": 3}
    whole = make_experiment(name="whole", shapes=SHAPES, round_policy=policy)
    sharded = make_experiment(name="sharded", shapes=SHAPES, round_policy=policy)
    for experiment in (whole, sharded):
        for value in (1.0, 2.0, 3.0):
            submit(experiment, value, shapes=SHAPES)
    session = open_upload(make_experiment(name="uploads", shapes=SHAPES))

    def pausing(where: str, **extra: str) -> tuple[dict[str, str], Path]:
        marker = tmp_path / f"reached-{where}"
        env = worker_env(
            FMA_WEIGHT_STORE="slow_store.PausingWeightStore",
            FMA_TEST_PAUSE_AT=where,
            FMA_TEST_MARKER=str(marker),
            FMA_LEASE_SECONDS=str(LEASE),
            **extra,
        )
        return env, marker

    run_once = [sys.executable, "-m", "fma_aggregator.cli", "run-once", "--experiment"]
    killed_in_the_middle(processes, [*run_once, str(whole.pk)], *pausing("aggregate"))
    killed_in_the_middle(processes, [*run_once, str(sharded.pk)], *pausing("shard", FMA_SHARD_BYTES="6000"))
    complete = [sys.executable, str(Path(__file__).with_name("complete_upload.py")), str(session.uuid)]
    killed_in_the_middle(processes, complete, *pausing("scan"))
    last_write = time.time()

    # What the dead left: a partial aggregate in .tmp, a sharded round's upload, manifest and first
    # record, and the joined object of an upload whose complete never recorded its update.
    [partial] = (root / ".tmp").iterdir()
    assert partial.stat().st_size > 8192
    [upload_folder] = (root / ".uploads").iterdir()
    shard_files = {f for f in files(root) if f.startswith(f"shards/{sharded.pk}/")}
    assert {Path(f).name for f in shard_files} == {"shards.json", "0.json"}
    session.refresh_from_db()
    assert session.state == UploadState.OPEN
    assert (root / session.weights_key).is_file()
    orphans = {session.weights_key, *shard_files}
    orphan_bytes = sum((root / key).stat().st_size for key in orphans)
    partial_bytes = partial.stat().st_size
    foreign = plant_foreign_files(root, tmp_path / "outside")

    # Once the dead claims' leases have been expired for a grace period, and their bytes are as old:
    wait_for(lambda: time.time() > last_write + LEASE + grace + 0.5, what="the grace period", timeout=60)
    now = time.time()
    young = weight_store().put(f"updates/{whole.pk}/young.safetensors", io.BytesIO(b"written just now"))
    young_temporary = root / ".tmp" / "young-upload"
    young_temporary.write_bytes(b"still arriving")
    with caplog.at_level(logging.INFO):
        done = housekeeping_sweep(lease_seconds=LEASE, now=datetime.fromtimestamp(now, UTC))

    assert done["uploads_expired"] == 1
    assert done["orphans_removed"] == len(orphans) + 2  # and the sharded round's upload, and the partial
    assert re.search(
        rf"{len(orphans)} objects \({orphan_bytes:,} bytes\), 1 unfinished uploads \([\d,]+ bytes\), "
        rf"1 leftovers of interrupted writes \({partial_bytes:,} bytes\)",
        caplog.text,
    ), caplog.text
    young_files = {young.key, ".tmp/young-upload"}
    foreign_files = {p.relative_to(root).as_posix() for p in foreign if p.is_relative_to(root)}
    assert files(root) - foreign_files - young_files == referenced_keys()
    assert not upload_folder.exists()
    assert not partial.exists()
    assert all("/" not in folder for folder in empty_folders(root))  # only the top-level ones stay
    assert young_temporary.exists()
    assert weight_store().exists(young.key)
    for path in foreign:
        assert path.exists(), path

    # The rounds whose workers died are taken over and committed, each update counted once.
    survivor = [sys.executable, "-m", "fma_aggregator.cli", "run-once"]
    result = processes(survivor, worker_env(FMA_SHARD_BYTES="6000"))
    assert result.proc.wait(timeout=180) == 0, result.output()
    for experiment in (whole, sharded):
        [aggregate] = ModelAggregate.objects.filter(experiment=experiment)
        assert set(ModelUpdate.objects.filter(experiment=experiment).values_list("status", "aggregate")) == {
            (UpdateStatus.CONSUMED, aggregate.pk)
        }
    assert files(root) - foreign_files - young_files == referenced_keys()
