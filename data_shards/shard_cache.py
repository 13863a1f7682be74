"""The node's cache folder, and the bounded cache of shards from object storage that every rank of a node shares.

Everything lives under :func:`cache_dir` (``KILN_CACHE_DIR``, default ``~/.cache/kiln``),
created mode 0700 and refused when another user could write to it::

    shards/<sha256>.arrow        a complete shard, checked against the manifest before it got this name
    shards/.<sha256>.part-<id>   a download in progress, sized to the whole shard from its first byte
    locks/<sha256>.lock          flock: shared while a rank reads the shard, exclusive while it is fetched or evicted
    cache.lock                   flock: held while space is counted, made and reserved
    indexes/ verified/ sample-index/   small files: document-length indexes, checks of local shards, epoch orders

The limit bounds the sizes of everything under ``shards/`` together: a download reserves
its whole size (its part file) under ``cache.lock``, after evicting shards that no rank
holds, and renames it to its shard under that lock too, so the bound holds at every instant
whatever the number of ranks and threads.
Eviction takes the least wanted first: a rank that lets go of a shard its upcoming order
does not need sets its mtime to 0; a rank that reads or prefetches a shard sets it to now.
A crashed download leaves a part file whose lock nobody holds; it is removed when space is needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from data_shards.errors import DataError
from data_shards.manifest import Manifest
from data_shards.shard_format import file_sha256, lengths_from_bytes
from ops import storage
from ops.storage import Location

GB = 10**9
# Bytes asked for by one ranged GET while downloading a shard (also what the traffic plan counts).
DOWNLOAD_PART_BYTES = 16 << 20
# How long a rank waits for other ranks of its node to free room before giving up.
ROOM_WAIT_LIMIT_S = 900.0
ROOM_POLL_S = 0.05
PART_MARK = ".part-"


def private_dir(path: Path) -> Path:
    """``path`` created mode 0700, or checked to be this user's and writable by nobody else."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        who = "owned by another user" if st.st_uid != os.getuid() else "writable by other users"
        raise DataError(f"cache folder {path} is {who}: point KILN_CACHE_DIR at a private folder (mode 0700)")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def cache_dir() -> Path:
    return private_dir(Path(os.environ.get("KILN_CACHE_DIR") or Path.home() / ".cache" / "kiln"))


def verify_local(path: str, url: str, sha256: str, size: int) -> None:
    """Check a local shard against the manifest once; the check is remembered under a key of the
    file's size and mtime, so a file changed later is checked again."""
    stat = os.stat(path)
    key = hashlib.sha256(f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{sha256}".encode()).hexdigest()
    marker = cache_dir() / "verified" / key
    if marker.exists():
        return
    if stat.st_size != size or file_sha256(path) != sha256:
        raise DataError(f"shard {url} is damaged: its sha256 does not match the manifest (re-run `kiln prepare`)")
    private_dir(marker.parent)
    marker.write_text(url + "\n")


def shard_lengths(manifest: Manifest, index: int) -> np.ndarray | None:
    """Verified document lengths of shard ``index`` from its index file; None when the manifest names none.

    Index files of remote data are kept in the cache folder, named by their sha256.
    """
    entry = manifest.shards[index]
    if not entry.index:
        return None
    url = manifest.split_location.join(entry.index)
    cached = cache_dir() / "indexes" / f"{entry.index_sha256}.npy"
    if cached.exists():
        data = cached.read_bytes()
    else:
        if not storage.exists(url):
            raise DataError(f"document index {url} named by the {manifest.split} manifest is missing")
        data = storage.read_bytes(url)
    if hashlib.sha256(data).hexdigest() != entry.index_sha256:
        raise DataError(f"document index {url} is damaged: its sha256 does not match the manifest (re-run `kiln prepare`)")
    lengths = lengths_from_bytes(data, url.url)
    if len(lengths) != entry.docs or int(lengths.sum()) != entry.tokens:
        raise DataError(f"document index {url} disagrees with the manifest's document and token counts")
    if not cached.exists() and not storage.is_local(url):
        private_dir(cached.parent)
        tmp = cached.with_name(f".{cached.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, cached)
    return lengths


class NodeShardCache:
    """This process's handle on the node's shared shard cache, bounded to ``limit_bytes``.

    :meth:`pin` returns a verified local copy that stays until :meth:`release`;
    :meth:`prefetch` fetches ahead of use without holding anything.  One rank of the node
    downloads a shard while the others wait for it.
    """

    def __init__(self, limit_bytes: int, root: Path | None = None):
        root = root or cache_dir()
        self.folder = private_dir(root / "shards")
        self._locks = private_dir(root / "locks")
        self._cache_lock = root / "cache.lock"
        self.limit = int(limit_bytes)
        self._pins: dict[str, tuple[int, int]] = {}  # sha256 -> (descriptor holding the shared lock, bytes)
        self._stats_lock = threading.Lock()
        self.downloads = 0
        self.downloaded_bytes = 0

    def path(self, sha256: str) -> str:
        return str(self.folder / f"{sha256}.arrow")

    def usage(self) -> int:
        """Bytes under the cache's shards folder: what the limit bounds."""
        return sum(_size(entry) for entry in os.scandir(self.folder))

    @property
    def pinned_bytes(self) -> int:
        return sum(size for _, size in self._pins.values())

    def pin(self, sha256: str, size: int, shard: Location) -> str:
        """Path of a verified copy of the shard, kept in the cache until :meth:`release`; fetched first when absent."""
        path = self.path(sha256)
        if sha256 in self._pins:
            return path
        if size > self.limit:
            raise DataError(f"shard {shard} ({size:,} bytes) is larger than data.cache_limit_gb={self.limit / GB:g}: raise it")
        fd = self._lock_fd(sha256)
        try:
            while True:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if os.path.exists(path):
                    os.utime(path)
                    self._pins[sha256] = (fd, size)
                    return path
                # Never block for the exclusive lock: once another rank has fetched the shard and pinned
                # it (holding the lock shared), a blocked request would wait for that pin's release.
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # being fetched or evicted right now: look again shortly
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    time.sleep(ROOM_POLL_S)
                    continue
                try:
                    if not os.path.exists(path):
                        self._download(sha256, size, shard, prefetch=False)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)  # then take it shared and look again: it may be gone already
        except BaseException:  # anything, Ctrl-C included: close the lock file, then raise it on
            os.close(fd)
            raise

    def release(self, sha256: str, wanted: bool) -> None:
        """Let go of a pinned shard; ``wanted=False`` says this rank's upcoming order does not need it."""
        fd, _ = self._pins.pop(sha256, (None, 0))
        if fd is None:
            return
        try:
            if not wanted:
                os.utime(self.path(sha256), ns=(0, 0))
        finally:
            os.close(fd)

    def release_all(self) -> None:
        for sha256 in list(self._pins):
            self.release(sha256, wanted=True)

    def prefetch(self, sha256: str, size: int, shard: Location) -> str:
        """Fetch a shard ahead of use without pinning it.  Returns "present", "fetched", or "no room"
        (when only evicting shards some rank still wants would make room)."""
        path = self.path(sha256)
        if os.path.exists(path):
            _touch(path)
            return "present"
        fd = self._lock_fd(sha256)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "present"  # being fetched by another rank, or in use
            if os.path.exists(path):
                _touch(path)
                return "present"
            return "fetched" if self._download(sha256, size, shard, prefetch=True) else "no room"
        finally:
            os.close(fd)

    def _lock_fd(self, sha256: str) -> int:
        return os.open(self._locks / f"{sha256}.lock", os.O_RDWR | os.O_CREAT, 0o600)

    @contextlib.contextmanager
    def _space_lock(self):
        fd = os.open(self._cache_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _download(self, sha256: str, size: int, shard: Location, prefetch: bool) -> bool:
        """Fetch into a reserved part file, check it while it streams, and give it its name (the caller
        holds the shard's lock exclusively).  False when a prefetch finds no room."""
        part = self._reserve(sha256, size, shard.url, prefetch)
        if part is None:
            return False
        try:
            digest = _fetch_into(shard, part, size)
            if digest != sha256:
                raise DataError(f"shard {shard} is damaged: its sha256 does not match the manifest (re-run `kiln prepare`)")
            self._complete(part, sha256)
        except BaseException:  # anything, Ctrl-C included: no partial file left behind, then raise it on
            with contextlib.suppress(FileNotFoundError):
                os.remove(part)
            raise
        with self._stats_lock:
            self.downloads += 1
            self.downloaded_bytes += size
        return True

    def _complete(self, part: str, sha256: str) -> None:
        """Give a checked part file its shard's name, under ``cache.lock``: a rename while room is being made
        would let that count miss the bytes (the part listed, then gone when sized; the shard never listed)."""
        with self._space_lock():
            os.replace(part, self.path(sha256))

    def _reserve(self, sha256: str, size: int, url: str, prefetch: bool) -> str | None:
        deadline = time.monotonic() + ROOM_WAIT_LIMIT_S
        while True:
            with self._space_lock():
                if self._make_room(size, only_unwanted=prefetch):
                    part = str(self.folder / f".{sha256}{PART_MARK}{uuid.uuid4().hex}")
                    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    try:
                        os.ftruncate(fd, size)
                    finally:
                        os.close(fd)
                    return part
            if prefetch:
                return None
            if self.pinned_bytes + size > self.limit:
                raise DataError(
                    f"data.cache_limit_gb={self.limit / GB:g} cannot hold the shards one batch reads "
                    f"({(self.pinned_bytes + size) / GB:.3g} GB at once, reading {url}): raise it, or use data.shuffle=block"
                )
            if time.monotonic() > deadline:
                raise DataError(
                    f"no room in the shard cache {self.folder} for {ROOM_WAIT_LIMIT_S:.0f} s: the ranks of this node "
                    f"hold more than data.cache_limit_gb={self.limit / GB:g} at once; raise it"
                )
            time.sleep(ROOM_POLL_S)

    def _make_room(self, size: int, only_unwanted: bool) -> bool:
        """Evict until ``size`` more bytes fit: stale part files, then shards nobody holds, least wanted first.
        A prefetch evicts only shards that no rank wants any more."""
        parts, shards, used = [], [], 0
        for entry in os.scandir(self.folder):
            st = _stat(entry)
            if st is None:
                continue
            used += st.st_size
            if PART_MARK in entry.name:
                parts.append((entry.name[1:].split(PART_MARK)[0], entry.path, st.st_size))
            elif entry.name.endswith(".arrow"):
                if not only_unwanted or st.st_mtime_ns == 0:
                    shards.append((st.st_mtime_ns, entry.name.removesuffix(".arrow"), entry.path, st.st_size))
        for sha256, path, nbytes in parts + [item[1:] for item in sorted(shards)]:
            if used + size <= self.limit:
                break
            if self._evict(sha256, path):
                used -= nbytes
        return used + size <= self.limit

    def _evict(self, sha256: str, path: str) -> bool:
        fd = self._lock_fd(sha256)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False  # held by a reader or being fetched
        try:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            return True
        finally:
            os.close(fd)


def _fetch_into(shard: Location, part: str, size: int) -> str:
    """Copy the object into ``part`` with ranged GETs of DOWNLOAD_PART_BYTES; returns the sha256 of what arrived."""
    fs, remote = storage.filesystem(shard)
    url = shard.url
    digest = hashlib.sha256()
    with open(part, "r+b") as out:
        for start in range(0, size, DOWNLOAD_PART_BYTES):
            end = min(start + DOWNLOAD_PART_BYTES, size)
            try:
                data = storage.with_retries(lambda: fs.cat_file(remote, start=start, end=end))
            except FileNotFoundError:
                raise DataError(f"shard {url} named by the manifest is missing") from None
            if len(data) != end - start:
                raise DataError(
                    f"shard {url} is damaged: it is shorter than the manifest's {size:,} bytes (re-run `kiln prepare`)"
                )
            out.write(data)
            digest.update(data)
    return digest.hexdigest()


def _touch(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def _stat(entry: os.DirEntry) -> os.stat_result | None:
    try:
        return entry.stat()
    except FileNotFoundError:
        return None


def _size(entry: os.DirEntry) -> int:
    st = _stat(entry)
    return st.st_size if st else 0
