"""Curvature kappa(sigma) and truncation error on denoisers whose PF-ODE paths are known.

A point mass (D = y) and an isotropic Gaussian (D = mu + s^2 / (s^2 + sigma^2) (x - mu)) have
straight PF-ODE paths (rays into y / mu): kappa must vanish. A two-point mixture bends its paths
when the posterior picks a mode: kappa must be clearly positive there.
"""

import math

import numpy as np
import pytest
import torch

from aot_diffusion.metrics.curvature import curvature_on_grid, curvature_profile, fine_trajectory, truncation_error
from aot_diffusion.sampling import edm_sampler
from conftest import gaussian_mixture_denoiser

SHAPE = (16, 1, 4, 4)
MU = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64).reshape(1, 1, 4, 4)


def _latents(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def point_mass(x, sigma, class_labels=None):
    return MU.expand_as(x)


def isotropic_gaussian(x, sigma, class_labels=None, std=0.5):
    return MU + std ** 2 / (std ** 2 + sigma ** 2) * (x - MU)


two_point_mixture = gaussian_mixture_denoiser(np.stack([np.full(16, -1.0), np.full(16, 1.0)]), 0.1, [0.5, 0.5])


def _profile(denoise, fine_steps=64):
    samples, trajectory = fine_trajectory(denoise, _latents(), fine_steps=fine_steps)
    return curvature_profile(samples, trajectory)


@pytest.mark.parametrize("denoise", [point_mass, isotropic_gaussian], ids=["point_mass", "gaussian"])
def test_straight_paths_have_zero_curvature(denoise):
    sigma, kappa = _profile(denoise)
    assert kappa.shape == (len(sigma), SHAPE[0])
    # A flipped chord (x_end - x) would give kappa = 2 here, a wrong d (e.g. D - x) likewise.
    assert np.abs(kappa).max() <= 1e-6


def test_two_point_mixture_is_curved():
    sigma, kappa = _profile(two_point_mixture)
    mean = kappa.mean(axis=1)
    assert mean.max() > 1e-3 and kappa.max() > 1e-2  # paths bend where the posterior picks a mode
    # once a sample has committed to its mode (small sigma) the path is a ray into it: straight again
    assert np.abs(kappa[sigma < 0.05]).max() <= 1e-6
    assert (kappa >= -1e-12).all() and (kappa <= 2).all()


def test_curvature_is_one_minus_cosine_against_the_chord():
    # one evaluation: x = e1, sample = 0 (chord = e1), d = (x - D) / sigma at 60 degrees to it
    sigma = 2.0
    x = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    x[..., 0] = 1.0
    d = torch.tensor([math.cos(math.pi / 3), math.sin(math.pi / 3)], dtype=torch.float64).reshape(1, 1, 1, 2)
    trajectory = {"sigma": torch.tensor([sigma], dtype=torch.float64), "x": x[None], "denoised": (x - sigma * d)[None]}
    _, kappa = curvature_profile(torch.zeros(1, 1, 1, 2, dtype=torch.float64), trajectory)
    assert kappa[0, 0] == pytest.approx(0.5, abs=1e-12)
    _, kappa_back = curvature_profile(torch.full((1, 1, 1, 2), 2.0, dtype=torch.float64), trajectory)
    assert kappa_back[0, 0] > 1.0  # chord x - x_end now points away from d: obtuse angle


def test_curvature_on_grid_interpolates_in_log_sigma():
    sigma = np.exp(np.linspace(np.log(80.0), np.log(0.002), 40))  # descending, as the solver visits them
    kappa = np.stack([np.log(sigma), np.log(sigma) + 2], axis=1)  # mean = log(sigma) + 1
    grid, on_grid = curvature_on_grid(sigma, kappa, 9)
    assert grid[0] == pytest.approx(0.002) and grid[-1] == pytest.approx(80.0) and np.all(np.diff(grid) > 0)
    assert np.allclose(np.diff(np.log(grid)), np.log(grid[1] / grid[0]))  # log-uniform
    assert np.allclose(on_grid, np.log(grid) + 1, atol=1e-9)


def test_truncation_error_is_rms_distance_and_shrinks_with_steps():
    fine = torch.zeros(4, 1, 2, 2, dtype=torch.float64)
    assert truncation_error(fine + 0.3, fine) == pytest.approx(0.3)
    assert truncation_error(fine + torch.tensor([0.0, 0.0, 0.0, 2.0]).reshape(4, 1, 1, 1), fine) == pytest.approx(1.0)
    reference = fine_trajectory(two_point_mixture, _latents(1), fine_steps=256)[0]
    errors = [truncation_error(edm_sampler(two_point_mixture, _latents(1), num_steps=n), reference) for n in (4, 8, 32)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-2
    # a point mass: x = y + sigma n is straight *and* linear in sigma, so even 2 Heun steps are exact
    exact = fine_trajectory(point_mass, _latents(1), fine_steps=256)[0]
    assert truncation_error(edm_sampler(point_mass, _latents(1), num_steps=2), exact) <= 1e-10
