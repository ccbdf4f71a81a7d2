"""Paper-scale FID (cifar10): clean-fid's Inception features, ``legacy_tensorflow`` mode, against
its CIFAR-10 train statistics, as in EDM's protocol. Assets are checked before any sampling."""

from __future__ import annotations

import os

import numpy as np
import torch

from .fd import feature_statistics, frechet_distance

__all__ = ["INCEPTION_FILE", "check_inception_assets", "inception_features", "cifar10_reference_statistics",
           "cifar10_inception_fid"]

INCEPTION_FILE = "/tmp/inception-2015-12-05.pt"  # where clean-fid looks for (and downloads) its weights


def _cleanfid_stats_path(name="cifar10", res=32, mode="legacy_tensorflow", split="train"):
    import cleanfid

    return os.path.join(os.path.dirname(cleanfid.__file__), "stats", f"{name}_{mode}_{split}_{res}.npz".lower())


def check_inception_assets(allow_download: bool = False) -> None:
    """Fail before any sampling when clean-fid's Inception weights or CIFAR-10 statistics are missing offline."""
    missing = [p for p in (INCEPTION_FILE, _cleanfid_stats_path()) if not os.path.exists(p)]
    if missing and not allow_download:
        raise FileNotFoundError(
            "clean-fid's Inception FID needs files that are not on this machine: " + ", ".join(missing) +
            ". Pre-seed them on a machine with network access (see docs/cifar10.md, 'Offline Inception FID'): "
            "python -c \"from cleanfid import fid; fid.get_reference_statistics('cifar10', 32, "
            "mode='legacy_tensorflow', split='train'); from cleanfid.features import build_feature_extractor; "
            "build_feature_extractor('legacy_tensorflow', device='cpu')\" and copy "
            f"{INCEPTION_FILE} and {_cleanfid_stats_path()} here, or set fid.allow_download: true.")


def inception_features(images_uint8, *, device="cuda", batch_size=500, feature_model=None) -> np.ndarray:
    """clean-fid's Inception features of uint8 images [N, 3, H, W] (the network resizes to 299 itself)."""
    from cleanfid.fid import get_batch_features

    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Inception features take uint8 RGB images [N, 3, H, W], got {images.dtype} "
                         f"of shape {list(images.shape)}")
    if feature_model is None:
        from cleanfid.features import build_feature_extractor

        feature_model = build_feature_extractor("legacy_tensorflow", device=torch.device(device), use_dataparallel=False)
    feats = [get_batch_features(torch.from_numpy(images[i:i + batch_size]).float(), feature_model, torch.device(device))
             for i in range(0, len(images), batch_size)]
    return np.concatenate(feats)


def cifar10_reference_statistics():
    from cleanfid.features import get_reference_statistics

    return get_reference_statistics("cifar10", 32, mode="legacy_tensorflow", split="train")


def cifar10_inception_fid(images_uint8, *, device="cuda", batch_size=500, feature_model=None, reference=None) -> float:
    """EDM protocol through clean-fid: Inception features, legacy_tensorflow mode, CIFAR-10 train statistics."""
    feats = inception_features(images_uint8, device=device, batch_size=batch_size, feature_model=feature_model)
    return frechet_distance(feature_statistics(feats), reference or cifar10_reference_statistics())
