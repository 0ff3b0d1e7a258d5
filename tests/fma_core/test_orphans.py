"""The local store's side of the sweep: what it lists, the leftovers it removes, and ``remove_unreferenced``
keeping what is referenced or young."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from fma_core.connectors import LocalDirectoryWeightStore
from fma_core.connectors import local as local_module
from fma_core.orphans import remove_unreferenced

OLD = time.time() - 30 * 86400


def age(path: Path) -> None:
    os.utime(path, (OLD, OLD), follow_symlinks=False)


def test_listing_shows_fma_keys_only_never_through_a_link(tmp_path):
    store = LocalDirectoryWeightStore(tmp_path / "weights")
    store.put("updates/1/a.safetensors", io.BytesIO(b"a"))
    store.put("aggregates/1/r1-x.safetensors", io.BytesIO(b"bb"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.safetensors").write_bytes(b"not FMA's")
    (store.root / "updates" / "2").symlink_to(outside, target_is_directory=True)
    (store.root / "updates" / "1" / ".hidden").write_bytes(b"no key has this name")
    listed = [(o.key, o.size) for o in store.list_objects("updates/")]
    assert listed == [("updates/1/a.safetensors", 1)]
    assert [o.key for o in store.list_objects("")] == [
        "aggregates/1/r1-x.safetensors",
        "updates/1/a.safetensors",
    ]
    upload = store.start_upload("updates/1/c.safetensors", [3])
    assert [(u.key, u.upload_id) for u in store.list_uploads("updates/")] == [
        ("updates/1/c.safetensors", upload)
    ]
    assert list(store.list_uploads("aggregates/")) == []


def test_only_old_unreferenced_objects_and_uploads_go(tmp_path):
    store = LocalDirectoryWeightStore(tmp_path)
    for key in ("updates/1/kept.safetensors", "updates/1/orphan.safetensors", "updates/1/young.safetensors"):
        store.put(key, io.BytesIO(b"12345"))
    store.put("shards/1/r1-t/0.json", io.BytesIO(b"{}"))
    for key in ("updates/1/kept.safetensors", "updates/1/orphan.safetensors", "shards/1/r1-t/0.json"):
        age(tmp_path / key)
    abandoned = store.start_upload("shards/1/r1-t/abandoned.json", [4])
    store.put_part("shards/1/r1-t/abandoned.json", abandoned, 1, io.BytesIO(b"part"))
    for path in (tmp_path / ".uploads" / abandoned).iterdir():
        age(path)
    age(tmp_path / ".uploads" / abandoned)
    asked = []

    def referenced(keys: list[str]) -> set[str]:
        asked.append(keys)
        return {"updates/1/kept.safetensors"} & set(keys)

    swept = remove_unreferenced(store, referenced=referenced, before=time.time() - 3600)
    assert (swept.objects.count, swept.objects.bytes) == (2, 5 + 2)
    assert (swept.uploads.count, swept.uploads.bytes) == (1, 4)
    assert store.exists("updates/1/kept.safetensors")
    assert store.exists("updates/1/young.safetensors")
    assert not store.exists("updates/1/orphan.safetensors")
    assert not (tmp_path / ".uploads" / abandoned).exists()
    assert not (tmp_path / "shards" / "1").exists()  # its empty folders went too; the key space stays
    assert (tmp_path / "shards").is_dir()
    assert sorted(key for page in asked for key in page) == [
        "shards/1/r1-t/0.json",
        "shards/1/r1-t/abandoned.json",
        "updates/1/kept.safetensors",
        "updates/1/orphan.safetensors",
    ]  # only the old ones were asked about


def test_leftovers_are_old_temporary_files_and_uploads_cut_short(tmp_path):
    store = LocalDirectoryWeightStore(tmp_path)
    (tmp_path / ".tmp" / "killed").write_bytes(b"x" * 10)
    (tmp_path / ".tmp" / "arriving").write_bytes(b"y")
    age(tmp_path / ".tmp" / "killed")
    started = store.start_upload("updates/1/a.safetensors", [1])
    (tmp_path / ".uploads" / started / "key").unlink()  # as a start killed before its last step
    for path in [*(tmp_path / ".uploads" / started).iterdir(), tmp_path / ".uploads" / started]:
        age(path)
    live = store.start_upload("updates/1/b.safetensors", [1])
    for path in [*(tmp_path / ".uploads" / live).iterdir(), tmp_path / ".uploads" / live]:
        age(path)  # old but whole: an upload the sweep asks the records about, not a leftover
    removed = store.remove_leftovers(before=time.time() - 3600)
    assert removed.count == 2
    assert sorted(p.name for p in (tmp_path / ".tmp").iterdir()) == ["arriving"]
    assert [p.name for p in (tmp_path / ".uploads").iterdir()] == [live]


def test_a_put_makes_its_folder_again_if_the_sweep_removes_it_meanwhile(tmp_path, monkeypatch):
    store = LocalDirectoryWeightStore(tmp_path)
    replace = os.replace
    calls = []

    def swept_then_replace(source, target):
        if not calls:
            os.rmdir(Path(target).parent)  # the sweep found the new folder empty
        calls.append(target)
        return replace(source, target)

    monkeypatch.setattr(local_module.os, "replace", swept_then_replace)
    store.put("updates/9/a.safetensors", io.BytesIO(b"arrives"))
    assert len(calls) == 2
    with store.open("updates/9/a.safetensors") as stream:
        assert stream.read() == b"arrives"
