"""pair_noise: exact Euclidean assignment, class-wise pairing, solver agreement, input errors."""

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from aot_diffusion.aot import pair_noise


def total_cost(images, noise):
    return float(np.linalg.norm(images.reshape(len(images), -1) - noise.reshape(len(noise), -1), axis=1).sum())


def brute_force_optimum(images, noise):
    cost = cdist(images.reshape(len(images), -1), noise.reshape(len(noise), -1))
    return min(cost[np.arange(len(images)), list(p)].sum() for p in itertools.permutations(range(len(images))))


@pytest.mark.parametrize("solver", ["scipy", "pot"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_optimum(solver, seed):
    g = torch.Generator().manual_seed(seed)
    images, noise = torch.randn(7, 1, 2, 3, generator=g, dtype=torch.float64), torch.randn(7, 1, 2, 3, generator=g, dtype=torch.float64)
    paired, perm = pair_noise(images, noise, solver=solver, return_index=True)
    assert sorted(perm.tolist()) == list(range(7))
    assert torch.equal(paired, noise[perm])
    assert total_cost(images.numpy(), paired.numpy()) == pytest.approx(brute_force_optimum(images.numpy(), noise.numpy()), rel=1e-9)


def test_euclidean_not_squared():
    # An instance whose Euclidean optimum (1, 0, 2) differs from the squared-Euclidean one (2, 0, 1).
    images = torch.tensor([[2.0, -1.0], [-3.0, 3.0], [3.0, -3.0]], dtype=torch.float64)
    noise = torch.tensor([[1.0, 2.0], [2.0, -1.0], [3.0, 2.0]], dtype=torch.float64)
    for solver in ("scipy", "pot"):
        _, perm = pair_noise(images, noise, solver=solver, return_index=True)
        assert perm.tolist() == [1, 0, 2]


@pytest.mark.parametrize("n,d", [(64, 16), (256, 64)])
def test_solvers_agree_and_beat_random(n, d):
    g = torch.Generator().manual_seed(n)
    images, noise = torch.rand(n, d, generator=g) * 2 - 1, torch.randn(n, d, generator=g)
    a, b = pair_noise(images, noise, solver="scipy"), pair_noise(images, noise, solver="pot")
    ca, cb = total_cost(images.numpy(), a.numpy()), total_cost(images.numpy(), b.numpy())
    assert ca == pytest.approx(cb, rel=1e-6)
    assert ca < total_cost(images.numpy(), noise.numpy())


def test_classwise_pairing_never_crosses_classes_and_labels_forms_agree():
    g = torch.Generator().manual_seed(0)
    n, k = 60, 4
    images, noise = torch.randn(n, 1, 3, 3, generator=g), torch.randn(n, 1, 3, 3, generator=g)
    ids = torch.randint(0, k, (n,), generator=g)
    _, perm = pair_noise(images, noise, labels=ids, return_index=True)
    assert torch.equal(ids[perm], ids)  # every noise stays within its class
    _, perm_onehot = pair_noise(images, noise, labels=torch.nn.functional.one_hot(ids, k).float(), return_index=True)
    assert torch.equal(perm, perm_onehot)
    for c in range(k):  # class-wise optimum
        idx = (ids == c).nonzero().flatten()
        sub = pair_noise(images[idx], noise[idx])
        assert total_cost(images[idx].numpy(), noise[perm][idx].numpy()) == pytest.approx(
            total_cost(images[idx].numpy(), sub.numpy()), rel=1e-9)


@pytest.mark.parametrize("kwargs,match", [
    (dict(images=torch.zeros(4, 3), noise=torch.zeros(4, 2)), "same shape"),
    (dict(images=torch.zeros(4, 3), noise=torch.zeros(4, 3), labels=torch.zeros(3, dtype=torch.long)), "labels"),
    (dict(images=torch.zeros(4, 3), noise=torch.zeros(4, 3), labels=torch.zeros(5, 2)), "labels"),
    (dict(images=torch.zeros(4, 3), noise=torch.zeros(4, 3), solver="hungarian"), "solver"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pair_noise(**kwargs)


def test_numpy_in_numpy_out():
    rng = np.random.default_rng(3)
    images, noise = rng.standard_normal((20, 5)), rng.standard_normal((20, 5))
    paired = pair_noise(images, noise, labels=np.arange(20) % 3)
    assert isinstance(paired, np.ndarray)
    expected = pair_noise(torch.from_numpy(images), torch.from_numpy(noise), labels=torch.arange(20) % 3)
    assert np.array_equal(paired, expected.numpy())
