"""Local, verified copies of shards: the only way the readers reach shard bytes.

A shard is checked against the manifest's sha256 before its first use on a host;
the check is remembered in the cache folder (``KILN_CACHE_DIR``, default
``~/.cache/kiln``) under a key that includes the file's size and mtime, so a file
changed later is checked again.  Shards on object storage are downloaded once into
the cache folder, named by their sha256.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np

from data_shards.errors import DataError
from data_shards.manifest import Manifest
from data_shards.shard_format import file_sha256, lengths_from_bytes
from ops import storage


def cache_dir() -> Path:
    root = os.environ.get("KILN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "kiln")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def local_shard(manifest: Manifest, index: int, storage_options: dict | None = None) -> str:
    """Path of a verified local copy of shard ``index``; DataError naming the shard if it is damaged."""
    entry = manifest.shards[index]
    url = manifest.shard_url(index)
    if storage.is_local(url):
        _, path = storage.filesystem(url)
        if not os.path.exists(path):
            raise DataError(f"shard {url} named by the {manifest.split} manifest is missing")
    else:
        path = str(cache_dir() / "shards" / f"{entry.sha256}.arrow")
        if not os.path.exists(path):
            _download(url, path, storage_options)
        try:
            _verify(path, url, entry.sha256, entry.bytes)
        except DataError:
            os.remove(path)  # a bad download must not stick in the cache
            raise
        return path
    _verify(path, url, entry.sha256, entry.bytes)
    return path


def shard_lengths(manifest: Manifest, index: int, storage_options: dict | None = None) -> np.ndarray | None:
    """Verified document lengths of shard ``index`` from its index file; None when the manifest names none.

    Index files of remote data are kept in the cache folder, named by their sha256.
    """
    entry = manifest.shards[index]
    if not entry.index:
        return None
    url = storage.join(manifest.split_url, entry.index)
    cached = cache_dir() / "indexes" / f"{entry.index_sha256}.npy"
    if cached.exists():
        data = cached.read_bytes()
    else:
        if not storage.exists(url, storage_options):
            raise DataError(f"document index {url} named by the {manifest.split} manifest is missing")
        data = storage.read_bytes(url, storage_options)
    if hashlib.sha256(data).hexdigest() != entry.index_sha256:
        raise DataError(f"document index {url} is damaged: its sha256 does not match the manifest (re-run `kiln prepare`)")
    lengths = lengths_from_bytes(data, url)
    if len(lengths) != entry.docs or int(lengths.sum()) != entry.tokens:
        raise DataError(f"document index {url} disagrees with the manifest's document and token counts")
    if not cached.exists() and not storage.is_local(url):
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, cached)
    return lengths


def _download(url: str, path: str, storage_options: dict | None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fs, remote = storage.filesystem(url, storage_options)
    try:
        storage.with_retries(lambda: fs.get_file(remote, tmp))
    except FileNotFoundError:
        raise DataError(f"shard {url} named by the manifest is missing") from None
    os.replace(tmp, path)


def _verify(path: str, url: str, sha256: str, size: int) -> None:
    stat = os.stat(path)
    key = hashlib.sha256(f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{sha256}".encode()).hexdigest()
    marker = cache_dir() / "verified" / key
    if marker.exists():
        return
    if stat.st_size != size or file_sha256(path) != sha256:
        raise DataError(f"shard {url} is damaged: its sha256 does not match the manifest (re-run `kiln prepare`)")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(url + "\n")
