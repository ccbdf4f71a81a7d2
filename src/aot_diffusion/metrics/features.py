"""The feature network of the offline FD: a small classifier trained on the profile's own data.

Its penultimate activations are the feature space (Inception's role at paper scale); its test
accuracy is reported beside the FDs it produces.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..sample_files import from_uint8, to_uint8

__all__ = ["FeatureClassifier", "FeatureSpace", "train_classifier", "extract_features"]


class FeatureClassifier(nn.Module):
    """Small CNN; ``features(x)`` (the penultimate activations) is the FD feature space."""

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
    """Train on (train_x, train_y); returns (model in eval mode, accuracy on (test_x, test_y)).

    Every draw (initial weights, batches, input noise) follows ``seed``: two runs are bitwise equal.
    """
    x, y = torch.as_tensor(train_x, dtype=torch.float32), torch.as_tensor(train_y).long()
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise ValueError(f"train_x must be [N, C, H, W] with one label each, got {list(x.shape)} and {list(y.shape)}")
    with torch.random.fork_rng(devices=[]):  # seed the initial weights without moving the caller's stream
        torch.manual_seed(seed)
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
        test_x = torch.as_tensor(test_x, dtype=torch.float32)
        acc = (model(test_x).argmax(1) == torch.as_tensor(test_y)).float().mean().item()
    return model, acc


@torch.no_grad()
def extract_features(model: FeatureClassifier, images, batch_size: int = 1000, device="cpu") -> np.ndarray:
    """Features [N, feature_dim] (float64) of images in [-1, 1] (or uint8 pixels) of the network's input shape."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = from_uint8(images)
    cfg = model.config
    expected = (cfg["img_channels"], cfg["img_resolution"], cfg["img_resolution"])
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images have shape {list(images.shape)} but the feature network takes [N, "
                         f"{', '.join(map(str, expected))}] (were the samples made at another resolution?)")
    if not np.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values (a diverged sampler?)")
    x = torch.as_tensor(images, dtype=torch.float32).clamp(-1, 1)
    model = model.to(device).eval()
    chunks = [model.features(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).double().numpy()


class FeatureSpace:
    """Features of images for the FD: the trained classifier's, or Inception's (cifar10)."""

    def __init__(self, path, device, batch_size):
        from ..safe_pickle import safe_torch_load

        blob = safe_torch_load(path)
        self.network, self.device, self.batch = blob["kind"], device, batch_size  # "classifier" | "inception"
        self.description = blob.get("description", self.network)
        if self.network == "classifier":
            self.model = FeatureClassifier(**blob["config"])
            self.model.load_state_dict(blob["state"])
            self.model.eval().to(self.device)

    def __call__(self, images) -> np.ndarray:
        if self.network == "classifier":
            return extract_features(self.model, images, batch_size=self.batch, device=self.device)
        from .inception import inception_features

        pixels = images if images.dtype == np.uint8 else to_uint8(images)
        return inception_features(pixels, device=self.device, batch_size=self.batch)
