"""An in-memory snapshot of state dicts, taken by reference and copied to CPU memory later.

A save must block training only for as long as it takes to remember what to write.  So
:meth:`Snapshot.add` keeps references to the live tensors (and copies everything else, which
is small), and :meth:`Snapshot.copy` - run by the background writer - copies the tensor bytes
into fresh CPU memory.  Until ``copy`` has returned the live tensors must not change: the
trainer holds its next optimizer step on :meth:`Snapshot.wait_copied`.

Tensors that share storage keep sharing it in the copy (a tied embedding stays one tensor
in the file), but only the bytes some tensor of a file covers are copied: a layer's
parameters that are views into one flat buffer do not drag the whole buffer into the
layer's file.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

import torch

_ALIGN = 64  # bytes: a span starts at a boundary every dtype's element size divides


@dataclass
class _Span:
    """A byte range of one storage, and (once copied) its CPU bytes."""

    source: torch.Tensor | None  # uint8 view of the whole live storage, until copied
    start: int
    end: int
    copy: torch.Tensor | None = None


@dataclass(frozen=True)
class _TensorSlot:
    """Where a tensor's bytes sit in its span, and how to view them."""

    span: int
    offset: int  # bytes from the start of the storage
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool
    parameter: bool


class Snapshot:
    def __init__(self) -> None:
        self._files: list[tuple[str, Any]] = []
        self._spans: list[_Span] = []
        self._copied = threading.Event()

    def add(self, name: str, state: Any) -> None:
        """Remember ``state`` (nested dicts, lists and tuples of tensors and plain objects) as file ``name``."""
        by_storage: dict[tuple[torch.device, int], int] = {}
        self._files.append((name, self._capture(state, by_storage)))

    def _capture(self, obj: Any, by_storage: dict) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._slot(obj, by_storage)
        if isinstance(obj, OrderedDict):
            out = OrderedDict((k, self._capture(v, by_storage)) for k, v in obj.items())
            out.__dict__.update(copy.deepcopy(obj.__dict__))  # a module state dict's _metadata
            return out
        if type(obj) is dict:
            return {k: self._capture(v, by_storage) for k, v in obj.items()}
        if type(obj) in (list, tuple):
            return type(obj)(self._capture(v, by_storage) for v in obj)
        return copy.deepcopy(obj)

    def _slot(self, tensor: torch.Tensor, by_storage: dict) -> _TensorSlot:
        storage = tensor.untyped_storage()
        item = tensor.element_size()
        extent = 0 if tensor.numel() == 0 else 1 + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride()))
        start, end = tensor.storage_offset() * item, (tensor.storage_offset() + extent) * item
        key = (tensor.device, storage.data_ptr())
        if key not in by_storage:
            whole = torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(storage, 0, (storage.nbytes(),))
            by_storage[key] = len(self._spans)
            self._spans.append(_Span(whole, start, end))
        span = self._spans[by_storage[key]]
        span.start, span.end = min(span.start, start), max(span.end, end)
        return _TensorSlot(
            by_storage[key],
            start,
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
            tensor.requires_grad,
            isinstance(tensor, torch.nn.Parameter),
        )

    def copy(self) -> None:
        """Copy every remembered tensor's bytes to CPU memory; afterwards the live tensors may change."""
        try:
            for span in self._spans:
                span.start -= span.start % _ALIGN
                span.copy = span.source[span.start : span.end].to("cpu", copy=True)
                span.source = None  # let go of the live storage
        finally:
            self._copied.set()

    def wait_copied(self) -> None:
        self._copied.wait()

    def files(self) -> Iterator[tuple[str, Any]]:
        """(name, state with CPU tensors) for each added file, after :meth:`copy`."""
        for name, state in self._files:
            yield name, self._materialize(state)

    def _materialize(self, obj: Any) -> Any:
        if isinstance(obj, _TensorSlot):
            span = self._spans[obj.span]
            if span.copy is None:
                raise RuntimeError("snapshot read before it was copied")
            item = torch.empty(0, dtype=obj.dtype).element_size()
            tensor = torch.empty(0, dtype=obj.dtype).set_(
                span.copy.untyped_storage(), (obj.offset - span.start) // item, obj.size, obj.stride
            )
            if obj.parameter:
                return torch.nn.Parameter(tensor, requires_grad=obj.requires_grad)
            return tensor.requires_grad_(obj.requires_grad)
        if isinstance(obj, OrderedDict):
            out = OrderedDict((k, self._materialize(v)) for k, v in obj.items())
            out.__dict__.update(obj.__dict__)
            return out
        if type(obj) is dict:
            return {k: self._materialize(v) for k, v in obj.items()}
        if type(obj) in (list, tuple):
            return type(obj)(self._materialize(v) for v in obj)
        return obj
