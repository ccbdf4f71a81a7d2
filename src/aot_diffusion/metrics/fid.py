"""Frechet distance through clean-fid.

Offline profiles: features from a small classifier trained on the same dataset (its test accuracy is
reported), statistics and distance from clean-fid's API. Paper scale (cifar10): clean-fid's Inception
features in ``legacy_tensorflow`` mode against its CIFAR-10 train statistics.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FeatureClassifier", "train_classifier", "extract_features", "feature_statistics",
           "frechet_distance", "classifier_fid", "cifar10_inception_fid", "inception_features",
           "check_inception_assets", "to_uint8", "from_uint8"]


class FeatureClassifier(nn.Module):
    """Small CNN; the penultimate activations are the FID feature space."""

    def __init__(self, img_channels: int, img_resolution: int, num_classes: int, feature_dim: int = 64):
        super().__init__()
        self.config = dict(img_channels=img_channels, img_resolution=img_resolution, num_classes=num_classes,
                           feature_dim=feature_dim)
        self.body = nn.Sequential(
            nn.Conv2d(img_channels, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(64 * 4, feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier(train_x, train_y, test_x, test_y, *, num_classes, steps=600, batch_size=128, lr=2e-3,
                     feature_dim=64, seed=0, log=print):
    torch.manual_seed(seed)
    x, y = torch.as_tensor(train_x), torch.as_tensor(train_y).long()
    model = FeatureClassifier(x.shape[1], x.shape[2], num_classes, feature_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=g)
        # Light noise makes features robust to the small artefacts of generated samples.
        xb = x[idx] + 0.05 * torch.randn(x[idx].shape, generator=g)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % max(steps // 5, 1) == 0:
            log(f"[classifier] step {step + 1}/{steps} loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        acc = (model(torch.as_tensor(test_x)).argmax(1) == torch.as_tensor(test_y)).float().mean().item()
    return model, acc


@torch.no_grad()
def extract_features(model: FeatureClassifier, images, batch_size: int = 1000) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = from_uint8(images)
    images = torch.as_tensor(images, dtype=torch.float32).clamp(-1, 1)
    return torch.cat([model.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).double().numpy()


def feature_statistics(features: np.ndarray):
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(stats_a, stats_b) -> float:
    from cleanfid.fid import frechet_distance as _fd

    return float(_fd(stats_a[0], stats_a[1], stats_b[0], stats_b[1]))


def classifier_fid(model, samples, reference_stats) -> float:
    return frechet_distance(feature_statistics(extract_features(model, samples)), reference_stats)


def to_uint8(images) -> np.ndarray:
    """[-1, 1] floats -> uint8 pixels, as EDM writes its samples before FID."""
    x = np.asarray(images, dtype=np.float32)
    return np.clip(np.rint(x * 127.5 + 127.5), 0, 255).astype(np.uint8)


def from_uint8(images) -> np.ndarray:
    return np.asarray(images, dtype=np.float32) / 127.5 - 1


INCEPTION_FILE = "/tmp/inception-2015-12-05.pt"  # where clean-fid looks for (and downloads) its weights


def _cleanfid_stats_path(name="cifar10", res=32, mode="legacy_tensorflow", split="train"):
    import os

    import cleanfid

    return os.path.join(os.path.dirname(cleanfid.__file__), "stats", f"{name}_{mode}_{split}_{res}.npz".lower())


def check_inception_assets(allow_download: bool = False) -> None:
    """Fail before any sampling when clean-fid's Inception weights or CIFAR-10 statistics are missing offline."""
    import os

    missing = [p for p in (INCEPTION_FILE, _cleanfid_stats_path()) if not os.path.exists(p)]
    if missing and not allow_download:
        raise FileNotFoundError(
            "clean-fid's Inception FID needs files that are not on this machine: " + ", ".join(missing) +
            ". Pre-seed them on a machine with network access (see README, 'Offline Inception FID'): "
            "python -c \"from cleanfid import fid; fid.get_reference_statistics('cifar10', 32, "
            "mode='legacy_tensorflow', split='train'); from cleanfid.features import build_feature_extractor; "
            "build_feature_extractor('legacy_tensorflow', device='cpu')\" and copy "
            f"{INCEPTION_FILE} and {_cleanfid_stats_path()} here, or set fid.allow_download: true.")


def inception_features(images_uint8, *, device="cuda", batch_size=500, feature_model=None) -> np.ndarray:
    """clean-fid's Inception features in legacy_tensorflow mode (the network resizes to 299 itself)."""
    from cleanfid.fid import get_batch_features

    if feature_model is None:
        from cleanfid.features import build_feature_extractor

        feature_model = build_feature_extractor("legacy_tensorflow", device=torch.device(device), use_dataparallel=False)
    images = np.asarray(images_uint8)
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
