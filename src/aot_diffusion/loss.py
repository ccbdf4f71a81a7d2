"""EDM's training loss with the unit noise passed in, so training can use paired (AOT) or random noise.

ln(sigma) ~ N(P_mean, P_std^2), y_noisy = y + sigma * n,
loss = lambda(sigma) * ||D(y_noisy; sigma) - y||^2, lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["EDMLoss", "sample_sigma", "loss_weight"]


def sample_sigma(n: int, P_mean: float = -1.2, P_std: float = 1.2, *, generator=None, device=None) -> torch.Tensor:
    """Per-sample noise levels, log-normal as in EDM, shape [n, 1, 1, 1]."""
    rnd = torch.randn([n, 1, 1, 1], generator=generator, device=device)
    return (rnd * P_std + P_mean).exp()


def loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


class EDMLoss:
    """Callable loss: ``loss(net, images, noise, labels=None, augment_labels=None)`` -> per-element loss."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data

    def __call__(self, net, images: torch.Tensor, noise: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 augment_labels: Optional[torch.Tensor] = None, sigma: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if images.shape != noise.shape:
            raise ValueError(f"images {list(images.shape)} and noise {list(noise.shape)} must have the same shape")
        if sigma is None:  # drawn after pairing, independently of it
            sigma = sample_sigma(images.shape[0], self.P_mean, self.P_std, generator=generator, device=images.device)
        sigma = sigma.reshape(-1, 1, 1, 1).to(images.dtype)
        denoised = net(images + sigma * noise, sigma, labels, augment_labels=augment_labels)
        return loss_weight(sigma, self.sigma_data) * (denoised - images) ** 2
