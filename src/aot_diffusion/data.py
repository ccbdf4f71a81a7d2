"""Dataset preparation: every profile ends in one .npz with images in [-1, 1] and int labels.

The file is checked when written and again when read (:func:`check_dataset`): finite images in
[-1, 1] shaped (N, C, H, W), the same image shape in both splits, integer labels in
[0, num_classes) with one per image. A file that fails, or cannot be read at all (truncated,
not an .npz), is reported by name with the fix: rerun the prepare_data stage.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .safe_pickle import safe_np_load
from .utils import AtomicPath

__all__ = ["prepare_dataset", "load_dataset", "check_dataset", "DatasetError"]

_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "num_classes")


class DatasetError(ValueError):
    """A prepared dataset file that is unreadable or violates the dataset contract."""


def _digits(test_fraction: float, seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = (d.images.astype(np.float32) / 16.0) * 2 - 1  # 0..16 grey levels -> [-1, 1]
    x_tr, x_te, y_tr, y_te = train_test_split(images[:, None], d.target, test_size=test_fraction,
                                              random_state=seed, stratify=d.target)
    return x_tr, y_tr, x_te, y_te, 10


def _cifar10(params):
    from . import cifar10

    path, md5 = Path(params["data"]["cifar10_tarball"]), params["data"]["cifar10_md5"]
    cifar10.ensure_cifar10(path, download=params["data"]["cifar10_download"], expected_md5=md5)
    out = []
    for split in ("train", "test"):
        images, labels = cifar10.load_cifar10(path, split=split, expected_md5=None)  # checked just above
        out += [images.astype(np.float32) / 127.5 - 1, labels.astype(np.int64)]
    return (*out, 10)


def check_dataset(d: dict, where) -> dict:
    """Raise :class:`DatasetError` naming ``where`` unless ``d`` satisfies the dataset contract."""
    def fail(problem):
        raise DatasetError(f"dataset {where}: {problem}; rerun the prepare_data stage")

    missing = [k for k in _KEYS if k not in d]
    if missing:
        fail(f"missing arrays {missing}")
    k = d["num_classes"]
    if np.ndim(k) != 0 or not np.issubdtype(np.asarray(k).dtype, np.integer) or int(k) < 1:
        fail(f"num_classes must be a positive integer, got {k!r}")
    shape = None
    for split in ("train", "test"):
        x, y = d[f"{split}_images"], d[f"{split}_labels"]
        if x.ndim != 4 or 0 in x.shape:
            fail(f"{split}_images must have shape (N, C, H, W) with N > 0, got {list(x.shape)}")
        if shape is not None and x.shape[1:] != shape:
            fail(f"train and test images differ in shape: {list(shape)} vs {list(x.shape[1:])}")
        shape = x.shape[1:]
        if not np.issubdtype(x.dtype, np.floating):
            fail(f"{split}_images must be floating point, got {x.dtype}")
        if not np.isfinite(x).all():
            fail(f"{split}_images holds {int((~np.isfinite(x)).sum())} NaN/inf values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1 - 1e-6 or hi > 1 + 1e-6:
            fail(f"{split}_images must lie in [-1, 1], found [{lo:.4g}, {hi:.4g}]")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            fail(f"{split}_labels must be a 1-D integer array, got {y.dtype} {list(y.shape)}")
        if len(y) != len(x):
            fail(f"{len(x)} {split} images but {len(y)} {split} labels")
        if y.min() < 0 or y.max() >= int(k):
            fail(f"{split}_labels must lie in [0, {int(k)}), found [{y.min()}, {y.max()}]")
    return d


def prepare_dataset(params: dict, out_path) -> dict:
    name = params["data"]["dataset"]
    if name == "digits":
        x_tr, y_tr, x_te, y_te, k = _digits(params["data"]["test_fraction"], params["seed"])
    elif name == "cifar10":
        x_tr, y_tr, x_te, y_te, k = _cifar10(params)
    else:
        raise ValueError(f"unknown dataset {name!r}")
    arrays = dict(train_images=x_tr.astype(np.float32), train_labels=y_tr.astype(np.int64),
                  test_images=x_te.astype(np.float32), test_labels=y_te.astype(np.int64), num_classes=np.int64(k))
    check_dataset(arrays, f"{name} (being written to {out_path})")
    with AtomicPath(out_path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return dict(dataset=name, train=int(len(x_tr)), test=int(len(x_te)), num_classes=int(k),
                shape=list(x_tr.shape[1:]))


def load_dataset(path) -> dict:
    """The arrays of a prepared dataset file, checked (:func:`check_dataset`); never unpickles."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} not found: run the prepare_data stage first")
    try:
        with safe_np_load(path) as d:
            arrays = {k: d[k] for k in d.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DatasetError(f"dataset {path} is unreadable ({type(exc).__name__}: {exc}); it may be truncated "
                           f"or corrupt; rerun the prepare_data stage") from None
    return check_dataset(arrays, path)
