"""Removing from a weight store what no record references: bytes left by crashes.

Every object is written before the record that names it (an update's bytes before its row, an
aggregate before its commit, an upload's parts joined before its update), so a process killed in
between leaves bytes nothing names: a partial aggregate, a dead claim's shard records and upload,
the joined object of an upload whose complete died. Nothing else would ever remove them.

Two rules keep the sweep from removing anything still wanted. Only what was last written before
``before`` is a candidate: the caller sets it a grace period back, longer than any object waits for
its record. And ``referenced`` is asked about each page of candidates after they were listed, in
one read of the records, so a record committed while the sweep lists is seen. Only FMA's key
spaces (``KEY_SPACES``) are listed, and stores list only under their own root or prefix: nothing
that shares the folder or bucket is ever touched. Memory stays at one page of keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

from fma_core.connectors.weight_store import KEY_SPACES, ListedObject, ListedUpload, Removed, WeightStore
from fma_core.errors import ObjectNotFound

logger = logging.getLogger(__name__)

PAGE = 500
"""Keys asked about at once: a few thousand query parameters at most, and one S3 listing page or less."""

Referenced = Callable[[list[str]], Collection[str]]
"""Given keys, the ones a record references (fma-django: ``selectors.weight_keys_referenced``)."""

_Listed = TypeVar("_Listed", ListedObject, ListedUpload)


@dataclass(frozen=True)
class Swept:
    """What one sweep removed: unreferenced objects, unfinished uploads, and the store's own leftovers."""

    objects: Removed
    uploads: Removed
    leftovers: Removed

    @property
    def count(self) -> int:
        return self.objects.count + self.uploads.count + self.leftovers.count


def remove_unreferenced(store: WeightStore, *, referenced: Referenced, before: float) -> Swept:
    """Remove the objects and multipart uploads under FMA's key spaces that were last written before
    ``before`` (epoch seconds) and that ``referenced`` does not name, then the store's leftovers
    (``WeightStore.remove_leftovers``) as old."""
    objects = uploads = Removed()
    for space in KEY_SPACES:
        for page in _pages(store.list_objects(space), before):
            kept = set(referenced([listed.key for listed in page]))
            for listed in page:
                if listed.key not in kept:
                    store.delete(listed.key)
                    objects += _removed("object", listed.key, listed.size)
        for page in _pages(store.list_uploads(space), before):
            kept = set(referenced([listed.key for listed in page]))
            for listed in page:
                if listed.key not in kept:
                    try:
                        size = sum(part.size for part in store.uploaded_parts(listed.key, listed.upload_id))
                    except ObjectNotFound:  # completed or aborted meanwhile
                        continue
                    store.abort_upload(listed.key, listed.upload_id)
                    uploads += _removed("unfinished upload of", listed.key, size)
    return Swept(objects=objects, uploads=uploads, leftovers=store.remove_leftovers(before=before))


def _pages(listed: Iterable[_Listed], before: float) -> Iterator[list[_Listed]]:
    """The listed things last written before ``before``, ``PAGE`` at a time."""
    old = (item for item in listed if item.modified < before)
    while page := list(islice(old, PAGE)):
        yield page


def _removed(what: str, key: str, size: int) -> Removed:
    logger.info("removed the %s %s (%s bytes): no record references it", what, key, f"{size:,}")
    return Removed(1, size)
