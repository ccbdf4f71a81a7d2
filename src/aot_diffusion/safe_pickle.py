"""Restricted, bounded unpickling for the foreign pickles the pipeline reads (CIFAR-10 batches,
released NVlabs/edm networks). No code from a file ever runs.

A pickle is a program: ``GLOBAL`` names a callable and ``REDUCE`` calls it. :class:`RestrictedUnpickler`
resolves only the names on an explicit allow-list (anything else raises ``pickle.UnpicklingError``
naming it), and :func:`restricted_load` bounds what a small file can make the loader do:

* the file may hold at most ``max_bytes`` bytes, and at most ``max_objects`` opcodes (each makes at
  most one object), counted by a dry scan (``pickletools.genops``) before anything is built;
* no allow-listed callable allocates from a number: ``bytearray`` accepts bytes only, ``set`` and
  ``frozenset`` a list or tuple, numpy's ``_reconstruct`` only the empty array numpy pickles first, and
  ``numpy.ndarray`` itself is not callable.

The helpers every loader needs are here once: latin-1 ``_codecs.encode`` (how Python 3 writes bytes
in protocol 2), numpy's array/scalar reconstruction under its numpy 1 and 2 module names, and the
Python 2 name mapping (``__builtin__.set`` -> ``builtins.set``).
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import os
import pickle
import pickletools
from typing import Any, Mapping

import numpy as np

__all__ = ["RestrictedUnpickler", "restricted_load", "safe_torch_load", "safe_np_load", "check_weights",
           "latin1_encode", "python3_name", "numpy_globals", "container_globals", "BASIC_GLOBALS"]


def latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes; latin-1 only."""
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def python3_name(module: str, name: str) -> tuple[str, str]:
    """Map a Python 2 global name (``__builtin__.set``, ``copy_reg...``) to its Python 3 name."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _numpy_multiarray():
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


class _NdarrayName:
    """What the global ``numpy.ndarray`` resolves to: an argument for ``_reconstruct``, not a constructor
    (``ndarray((2_000_000_000,))`` would allocate from a number)."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to call numpy.ndarray(...) from a pickle: it allocates from a number")


_NDARRAY = _NdarrayName()


def _numpy_reconstruct(subtype, shape, dtype):
    """numpy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` + ``__setstate__`` with the data;
    a pickle asking for any other shape would allocate memory from a number."""
    if subtype is not _NDARRAY or tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"refusing numpy _reconstruct({getattr(subtype, '__name__', subtype)}, "
                                     f"{shape!r}): only the empty array numpy itself pickles is allowed")
    return _numpy_multiarray()._reconstruct(np.ndarray, shape, dtype)


def numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy array, scalar and dtype reconstruction, under numpy 1 and numpy 2 module names."""
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(module, "_reconstruct")] = _numpy_reconstruct
        out[(module, "scalar")] = _numpy_multiarray().scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        out[(module, "_frombuffer")] = _numpy_frombuffer()
    return out


def _from_items(cls):
    def build(items=()):
        if not isinstance(items, (list, tuple, set, frozenset)):
            raise pickle.UnpicklingError(f"refusing {cls.__name__}() of a {type(items).__name__}: "
                                         f"only a list or tuple of items is allowed")
        return cls(items)
    return build


def _bytearray(data=b"", encoding=None):
    """bytearray from bytes (protocol 3-4) or a latin-1 str (protocol 2), never from a length."""
    if isinstance(data, str) and encoding is not None:
        return bytearray(latin1_encode(data, encoding))
    if isinstance(data, (bytes, bytearray)) and encoding is None:
        return bytearray(data)
    raise pickle.UnpicklingError(f"refusing bytearray({type(data).__name__}): only bytes are allowed "
                                 f"(a number would allocate that many bytes)")


def _complex(real=0.0, imag=0.0):
    if not all(isinstance(v, (int, float)) for v in (real, imag)):
        raise pickle.UnpicklingError("refusing complex() of non-numbers")
    return complex(real, imag)


def container_globals() -> dict[tuple[str, str], Any]:
    """Inert builtins some pickles name: set, frozenset, bytearray, complex, slice, OrderedDict."""
    return {("builtins", "set"): _from_items(set), ("builtins", "frozenset"): _from_items(frozenset),
            ("builtins", "bytearray"): _bytearray, ("builtins", "complex"): _complex,
            ("builtins", "slice"): slice, ("collections", "OrderedDict"): collections.OrderedDict}


BASIC_GLOBALS: dict[tuple[str, str], Any] = {("_codecs", "encode"): latin1_encode, **numpy_globals(),
                                             **container_globals()}


_COPYING = (_bytearray, latin1_encode)  # allow-listed callables that copy bytes: their output is budgeted


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals in ``allowed`` ((module, name) -> object).

    ``copy_budget``: the bytes that the copying callables (``bytearray``, latin-1 ``_codecs.encode``) may
    produce in all; one memoised 1 MiB string passed to ``bytearray`` a thousand times is a gigabyte."""

    def __init__(self, file, allowed: Mapping[tuple[str, str], Any], *, source: str = "pickle",
                 kind: str = "this kind of file", copy_budget: int | None = None, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed, self._source, self._kind = allowed, source, kind
        self._left = copy_budget

    def _budgeted(self, fn):
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            if self._left is not None:
                self._left -= len(out)
                if self._left < 0:
                    raise pickle.UnpicklingError(
                        f"refusing {self._source}: its {fn.__name__.strip('_')} calls copy more bytes than the file "
                        f"could hold (repeated references to one object?)")
            return out
        return call

    def find_class(self, module, name):
        target = self._allowed.get(python3_name(module, name))
        if target is None:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}' from {self._source}: it is not on the allow-list "
                f"for {self._kind}; the file may contain code")
        return self._budgeted(target) if target in _COPYING else target

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"refusing persistent id {pid!r} in {self._source}: {self._kind} have none "
                                     f"(is this a torch.save file? use torch.load(weights_only=True))")


def _size(f) -> int:
    pos = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(pos)
    return end - pos


def _count_opcodes(f, max_objects: int, source: str) -> None:
    start, n = f.tell(), 0
    try:
        for _ in pickletools.genops(f):
            n += 1
            if n > max_objects:
                raise pickle.UnpicklingError(f"{source} holds more than {max_objects:,} pickle opcodes "
                                             f"(objects); refusing it as too large")
    except (ValueError, EOFError) as exc:  # genops' complaints about a malformed stream
        raise pickle.UnpicklingError(f"{source} is not a valid pickle (truncated or corrupt?): {exc}") from None
    f.seek(start)


def restricted_load(file, allowed: Mapping[tuple[str, str], Any], *, source: str | None = None,
                    kind: str = "this kind of file", max_bytes: int = 1 << 30, max_objects: int = 1_000_000,
                    encoding: str = "ASCII") -> Any:
    """Unpickle ``file`` (a path, bytes, or a seekable binary file) resolving only ``allowed`` globals.

    Refuses files over ``max_bytes`` bytes or ``max_objects`` opcodes before building anything.
    ``encoding="bytes"`` reads Python 2 pickles (CIFAR-10). Errors are ``pickle.UnpicklingError``
    naming ``source`` (default: the path).
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        return restricted_load(io.BytesIO(file), allowed, source=source or "pickle data", kind=kind,
                               max_bytes=max_bytes, max_objects=max_objects, encoding=encoding)
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return restricted_load(f, allowed, source=source or str(file), kind=kind, max_bytes=max_bytes,
                                   max_objects=max_objects, encoding=encoding)
    source = source or getattr(file, "name", "pickle data")
    size = _size(file)
    if size > max_bytes:
        raise pickle.UnpicklingError(f"{source} is {size:,} bytes, over the {max_bytes:,}-byte limit for {kind}")
    _count_opcodes(file, max_objects, source)
    return RestrictedUnpickler(file, allowed, source=source, kind=kind, encoding=encoding,
                               copy_budget=2 * size + (1 << 20)).load()


# ---------------------------------------------------------------------------------------------- .pt and .npz

MAX_RATIO = 50          # a zip member may decompress to at most this many times its stored size (zip bombs)
MAX_MEMBER = 16 << 30   # and to at most 16 GiB in any case


def _check_zip(path, kind: str, source=None):
    """The members of a zip file (torch.save, np.savez): no member may inflate far beyond its stored size."""
    import zipfile

    source = source or path
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{source} is not a readable {kind} ({exc})") from None
    for info in zf.infolist():
        if info.file_size > MAX_MEMBER or info.file_size > MAX_RATIO * info.compress_size + (1 << 20):
            zf.close()
            raise ValueError(f"refusing {source}: member {info.filename!r} would inflate from {info.compress_size:,} "
                             f"to {info.file_size:,} bytes (a zip bomb, not a {kind})")
    return zf


def _refuse_bytearray(f, source, pickles=1):
    """Dry-scan the next ``pickles`` pickles of ``f``: at most 10^6 opcodes each, and no ``bytearray``."""
    for _ in range(pickles):
        _count_opcodes(f, 1_000_000, source)
        for _, arg, _ in pickletools.genops(f):  # GLOBAL's "builtins bytearray", or STACK_GLOBAL's pushed names
            if isinstance(arg, str) and (arg == "bytearray" or arg.endswith(" bytearray")):
                raise pickle.UnpicklingError(f"refusing {source}: it builds a bytearray, which allocates from a "
                                             f"number; files of this project hold tensors and plain values only")


def safe_torch_load(path, map_location="cpu", source=None):
    """``torch.load(weights_only=True)`` of a file this project wrote, bounded first: no member inflates
    beyond :data:`MAX_RATIO` x its stored size, at most ``max_objects`` opcodes, and no ``bytearray`` (torch's
    weights-only allow-list has it; ``bytearray(3 << 30)`` allocates 3 GiB from a number). Our files hold
    tensors, numbers, strings and containers only. ``path`` may also be the bytes of a torch.save, zip or legacy
    format (the storages an EDM pickle embeds), read from memory under the same checks; ``source`` names it."""
    import torch

    source = source or str(path)
    if isinstance(path, (bytes, bytearray)):
        path = io.BytesIO(path)
        if path.getbuffer()[:4] != b"PK\x03\x04":  # torch's own test for the zip format
            _refuse_bytearray(path, source, pickles=5)  # legacy: magic, version, sys info, object, storage keys
            path.seek(0)
            return torch.load(path, map_location=map_location, weights_only=True)
    with _check_zip(path, "torch.save file", source) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{source} is not a torch.save file (no single data.pkl)")
        data = zf.read(pkl[0])
    _refuse_bytearray(io.BytesIO(data), source)
    if isinstance(path, io.BytesIO):
        path.seek(0)
    return torch.load(path, map_location=map_location, weights_only=True)


def safe_np_load(path):
    """``np.load`` of an .npz this project wrote (no pickles), each member's declared array checked before any
    data is read: no zip bomb (:func:`_check_zip`), and no header declaring more bytes than the member holds."""
    with _check_zip(path, ".npz file") as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):  # np.load reads any member with the .npy magic as an array
                raise ValueError(f"refusing {path}: member {info.filename!r} is not an .npy array (np.savez "
                                 f"writes no other)")
            with zf.open(info) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                except ValueError as exc:
                    raise ValueError(f"{path}: member {info.filename!r} is not an array ({exc})") from None
            declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if dtype.hasobject or declared > info.file_size:
                raise ValueError(f"refusing {path}: member {info.filename!r} declares {shape} {dtype} "
                                 f"({declared:,} bytes) but holds {info.file_size:,}")
    return np.load(path, allow_pickle=False)


def check_weights(expected: Mapping, found, source) -> None:
    """Refuse a network file whose tensors (``found``: name -> tensor) are not those its recorded constructor
    arguments build (``expected``: the state dict of that network built on the meta device, i.e. names and shapes
    without memory), before the network is built for real: a 2 KB file may describe 10^8 weights."""
    found = found if isinstance(found, Mapping) else {}

    def first_mismatch():
        for name, t in expected.items():
            got = found.get(name)
            if not hasattr(got, "shape"):
                return f"{name!r} is {'missing' if got is None else 'not a tensor'}"
            if tuple(got.shape) != tuple(t.shape):
                return f"{name!r} is {list(got.shape)}, not {list(t.shape)}"
        return next((f"{name!r} is unexpected" for name in found if name not in expected), None)

    mismatch = first_mismatch()
    if mismatch:
        need, have = (sum(math.prod(getattr(v, "shape", ())) for v in d.values()) for d in (expected, found))
        raise ValueError(f"refusing {source}: its weights do not match the recorded constructor arguments, which "
                         f"describe {need:,} values in {len(expected):,} tensors; it holds {have:,} in "
                         f"{len(found):,} (first mismatch: {mismatch})")
