"""ODE-trajectory curvature and truncation error (definitions: docs/method.md, "Curvature").

kappa(sigma) = 1 - cos(angle between d(x_sigma, sigma) = (x_sigma - D(x_sigma; sigma)) / sigma and
x_sigma - x_end): 0 for a straight trajectory whatever its speed. The fine solve (>= 256 Heun steps)
is the reference path; truncation error is the RMS distance between a coarse solve's sample and the
fine sample from the same latent.
"""

from __future__ import annotations

import numpy as np
import torch

from ..sampling import edm_sampler

__all__ = ["fine_trajectory", "curvature_profile", "curvature_on_grid", "truncation_error"]


def fine_trajectory(denoise, latents, *, fine_steps=256, rho=7.0, sigma_min=0.002, sigma_max=80.0,
                    class_labels=None):
    """The reference solve (Heun, ``fine_steps`` steps): (samples, trajectory of every evaluation)."""
    return edm_sampler(denoise, latents, num_steps=fine_steps, rho=rho, sigma_min=sigma_min, sigma_max=sigma_max,
                       class_labels=class_labels, return_trajectory=True)


def curvature_profile(samples, trajectory):
    """kappa at every evaluation of the fine solve: returns (sigma [E], kappa [E, N]).

    The chord x_sigma - x_end points from the end of the path to the current point, as the
    tangent d = dx/dsigma does on a straight path (x = y + sigma n): cos = 1, kappa = 0.
    """
    sigma = trajectory["sigma"].double()
    x = trajectory["x"].double()
    d = (x - trajectory["denoised"].double()) / sigma.reshape(-1, *[1] * (x.ndim - 1))
    chord = x - samples.double()[None]
    cos = torch.nn.functional.cosine_similarity(d.flatten(2), chord.flatten(2), dim=2, eps=1e-30)
    return sigma.cpu().numpy(), (1 - cos).cpu().numpy()


def curvature_on_grid(sigma, kappa, grid_size, sigma_min=0.002, sigma_max=80.0):
    """Mean-over-samples kappa interpolated onto a log-uniform sigma grid (ascending)."""
    grid = np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), grid_size))
    mean = kappa.mean(axis=1)
    order = np.argsort(sigma)
    return grid, np.interp(np.log(grid), np.log(sigma[order]), mean[order])


def truncation_error(coarse_samples, fine_samples) -> float:
    """RMS distance between a coarse solve's samples and the fine solve's, from the same latents."""
    return float(torch.sqrt(torch.mean((coarse_samples.double() - fine_samples.double()) ** 2)).item())
