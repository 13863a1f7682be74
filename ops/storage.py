"""Small fsspec helpers shared by every stage: one place that knows URLs.

Every place in Kiln is a :class:`Location`: a URL (a plain local path counts as one) and the fsspec
options that reach it; a plain string is a location that needs no options.  Functions take a place as
one value; storage options travel on their own only beside input URLs still to be read from a config
(``data.inputs``, decontamination sources), where they become locations.  Writes of whole
objects are all-or-nothing: local files go through a temporary name and a rename,
object stores get a single PUT, which is atomic per object.  Commit markers are
written with these helpers after the data they vouch for.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

import fsspec
from fsspec.core import url_to_fs

T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


@dataclass(frozen=True)
class Location:
    """One place in storage: a URL and the fsspec options (endpoint, credentials) that reach it.

    The options are left out of ``repr`` and ``str``: they may hold credentials, and a location is
    printed in errors and written into records.
    """

    url: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False)

    def join(self, *parts: str) -> "Location":
        return Location(_join_url(self.url, *parts), self.options)

    def with_url(self, url: str) -> "Location":
        """Another URL reached with these options (a config's URLs all share its ``storage.options``)."""
        return Location(url, self.options)

    def __str__(self) -> str:
        return self.url


Place = Location | str
"""What every storage call takes: a location, or a plain URL that needs no options."""


def location(place: Place) -> Location:
    return place if isinstance(place, Location) else Location(place)


def filesystem(place: Place) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that serves ``place`` and the path inside it.

    S3 honours ``AWS_ENDPOINT_URL`` so any S3-compatible store works unchanged.  Object-store
    clients keep no directory listings: other processes, on other hosts, write under the same
    prefixes, and a cached listing would hide their objects from ``exists`` and ``ls`` for good.
    """
    url, opts = str(place), dict(location(place).options)
    if "://" in url and not url.startswith("file://"):
        opts.setdefault("use_listings_cache", False)
    if url.startswith(("s3://", "s3a://")) and os.environ.get("AWS_ENDPOINT_URL"):
        client_kwargs = dict(opts.get("client_kwargs") or {})
        client_kwargs.setdefault("endpoint_url", os.environ["AWS_ENDPOINT_URL"])
        opts["client_kwargs"] = client_kwargs
    return url_to_fs(url, **opts)


def is_local(place: Place) -> bool:
    fs, _ = filesystem(place)
    return "file" in _protocols(fs)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


PlaceT = TypeVar("PlaceT", Location, str)
"""A place kept of its kind: a function given a location returns one, given a plain URL returns one."""


def join(base: PlaceT, *parts: str) -> PlaceT:
    """``base`` with ``parts`` appended as path segments, of the same kind as ``base``."""
    return base.join(*parts) if isinstance(base, Location) else _join_url(base, *parts)


def _join_url(base: str, *parts: str) -> str:
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


def exists(place: Place) -> bool:
    fs, path = filesystem(place)
    return with_retries(lambda: fs.exists(path))


def read_bytes(place: Place) -> bytes:
    fs, path = filesystem(place)
    return with_retries(lambda: fs.cat_file(path))


def read_text(place: Place) -> str:
    return read_bytes(place).decode("utf-8")


def read_json(place: Place) -> Any:
    return json.loads(read_bytes(place))


def write_bytes(place: Place, data: bytes) -> None:
    """Write a whole object so that readers see the old bytes or the new, never a part."""
    fs, path = filesystem(place)
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


def write_text(place: Place, text: str) -> None:
    write_bytes(place, text.encode("utf-8"))


def write_json(place: Place, obj: Any) -> None:
    write_bytes(place, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def list_names(place: Place) -> list[str]:
    """Base names directly under ``place`` (empty when it does not exist)."""
    fs, path = filesystem(place)
    try:
        entries = with_retries(lambda: fs.ls(path, detail=False))
    except FileNotFoundError:
        return []
    return sorted(os.path.basename(e.rstrip("/")) for e in entries)


def remove(place: Place, recursive: bool = False) -> None:
    fs, path = filesystem(place)
    if with_retries(lambda: fs.exists(path)):
        with_retries(lambda: fs.rm(path, recursive=recursive))
