"""Small fsspec helpers shared by every stage: one place that knows URLs.

Every path in Kiln is a URL (a plain local path counts as one).  Writes of whole
objects are all-or-nothing: local files go through a temporary name and a rename,
object stores get a single PUT, which is atomic per object.  Commit markers are
written with these helpers after the data they vouch for.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any, Callable, TypeVar

import fsspec
from fsspec.core import url_to_fs

T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def filesystem(url: str, options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that serves ``url`` and the path inside it.

    S3 honours ``AWS_ENDPOINT_URL`` so any S3-compatible store works unchanged.  Object-store
    clients keep no directory listings: other processes, on other hosts, write under the same
    prefixes, and a cached listing would hide their objects from ``exists`` and ``ls`` for good.
    """
    opts = dict(options or {})
    if "://" in url and not url.startswith("file://"):
        opts.setdefault("use_listings_cache", False)
    if url.startswith(("s3://", "s3a://")) and os.environ.get("AWS_ENDPOINT_URL"):
        client_kwargs = dict(opts.get("client_kwargs") or {})
        client_kwargs.setdefault("endpoint_url", os.environ["AWS_ENDPOINT_URL"])
        opts["client_kwargs"] = client_kwargs
    return url_to_fs(url, **opts)


def is_local(url: str) -> bool:
    fs, _ = filesystem(url)
    return "file" in _protocols(fs)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def with_retries(fn: Callable[[], T], attempts: int = 5, first_delay_s: float = 0.2) -> T:
    """Call ``fn``, retrying transient network errors with exponential back-off."""
    delay = first_delay_s
    for attempt in range(attempts):
        try:
            return fn()
        except TRANSIENT_ERRORS:
            if attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def exists(url: str, options: dict | None = None) -> bool:
    fs, path = filesystem(url, options)
    return with_retries(lambda: fs.exists(path))


def read_bytes(url: str, options: dict | None = None) -> bytes:
    fs, path = filesystem(url, options)
    return with_retries(lambda: fs.cat_file(path))


def read_text(url: str, options: dict | None = None) -> str:
    return read_bytes(url, options).decode("utf-8")


def read_json(url: str, options: dict | None = None) -> Any:
    return json.loads(read_bytes(url, options))


def write_bytes(url: str, data: bytes, options: dict | None = None) -> None:
    """Write a whole object so that readers see the old bytes or the new, never a part."""
    fs, path = filesystem(url, options)
    if "file" in _protocols(fs):
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    with_retries(lambda: fs.pipe_file(path, data))


def write_text(url: str, text: str, options: dict | None = None) -> None:
    write_bytes(url, text.encode("utf-8"), options)


def write_json(url: str, obj: Any, options: dict | None = None) -> None:
    write_bytes(url, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"), options)


def list_names(url: str, options: dict | None = None) -> list[str]:
    """Base names directly under ``url`` (empty when it does not exist)."""
    fs, path = filesystem(url, options)
    try:
        entries = with_retries(lambda: fs.ls(path, detail=False))
    except FileNotFoundError:
        return []
    return sorted(os.path.basename(e.rstrip("/")) for e in entries)


def remove(url: str, options: dict | None = None, recursive: bool = False) -> None:
    fs, path = filesystem(url, options)
    if with_retries(lambda: fs.exists(path)):
        with_retries(lambda: fs.rm(path, recursive=recursive))
