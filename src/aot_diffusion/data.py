"""Dataset preparation: every profile ends in one .npz with images in [-1, 1] and int labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .utils import atomic_path

__all__ = ["prepare_dataset", "load_dataset"]


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

    path = Path(params["data"]["cifar10_tarball"])
    cifar10.ensure_cifar10(path, download=params["data"].get("cifar10_download", False))
    out = []
    for split in ("train", "test"):
        images, labels = cifar10.load_cifar10(path, split=split)
        out += [images.astype(np.float32) / 127.5 - 1, labels.astype(np.int64)]
    return (*out, 10)


def prepare_dataset(params: dict, out_path) -> dict:
    name = params["data"]["dataset"]
    if name == "digits":
        x_tr, y_tr, x_te, y_te, k = _digits(params["data"]["test_fraction"], params["seed"])
    elif name == "cifar10":
        x_tr, y_tr, x_te, y_te, k = _cifar10(params)
    else:
        raise ValueError(f"unknown dataset {name!r}")
    with atomic_path(out_path, suffix=".npz") as tmp:
        np.savez(tmp, train_images=x_tr.astype(np.float32), train_labels=y_tr.astype(np.int64),
                 test_images=x_te.astype(np.float32), test_labels=y_te.astype(np.int64), num_classes=k)
    return dict(dataset=name, train=int(len(x_tr)), test=int(len(x_te)), num_classes=int(k),
                shape=list(x_tr.shape[1:]))


def load_dataset(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} not found: run the prepare_data stage first")
    with np.load(path) as d:
        return {k: d[k] for k in d.files}
