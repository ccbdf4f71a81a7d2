"""Samples as stored on disk: uint8 pixels, as EDM writes its images before FID."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .safe_pickle import safe_np_load
from .layout import parse_sample_key, sample_key
from .utils import AtomicPath

__all__ = ["to_uint8", "from_uint8", "write_sweep", "read_sweep"]


def to_uint8(images) -> np.ndarray:
    """[-1, 1] floats -> uint8 pixels (round to nearest, clip). Pixels that are already uint8 are refused:
    scaled again they would all clip to 255."""
    if np.asarray(images).dtype == np.uint8:
        raise TypeError("to_uint8 got uint8 pixels: they are stored already (read them with from_uint8)")
    x = np.asarray(images, dtype=np.float32)
    return np.clip(np.rint(x * 127.5 + 127.5), 0, 255).astype(np.uint8)


def from_uint8(images) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1]."""
    return np.asarray(images, dtype=np.float32) / 127.5 - 1


# One file per model (or guided run): one uint8 array per sampler setting, keyed by layout.sample_key, and
# per setting the discriminator gradient evaluations of a guided run ("grad_evals/<key>").

def write_sweep(path, images: dict, grad_evals: dict | None = None) -> None:
    """``images``: {(steps, rho, seed): float images in [-1, 1]}; written atomically as uint8 pixels."""
    arrays = {sample_key(*setting): to_uint8(x) for setting, x in images.items()}
    arrays.update({f"grad_evals/{sample_key(*setting)}": np.array(int(n)) for setting, n in (grad_evals or {}).items()})
    with AtomicPath(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def read_sweep(path):
    """Yield (steps, rho, seed, uint8 images, grad_evals) for every setting of a samples file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"samples file {path} not found: run its sampling stage first")
    try:
        with safe_np_load(path) as f:
            for key in f.files:
                if key.startswith("grad_evals/"):
                    continue
                grads = int(f[f"grad_evals/{key}"]) if f"grad_evals/{key}" in f.files else 0
                yield (*parse_sample_key(key), f[key], grads)
    except (OSError, ValueError) as exc:
        raise ValueError(f"samples file {path} is unreadable ({exc}); delete it and rerun its sampling stage") from None
