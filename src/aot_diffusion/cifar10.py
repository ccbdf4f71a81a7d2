"""CIFAR-10 from the official python tarball (``cifar-10-python.tar.gz``), read in place.

The tarball is never extracted to disk: each batch member is read from the gzip stream and
unpickled with :mod:`aot_diffusion.safe_pickle`, which only rebuilds the plain containers and the
numpy arrays those files hold (they are protocol-2 pickles written by Python 2, so they are read
with ``encoding="bytes"``) and bounds their size. Anything else in a batch pickle is refused.

Public API: :data:`CIFAR10_URL`, :data:`CIFAR10_MD5`, :data:`CIFAR10_CLASSES`,
:func:`verify_md5`, :func:`ensure_cifar10`, :func:`load_cifar10`, :func:`load_label_names`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from .safe_pickle import BASIC_GLOBALS, restricted_load

__all__ = [
    "CIFAR10_URL", "CIFAR10_MD5", "CIFAR10_FILENAME", "CIFAR10_CLASSES", "verify_md5", "md5sum",
    "ensure_cifar10", "load_cifar10", "load_label_names",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FILENAME = "cifar-10-python.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_MEMBER_DIR = "cifar-10-batches-py"
_SPLITS = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


# ---------------------------------------------------------------------------------------------
# Checksums and acquisition.

def md5sum(path, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path, expected: str) -> bool:
    """True when the file at ``path`` has MD5 digest ``expected`` (case-insensitive)."""
    return md5sum(path) == str(expected).strip().lower()


def _where_to_get(path: Path) -> str:
    return (f"Download the official CIFAR-10 python tarball from {CIFAR10_URL} "
            f"(md5 {CIFAR10_MD5}) and place it at {path}, or call ensure_cifar10(..., download=True) "
            f"where the network allows it.")


def ensure_cifar10(path, download: bool = False, url: str = CIFAR10_URL,
                   expected_md5: str | None = CIFAR10_MD5) -> Path:
    """Make sure the CIFAR-10 tarball exists at ``path`` with the right checksum; return the path.

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` when its MD5 is wrong,
    both saying where to get the file and where to put it. With ``download=True`` a missing or
    corrupt file is (re)downloaded from ``url`` into a temporary file in the same directory,
    checked, and moved into place atomically (``os.replace``); a download with the wrong checksum
    is deleted and reported. ``expected_md5=None`` skips the checksum (tests, custom tarballs).
    """
    path = Path(path)
    if path.is_file():
        if expected_md5 is None or verify_md5(path, expected_md5):
            return path
        problem = ValueError(f"{path} exists but its md5 is {md5sum(path)}, expected {expected_md5} "
                             f"(corrupt or not the official file). {_where_to_get(path)}")
    else:
        problem = FileNotFoundError(f"CIFAR-10 tarball not found at {path}. {_where_to_get(path)}")
    if not download:
        raise problem
    _download(url, path, expected_md5)
    return path


def _download(url: str, path: Path, expected_md5: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as response:  # noqa: S310 (configured URL)
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if expected_md5 is not None and digest.hexdigest() != expected_md5.lower():
            raise ValueError(f"downloaded {url} but its md5 is {digest.hexdigest()}, expected {expected_md5}; "
                             f"the download was discarded. {_where_to_get(path)}")
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


# ---------------------------------------------------------------------------------------------
# Safe unpickling of the batch files.

_MAX_MEMBER_BYTES = 256 << 20   # a real batch file is 31 MB
_MAX_MEMBER_OBJECTS = 1_000_000  # ... and about 40,000 opcodes
_MAX_MEMBERS = 64                # the official tarball has 9 members (a folder, 8 files) ...
_MAX_TOTAL_BYTES = 1 << 30       # ... holding 178 MB, and no extended headers (GNU long names, pax) ...
_MAX_EXTENDED_BYTES = 64 << 10   # ... a few hundred bytes where tar writes them (1 MiB of pax keys costs 239 MiB)
_EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
             tarfile.SOLARIS_XHDTYPE)


def _safe_unpickle(data: bytes, where: str):
    """Only numpy arrays and plain containers; Python 2 pickles, hence ``encoding="bytes"``."""
    return restricted_load(data, BASIC_GLOBALS, source=where, encoding="bytes", max_bytes=_MAX_MEMBER_BYTES,
                           max_objects=_MAX_MEMBER_OBJECTS,
                           kind="CIFAR-10 batch files (numpy arrays and plain containers; the file is not an "
                                "official CIFAR-10 batch)")


def _get(d: dict, key: str):
    """Look a key up as bytes (Python 2 pickles) or str."""
    if key.encode() in d:
        return d[key.encode()]
    if key in d:
        return d[key]
    raise KeyError(f"CIFAR-10 batch has no {key!r} entry")


def _check_archive(path: Path) -> None:
    """Walk the tar headers in the gzip stream (``TarInfo.frombuf`` on each 512-byte block, data skipped 1 MiB at a
    time) and refuse what ``TarFile.next()`` would not read in bounded memory, before it reads anything: it keeps
    an object per member (400k members cost 174 MiB) and reads each extended header (GNU long name or link, pax)
    whole, nesting a call per header. Sparse members and pax size or sparse keywords are refused too: they move
    where tarfile looks for the next header, so it would read headers this walk never saw."""
    def refuse(what):
        raise ValueError(f"refusing {path}: it holds {what}, not the CIFAR-10 python tarball. {_where_to_get(path)}")

    count = total = 0
    try:
        with gzip.open(path, "rb") as f:
            while (block := f.read(512)) and block != bytes(512):  # a zero block ends the archive
                try:
                    info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
                except tarfile.HeaderError as exc:
                    refuse(f"a corrupt header ({exc})")
                count, total, extended = count + 1, total + info.size, info.type in _EXTENDED
                if count > _MAX_MEMBERS:
                    refuse(f"more than {_MAX_MEMBERS} members")
                if extended and not 0 <= info.size <= _MAX_EXTENDED_BYTES:
                    refuse(f"an extended header (GNU long name or link, pax) of {info.size:,} bytes")
                if not 0 <= info.size <= _MAX_MEMBER_BYTES:
                    refuse(f"a member {info.name!r} of {info.size:,} bytes")
                if info.type == tarfile.GNUTYPE_SPARSE:
                    refuse(f"a sparse member {info.name!r}")
                if total > _MAX_TOTAL_BYTES:
                    refuse(f"more than {_MAX_TOTAL_BYTES:,} bytes in its members")
                skip, data = info.size if extended or info.isreg() or info.type not in tarfile.SUPPORTED_TYPES else 0, b""
                for left in range(-(-skip // 512) * 512, 0, -(1 << 20)):  # as tarfile skips (or not)
                    data = f.read(min(left, 1 << 20))  # an extended header is read whole: it is at most 64 KiB
                if extended and re.search(rb"\d (size=|GNU\.sparse\.)", data):
                    refuse("an extended header setting a size or a sparse map")
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, or cut short
        refuse(f"no complete gzip stream ({type(exc).__name__}: {exc})")


def _read_member(tar: tarfile.TarFile, member_name: str, path: Path):
    try:
        info = tar.getmember(f"{_MEMBER_DIR}/{member_name}")
    except KeyError:
        raise ValueError(f"{path} has no member {_MEMBER_DIR}/{member_name}; is it the CIFAR-10 python "
                         f"tarball? {_where_to_get(path)}") from None
    if not info.isfile():
        raise ValueError(f"{path}: {info.name} is not a regular file")
    f = tar.extractfile(info)
    assert f is not None
    with f:
        obj = _safe_unpickle(f.read(), f"{path}:{info.name}")
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: {info.name} does not hold a dict (got {type(obj).__name__})")
    return obj


def _decode_batch(batch: dict, where: str):
    data = np.asarray(_get(batch, "data"))
    labels = np.asarray(_get(batch, "labels"), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where}: expected uint8 data of shape [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{where}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{where}: labels outside 0..9")
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(path, split: str = "train", expected_md5: str | None = CIFAR10_MD5):
    """Load one split of CIFAR-10 straight from the tarball at ``path``.

    Returns ``(images, labels)``: ``images`` uint8 numpy array [N, 3, 32, 32] (RGB, CHW) and
    ``labels`` int64 [N] in 0..9. ``split`` is ``"train"`` (50,000 images, data_batch_1..5 in order)
    or ``"test"`` (10,000). The checksum is verified first unless ``expected_md5`` is None.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    path = ensure_cifar10(path, download=False, expected_md5=expected_md5)
    images, labels = [], []
    _check_archive(path)
    with tarfile.open(path, mode="r:gz") as tar:
        for member in _SPLITS[split]:
            x, y = _decode_batch(_read_member(tar, member, path), f"{path}:{member}")
            images.append(x)
            labels.append(y)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def load_label_names(path, expected_md5: str | None = CIFAR10_MD5) -> list[str]:
    """Class names from ``batches.meta`` (``airplane``, ``automobile``, ...)."""
    path = ensure_cifar10(path, download=False, expected_md5=expected_md5)
    _check_archive(path)
    with tarfile.open(path, mode="r:gz") as tar:
        meta = _read_member(tar, "batches.meta", path)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, "label_names")]
