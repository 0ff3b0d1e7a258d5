"""The sweep on S3 (SeaweedFS's S3 gateway: moto dates every multipart upload to one fixed day in 2010,
so a young upload would look old there): what crashed workers and requests leave under FMA's prefix,
objects and unfinished multipart uploads no record references, goes once older than the grace
period; what a record names, what is young and whatever lies outside FMA's prefix stays."""

from __future__ import annotations

import hashlib
import io
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import User

from fma_core.rounds import RoundEngine
from fma_core.weights import to_bytes
from fma_django import ingestion, services
from fma_django.housekeeping import housekeeping_sweep
from fma_django.models import ModelAggregate, ModelArtifact, ModelUpdate, UploadSession, UploadState
from fma_django.storage import weight_store
from fma_django.store import DjangoMetadataStore
from fma_s3.store import MIN_PART_SIZE

from .conftest import ON_SEAWEEDFS, REGION

pytestmark = ON_SEAWEEDFS
LEASE = 1
GRACE = 2  # FMA_UPLOAD_TIMEOUT_SECONDS below, longer than the lease


@pytest.fixture
def on_s3(transactional_db, settings, s3_endpoint: str, bucket: str) -> None:
    settings.FMA_WEIGHT_STORE = "fma_s3.S3WeightStore"
    settings.FMA_WEIGHT_STORE_OPTIONS = {
        "bucket": bucket,
        "prefix": "fma/",
        "region": REGION,
        "endpoint_url": s3_endpoint,
        "addressing_style": "path",
    }
    settings.FMA_UPLOAD_PART_BYTES = MIN_PART_SIZE
    settings.FMA_UPLOAD_TIMEOUT_SECONDS = GRACE
    settings.FMA_ORPHAN_SWEEP_SECONDS = 0
    settings.FMA_AGGREGATOR_RUNNER = "none"


def model(value: float, rows: int = 15_000) -> dict[str, np.ndarray]:
    """12 MB: two shards of at least S3's 5 MiB part."""
    return {"fc.weight": np.full((rows, 200), value, np.float32), "fc.bias": np.zeros(200, np.float32)}


def objects(s3: Any, bucket: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def multipart_uploads(s3: Any, bucket: str) -> set[str]:
    return {upload["Key"] for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def referenced() -> set[str]:
    keys = {
        *ModelUpdate.objects.filter(weights_removed_on__isnull=True).values_list("weights_key", flat=True),
        *ModelAggregate.objects.values_list("weights_key", flat=True),
        *ModelArtifact.objects.values_list("weights_key", flat=True),
    }
    return {f"fma/{key}" for key in keys}


def unfinished_upload(s3: Any, bucket: str, key: str) -> None:
    """A multipart upload with one part, as a ``put`` of a large object that died leaves it."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"part one")


def joined_upload_without_update(experiment) -> UploadSession:
    """An upload session whose complete joined the parts and died before recording the update."""
    client, _ = services.client_register(experiment=experiment)
    data = to_bytes(model(5.0, rows=10))
    session, _ = ingestion.upload_start(
        experiment=experiment, client=client, size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    store = weight_store()
    part = store.put_part(session.weights_key, session.store_upload_id, 1, io.BytesIO(data))
    store.complete_upload(session.weights_key, session.store_upload_id, [part])
    return session


def test_the_sweep_on_s3_removes_old_unreferenced_objects_and_uploads_under_its_prefix_only(
    on_s3, s3, bucket
):
    developer = User.objects.create_user("dev", password="dev-password")
    small = services.experiment_create(
        developer=developer, name="small", open_enrollment=True, initial_model=model(0.0, rows=10)
    )
    large = services.experiment_create(
        developer=developer, name="large", open_enrollment=True, initial_model=model(0.0)
    )
    client, _ = services.client_register(experiment=large)
    ingestion.update_submit(experiment=large, client=client, stream=io.BytesIO(to_bytes(model(1.0))))

    session = joined_upload_without_update(small)
    dead = RoundEngine(DjangoMetadataStore(), weight_store(), lease_seconds=LEASE, shard_bytes=MIN_PART_SIZE)
    plan = dead.start_round(str(large.pk))
    assert len(plan.shards) == 2
    dead.finish_shard(plan, 0)  # then the worker dies: its upload, manifest and first record stay
    unfinished_upload(s3, bucket, f"fma/aggregates/{large.pk}/r7-0123456789abcdef.safetensors")
    weight_store().put(f"artifacts/{small.pk}/never-recorded.safetensors", io.BytesIO(b"orphan"))
    foreign_objects = {"notes.txt", "other/updates/1/x.safetensors", "fma-other/updates/1/x", "fma/notes/a"}
    for key in foreign_objects:
        s3.put_object(Bucket=bucket, Key=key, Body=b"not FMA's")
    foreign_uploads = {"other/aggregates/1/big", "fma-other/updates/1/big"}
    for key in foreign_uploads:
        unfinished_upload(s3, bucket, key)
    shard_objects = {key for key in objects(s3, bucket) if key.startswith(f"fma/shards/{large.pk}/")}
    assert len(shard_objects) == 2
    written = time.time()

    deadline = time.monotonic() + 60
    while time.time() <= written + LEASE + GRACE + 1.1:  # S3 keeps times to the second
        assert time.monotonic() < deadline
        time.sleep(0.1)
    now = time.time()
    young = weight_store().put(f"updates/{small.pk}/young.safetensors", io.BytesIO(b"record coming"))
    unfinished_upload(s3, bucket, f"fma/updates/{small.pk}/young-upload.safetensors")
    done = housekeeping_sweep(lease_seconds=LEASE, now=datetime.fromtimestamp(now, UTC))

    assert UploadSession.objects.get(pk=session.pk).state == UploadState.EXPIRED
    assert done["orphans_removed"] == 1 + len(shard_objects) + 1 + 2  # objects, then uploads
    assert objects(s3, bucket) == referenced() | foreign_objects | {f"fma/{young.key}"}
    assert multipart_uploads(s3, bucket) == foreign_uploads | {
        f"fma/updates/{small.pk}/young-upload.safetensors"
    }
