"""Where a reader's shard bytes come from: verified local files, held while they are read.

Two stores: shards on a local (or shared) filesystem are read in place, each checked
once; shards on object storage stream through the node's bounded shared cache with a
prefetcher ahead of the reader.  A reader acquires the shards of a batch, reads them,
and releases them, saying whether its upcoming order still needs each.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

from data_shards.config import ReadConfig
from data_shards.errors import DataError
from data_shards.manifest import Manifest
from data_shards.prefetch import Prefetcher
from data_shards.shard_cache import GB, NodeShardCache, verify_local
from ops import storage


class ShardStore(ABC):
    # True when acquired shards take room that must be given back (the loader then holds them batch by batch).
    bounded: ClassVar[bool]

    def __init__(self, manifest: Manifest):
        self.manifest = manifest

    @abstractmethod
    def acquire(self, shard: int) -> str:
        """Path of a verified local copy of manifest shard ``shard``, kept until :meth:`release`."""

    def release(self, shard: int, wanted: bool) -> None:
        """Give a shard back; ``wanted``: the reader's upcoming order still reads it."""

    def upcoming(self, shards: Sequence[int], started: int) -> None:
        """The shards the reader needs next, in first-use order, and how many it began since the last call."""

    def close(self) -> None:
        """Give everything back and stop background work."""


class LocalShards(ShardStore):
    """Shards read where they are; each is checked against the manifest at its first use."""

    bounded = False

    def __init__(self, manifest: Manifest):
        super().__init__(manifest)
        self._checked: dict[int, str] = {}

    def acquire(self, shard: int) -> str:
        path = self._checked.get(shard)
        if path is None:
            url = self.manifest.shard_location(shard)
            _, path = storage.filesystem(url)
            if not os.path.exists(path):
                raise DataError(f"shard {url} named by the {self.manifest.split} manifest is missing")
            entry = self.manifest.shards[shard]
            verify_local(path, url.url, entry.sha256, entry.bytes)
            self._checked[shard] = path
        return path


class CachedShards(ShardStore):
    """Shards on object storage, fetched ahead of use into the node's cache of ``cache_limit_gb``."""

    bounded = True

    def __init__(self, manifest: Manifest, cache_limit_gb: float):
        super().__init__(manifest)
        self.cache = NodeShardCache(int(cache_limit_gb * GB))
        self._largest = max((s.bytes for s in manifest.shards), default=1) or 1
        self.prefetcher = Prefetcher(self._prefetch, self._room)

    def _args(self, shard: int) -> tuple[str, int, storage.Location]:
        entry = self.manifest.shards[shard]
        return entry.sha256, entry.bytes, self.manifest.shard_location(shard)

    def acquire(self, shard: int) -> str:
        return self.cache.pin(*self._args(shard))

    def release(self, shard: int, wanted: bool) -> None:
        self.cache.release(self.manifest.shards[shard].sha256, wanted)

    def upcoming(self, shards: Sequence[int], started: int) -> None:
        self.prefetcher.upcoming(list(shards), started)

    def _prefetch(self, shard: int) -> str:
        return self.cache.prefetch(*self._args(shard))

    def _room(self) -> int:
        return (self.cache.limit - self.cache.pinned_bytes) // self._largest

    def close(self) -> None:
        self.prefetcher.stop()
        self.cache.release_all()


def shard_store(manifest: Manifest, read: ReadConfig | None = None) -> ShardStore:
    if storage.is_local(manifest.split_location):
        return LocalShards(manifest)
    return CachedShards(manifest, (read or ReadConfig()).cache_limit_gb)
