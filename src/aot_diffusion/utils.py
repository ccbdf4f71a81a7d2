"""Small shared helpers: atomic writes, thread settings."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["atomic_save", "atomic_write_text", "atomic_path", "set_threads"]


class atomic_path:
    """Context manager yielding a temporary path next to ``path``; renamed onto it only on success."""

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
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def atomic_save(obj, path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def set_threads(n: int | None) -> None:
    """Use ``n`` intra-op threads (the Snakemake rule's ``threads``), so parallel jobs don't oversubscribe."""
    if n:
        torch.set_num_threads(int(n))
        os.environ.setdefault("OMP_NUM_THREADS", str(int(n)))
