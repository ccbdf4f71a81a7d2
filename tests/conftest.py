import os
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "edm_reference"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def gaussian_mixture_denoiser(means, std, weights):
    """Exact posterior mean E[x0 | x0 + sigma n = x] for x0 ~ sum_k w_k N(mu_k, std^2 I)."""
    means = torch.as_tensor(means, dtype=torch.float64)
    log_w = torch.log(torch.as_tensor(weights, dtype=torch.float64))
    std2 = float(std) ** 2

    def denoise(x, sigma, class_labels=None):
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        var = std2 + torch.as_tensor(sigma, dtype=torch.float64) ** 2
        sq = torch.cdist(flat, means) ** 2
        logits = log_w - 0.5 * sq / var  # shared normalisers cancel
        resp = logits.softmax(dim=1)
        posterior_means = means[None] + (std2 / var) * (flat[:, None] - means[None])
        return (resp[..., None] * posterior_means).sum(1).reshape(x.shape)

    return denoise


@pytest.fixture(scope="session")
def sampler_golden():
    return dict(np.load(REFERENCE / "edm_sampler_golden.npz"))
