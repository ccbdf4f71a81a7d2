"""Approximated optimal transport (AOT): pair each image of a pool with a noise by exact assignment.

As in the official code, the cost is the Euclidean (not squared) distance between flattened
images and noises, and the assignment minimising the total cost is solved exactly. With class
labels the pool is split by class and each class is solved on its own, so noise never moves
across classes.
"""

from __future__ import annotations


import numpy as np
import torch

__all__ = ["pair_noise", "assignment", "labels_to_ids", "mean_distance", "SOLVERS"]

SOLVERS = ("scipy", "pot")


def labels_to_ids(labels, n: int) -> torch.Tensor:
    """Class ids [n] from int ids [n] or one-hot / soft labels [n, C]."""
    labels = torch.as_tensor(labels)
    if labels.ndim == 2:
        if labels.shape[0] != n:
            raise ValueError(f"labels has {labels.shape[0]} rows but the pool has {n} images")
        return labels.argmax(dim=1).cpu()
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be class ids of shape [{n}] or one-hot of shape [{n}, C], "
                         f"got shape {list(labels.shape)}")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("class-id labels must be integers")
    return labels.long().cpu()


def assignment(cost: np.ndarray, solver: str = "scipy") -> np.ndarray:
    """Column assigned to each row by the exact minimum-total-cost assignment of a square cost matrix."""
    cost = np.asarray(cost, dtype=np.float64)
    n = cost.shape[0]
    if cost.ndim != 2 or cost.shape[1] != n:
        raise ValueError(f"cost matrix must be square, got shape {cost.shape}")
    if solver == "scipy":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost)
        perm = np.empty(n, dtype=np.int64)
        perm[rows] = cols
        return perm
    if solver == "pot":
        import ot

        uniform = np.full(n, 1.0 / n)
        plan = ot.emd(uniform, uniform, cost, numItermax=max(100_000, 50 * n * n))
        perm = plan.argmax(axis=1)
        # ot.emd returns a vertex of the transport polytope, which for uniform marginals is a permutation.
        if np.unique(perm).size != n or not np.allclose(plan[np.arange(n), perm], 1.0 / n):
            raise RuntimeError("POT returned a transport plan that is not a permutation "
                               "(raise numItermax or use solver='scipy')")
        return perm
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


def _pairwise_cost(images: torch.Tensor, noise: torch.Tensor) -> np.ndarray:
    # Built where the pool lives (the GPU in training): at 2048 x 3072 this is the costly part.
    # float64 on the CPU keeps near-ties exact; float32 on accelerators.
    dtype = torch.float64 if images.device.type == "cpu" else torch.float32
    cost = torch.cdist(images.flatten(1).to(dtype), noise.flatten(1).to(dtype))
    return cost.double().cpu().numpy()


def pair_noise(images: torch.Tensor, noise: torch.Tensor, labels=None, solver: str = "scipy",
               return_index: bool = False):
    """Reorder ``noise`` so that row i is the noise assigned to image i.

    The assignment minimises sum_i ||images_i - noise_perm(i)||_2 over all permutations
    (class by class when ``labels`` are given, as int ids [N] or one-hot [N, C]).
    With ``return_index`` also returns the permutation ``perm`` (``noise[perm]`` is the result).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if isinstance(noise, np.ndarray):  # numpy in, numpy out
        paired, perm = pair_noise(torch.as_tensor(np.asarray(images)), torch.from_numpy(noise), labels, solver,
                                  return_index=True)
        return (paired.numpy(), perm.numpy()) if return_index else paired.numpy()
    if not isinstance(images, torch.Tensor) or not isinstance(noise, torch.Tensor):
        raise TypeError("images and noise must be torch tensors (or numpy arrays)")
    if images.shape != noise.shape:
        raise ValueError(f"images {list(images.shape)} and noise {list(noise.shape)} must have the same shape")
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty pool of shape [N, ...], got {list(images.shape)}")
    n = images.shape[0]
    perm = np.arange(n)
    if labels is None:
        perm = assignment(_pairwise_cost(images, noise), solver)
    else:
        ids = labels_to_ids(labels, n).numpy()
        for c in np.unique(ids):
            idx = np.flatnonzero(ids == c)
            index = torch.as_tensor(idx, device=images.device)
            sub = assignment(_pairwise_cost(images[index], noise[index]), solver)
            perm[idx] = idx[sub]
    perm_t = torch.as_tensor(perm, device=noise.device)
    paired = noise[perm_t]
    return (paired, perm_t) if return_index else paired


def mean_distance(images: torch.Tensor, noise: torch.Tensor) -> float:
    """Mean Euclidean distance between image i and noise i (the quantity AOT lowers)."""
    return (images.flatten(1).float() - noise.flatten(1).float()).norm(dim=1).mean().item()
