"""Small shared helpers: atomic, byte-reproducible writes that honour the umask; thread settings."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["AtomicPath", "atomic_save", "atomic_write_text", "remove_stale_temps", "set_threads", "set_tf32"]

_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


class AtomicPath:
    """Context manager yielding a temporary path next to ``path``; renamed onto it only on success.

    A reader never sees a half-written ``path``; on an exception the temporary file is removed and
    ``path`` is left as it was. The result gets the permissions an ordinary ``open(path, "w")`` would
    give (``0o666 & ~umask``), not mkstemp's private 0600.
    """

    def __init__(self, path, suffix: str = ""):
        self.path = Path(path)
        self.suffix = suffix or self.path.suffix

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp" + self.suffix, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.chmod(self.tmp, 0o666 & ~_current_umask())
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def remove_stale_temps(path) -> list:
    """Remove what a killed writer of ``path`` left behind (AtomicPath's ``.<name>.*.tmp*`` files). Call it
    only from the one job that writes ``path``, before it writes."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp*")) if path.parent.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def atomic_save(obj, path) -> None:
    """``torch.save`` to ``path`` atomically. Saving through an open handle fixes the zip's root folder
    ("archive"; a path would record the random temporary name), so equal content gives equal bytes."""
    with AtomicPath(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path, text: str) -> None:
    with AtomicPath(path) as tmp:
        tmp.write_text(text)


def set_threads(n: int | None) -> None:
    """Use ``n`` intra-op threads (the Snakemake rule's ``threads``), so parallel jobs don't oversubscribe."""
    if n:
        torch.set_num_threads(int(n))
        os.environ.setdefault("OMP_NUM_THREADS", str(int(n)))


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions, both ways (torch leaves cuDNN's on by default; EDM's
    training loop turns both off). Set before any CUDA work; no effect on a CPU."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)
