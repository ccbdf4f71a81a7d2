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
           "frechet_distance", "classifier_fid", "cifar10_inception_fid"]


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
    images = torch.as_tensor(images, dtype=torch.float32).clamp(-1, 1)
    return torch.cat([model.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).double().numpy()


def feature_statistics(features: np.ndarray):
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(stats_a, stats_b) -> float:
    from cleanfid.fid import frechet_distance as _fd

    return float(_fd(stats_a[0], stats_a[1], stats_b[0], stats_b[1]))


def classifier_fid(model, samples, reference_stats) -> float:
    return frechet_distance(feature_statistics(extract_features(model, samples)), reference_stats)


def cifar10_inception_fid(generate_batch, num_gen: int = 50_000, batch_size: int = 500, device="cuda") -> float:
    """EDM protocol through clean-fid: Inception features, legacy_tensorflow mode, CIFAR-10 train statistics.

    ``generate_batch(z)`` must return uint8-range images [B, 3, 32, 32]; clean-fid calls it with its own latents.
    Needs clean-fid's Inception weights and cifar10 statistics in its cache (see README, offline use).
    """
    from cleanfid import fid

    return float(fid.compute_fid(gen=generate_batch, dataset_name="cifar10", dataset_res=32, dataset_split="train",
                                 mode="legacy_tensorflow", num_gen=num_gen, batch_size=batch_size,
                                 device=torch.device(device), z_dim=3 * 32 * 32))
