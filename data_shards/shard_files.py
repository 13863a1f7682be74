"""Positioned reads of byte ranges from local shard files into a caller's buffer.

Nothing is mapped or cached: each range goes from the kernel's page cache straight into
the destination, so the reader's resident memory is its output buffer whatever the
corpus size.  At most ``MAX_OPEN_FILES`` descriptors stay open (the oldest opened is closed first).
"""

from __future__ import annotations

import os
from collections import OrderedDict

from data_shards.errors import DataError

MAX_OPEN_FILES = 64


class ShardFiles:
    def __init__(self, max_open: int = MAX_OPEN_FILES):
        self.max_open = max_open
        self._fds: OrderedDict[str, int] = OrderedDict()

    def _open(self, path: str) -> int:
        if len(self._fds) >= self.max_open:
            os.close(self._fds.popitem(last=False)[1])
        fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def read(self, paths: list[str], starts: list[int], stops: list[int], out: memoryview) -> None:
        """Fill ``out`` (bytes) with the ranges ``starts[i]:stops[i]`` of ``paths[i]``, one after another."""
        at, fds, preadv = 0, self._fds, os.preadv
        for path, start, stop in zip(paths, starts, stops):
            size = stop - start
            fd = fds.get(path)
            if fd is None:
                fd = self._open(path)
            if preadv(fd, [out[at : at + size]], start) != size:
                raise DataError(f"shard {path} is shorter than its document index says")
            at += size
        if at != len(out):
            raise DataError(f"the pieces read fill {at} of {len(out)} bytes: the document index does not match the shards")

    def forget(self, path: str) -> None:
        """Close the file's descriptor (its shard may be evicted from a cache now)."""
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])
