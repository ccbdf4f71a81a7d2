"""Approximated optimal transport (AOT): pair each image of a pool with a noise by exact assignment.

As in the official code, the cost is the Euclidean (not squared) distance between flattened
images and noises, and the assignment minimising the total cost is solved exactly. With class
labels the pool is split by class and each class is solved on its own, so noise never moves
across classes.

Exact solvers: ``lap`` (Jonker-Volgenant, the fastest), ``scipy`` (linear_sum_assignment) and
``pot`` (network simplex); ``auto`` takes the fastest one installed. All reach the same optimum
and release the GIL while they solve (lap through ctypes, see ``_lap_routine``), so a pool paired
in a background thread does not stall training, and class-wise subproblems run in a thread pool.

``knn_noise`` is the nearest-of-k baseline (Immiscible-style), not an assignment: see its doc.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

import numpy as np

# torch is imported inside the functions: the parameter schema reads PAIRINGS below, and the Snakefile that
# validates the parameters should not pay for importing torch.
if TYPE_CHECKING:
    import torch

__all__ = ["PAIRINGS", "PAIRING_OPTIONS", "register_pairing", "unregister_pairing", "pair", "pair_noise", "knn_noise", "assignment", "pairwise_cost",
           "resolve_solver", "available_solvers", "labels_to_ids", "mean_distance", "ASSIGNMENT_SOLVERS"]

ASSIGNMENT_SOLVERS = ("auto", "lap", "scipy", "pot")
_PACKAGES = {"lap": ("lap", "lap"), "scipy": ("scipy", "scipy"), "pot": ("ot", "POT")}  # module, pip name


def available_solvers() -> tuple:
    """Exact solvers whose package is installed, fastest first."""
    return tuple(s for s in ("lap", "scipy", "pot") if importlib.util.find_spec(_PACKAGES[s][0]) is not None)


def resolve_solver(solver: str) -> str:
    """The concrete solver behind ``solver``; a clear error when it is unknown or not installed."""
    if solver not in ASSIGNMENT_SOLVERS:
        raise ValueError(f"solver must be one of {ASSIGNMENT_SOLVERS}, got {solver!r}")
    installed = available_solvers()
    if solver == "auto":
        if not installed:
            raise ImportError("no exact assignment solver is installed: pip install lap (or scipy)")
        return installed[0]
    if solver not in installed:
        module, pip_name = _PACKAGES[solver]
        raise ImportError(f"solver {solver!r} needs the {module!r} module, which is not installed "
                          f"(pip install {pip_name}); installed solvers: {installed}")
    return solver


def labels_to_ids(labels, n: int) -> torch.Tensor:
    """Class ids [n] from int ids [n] or one-hot / soft labels [n, C]."""
    import torch
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


def assignment(cost: np.ndarray, solver: str = "auto") -> np.ndarray:
    """Column assigned to each row by the exact minimum-total-cost assignment of a square cost matrix."""
    solver = resolve_solver(solver)
    cost = np.ascontiguousarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost matrix must be square, got shape {cost.shape}")
    n = cost.shape[0]
    if not np.isfinite(cost).all():
        raise ValueError("cost matrix holds NaN or inf (are the images or the noise finite?)")
    if solver == "lap":
        return _solve_lap(cost)
    if solver == "scipy":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost)
        perm = np.empty(n, dtype=np.int64)
        perm[rows] = cols
        return perm
    import ot

    uniform = np.full(n, 1.0 / n)
    plan = ot.emd(uniform, uniform, cost, numItermax=max(100_000, 50 * n * n))
    perm = plan.argmax(axis=1)
    # ot.emd returns a vertex of the transport polytope, which for uniform marginals is a permutation.
    if np.unique(perm).size != n or not np.allclose(plan[np.arange(n), perm], 1.0 / n):
        raise RuntimeError("POT returned a transport plan that is not a permutation "
                           "(raise numItermax or use another solver)")
    return perm


@functools.lru_cache(maxsize=1)
def _lap_routine():
    """lap's C routine ``int lapjv_internal(uint n, double **cost, int *x, int *y)`` called through ctypes,
    which releases the GIL: ``lap.lapjv`` holds it for the whole solve (measured: a Python thread stalls as
    long as the solve), which would stall training while the next pool is paired in the background.
    None where this build of lap does not export it (the C++-mangled name encodes the signature)."""
    import lap._lapjv

    try:
        routine = ctypes.CDLL(lap._lapjv.__file__)._Z14lapjv_internaljPPdPiS1_
    except (OSError, AttributeError):
        return None
    routine.restype = ctypes.c_int
    routine.argtypes = [ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return routine


def _solve_lap(cost: np.ndarray) -> np.ndarray:
    routine = _lap_routine()
    if routine is None:
        import lap

        return lap.lapjv(cost, extend_cost=False)[1].astype(np.int64)  # x[i] = column of row i
    n = cost.shape[0]
    rows = (ctypes.c_void_p * n)(*range(cost.ctypes.data, cost.ctypes.data + n * cost.strides[0], cost.strides[0]))
    x, y = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
    status = routine(n, rows, x.ctypes.data, y.ctypes.data)
    if status != 0:
        raise MemoryError("lap: out of memory") if status == -1 else RuntimeError(f"lap failed (status {status})")
    return x.astype(np.int64)


def pairwise_cost(images: torch.Tensor, noise: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Euclidean distances [N, N] between flattened images and noises, built where the pool lives.

    Matmul form sqrt(||x||^2 + ||n||^2 - 2 x.n): one GEMM, which is the costly part at 2048 x 3072.
    ``dtype`` defaults to the pool's own precision (float32 at least). A float32 GEMM is about 3x faster
    than a float64 one and, measured on random and digits pools up to 2048 x 3072, gave the same optimal
    assignment every time (benchmarks/pairing.py, part precision).
    """
    import torch
    if dtype is None:
        dtype = torch.promote_types(torch.promote_types(images.dtype, noise.dtype), torch.float32)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"cost_dtype must be torch.float32 or torch.float64, got {dtype}")
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        dtype = torch.float64  # TF32 / bf16 GEMMs round far too coarsely for an exact assignment
    x, z = images.flatten(1).to(dtype), noise.flatten(1).to(dtype)
    sq = torch.addmm((z * z).sum(1)[None, :], x, z.T, alpha=-2)  # one N x N buffer, updated in place
    return sq.add_((x * x).sum(1)[:, None]).clamp_(min=0).sqrt_()


def pair_noise(images: torch.Tensor, noise: torch.Tensor, labels=None, solver: str = "auto",
               return_index: bool = False, cost_dtype: torch.dtype | None = None, workers: int | None = None):
    """Reorder ``noise`` so that row i is the noise assigned to image i.

    The assignment minimises sum_i ||images_i - noise_perm(i)||_2 over all permutations
    (class by class when ``labels`` are given, as int ids [N] or one-hot [N, C]).
    With ``return_index`` also returns the permutation ``perm`` (``noise[perm]`` is the result).
    ``cost_dtype`` is the precision of the distance matrix (default: the pool's, float32 at least; see
    ``pairwise_cost``).
    ``workers`` bounds the threads that solve class-wise subproblems (default: the CPU count).
    """
    import torch
    solver = resolve_solver(solver)
    if isinstance(noise, np.ndarray):  # numpy in, numpy out
        paired, perm = pair_noise(torch.as_tensor(np.asarray(images)), torch.from_numpy(noise), labels, solver,
                                  return_index=True, cost_dtype=cost_dtype, workers=workers)
        return (paired.numpy(), perm.numpy()) if return_index else paired.numpy()
    _check_pool(images, noise)
    n = images.shape[0]
    if labels is None:
        perm = assignment(pairwise_cost(images, noise, cost_dtype).cpu().numpy(), solver)
    else:
        ids = labels_to_ids(labels, n).numpy()
        groups = [np.flatnonzero(ids == c) for c in np.unique(ids)]
        costs = []
        for idx in groups:  # GEMMs one after another: each already uses all the torch threads
            index = torch.as_tensor(idx, device=images.device)
            costs.append(pairwise_cost(images[index], noise[index], cost_dtype).cpu().numpy())
        threads = min(len(groups), workers or os.cpu_count() or 1)
        if threads > 1:
            with ThreadPoolExecutor(threads, thread_name_prefix="aot-classwise") as ex:
                subs = list(ex.map(assignment, costs, [solver] * len(costs)))
        else:
            subs = [assignment(c, solver) for c in costs]
        perm = np.arange(n)
        for idx, sub in zip(groups, subs):
            perm[idx] = idx[sub]
    perm_t = torch.as_tensor(perm, device=noise.device)
    paired = noise[perm_t]
    return (paired, perm_t) if return_index else paired


def knn_noise(images: torch.Tensor, k: int = 4, generator: torch.Generator | None = None, labels=None):
    """Nearest-of-k noise (Immiscible-style baseline): for each image draw ``k`` unit Gaussian noises and keep
    the one nearest to it in Euclidean distance.

    Unlike ``pair_noise`` this is not a permutation of one noise set: each image gets its own candidates,
    so no noise is shared and the kept noises are no longer an i.i.d. N(0, I) sample (they lean towards
    their images); the cost is k draws and k distances per image, with no coupling across the pool.
    Noise is drawn on ``generator``'s device (the CPU by default) and returned on the images' device.
    ``labels`` is accepted so both pairings share a call; it changes nothing, as candidates never leave
    their image (hence never cross classes). Numpy images give a numpy result.
    """
    import torch
    if isinstance(images, np.ndarray):
        return knn_noise(torch.from_numpy(images), k, generator, labels).numpy()
    if not isinstance(images, torch.Tensor):
        raise TypeError("images must be a torch tensor (or a numpy array)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty pool of shape [N, ...], got {list(images.shape)}")
    if labels is not None:
        labels_to_ids(labels, images.shape[0])  # same checks as pair_noise
    dtype = images.dtype if images.is_floating_point() else torch.float32
    draw_device = generator.device if generator is not None else images.device
    candidates = torch.randn((k, *images.shape), generator=generator, device=draw_device, dtype=dtype)
    candidates = candidates.to(images.device)
    dist = (candidates - images.to(dtype)).flatten(2).norm(dim=2)  # [k, N]
    nearest = dist.argmin(dim=0)
    return candidates[nearest, torch.arange(images.shape[0], device=images.device)]


def _check_pool(images, noise):
    import torch
    if not isinstance(images, torch.Tensor) or not isinstance(noise, torch.Tensor):
        raise TypeError("images and noise must be torch tensors (or numpy arrays)")
    if images.shape != noise.shape:
        raise ValueError(f"images {list(images.shape)} and noise {list(noise.shape)} must have the same shape")
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty pool of shape [N, ...], got {list(images.shape)}")
    for name, t in (("images", images), ("noise", noise)):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{name} hold NaN or inf")


def mean_distance(images: torch.Tensor, noise: torch.Tensor) -> float:
    """Mean Euclidean distance between image i and noise i (the quantity AOT lowers)."""
    return (images.flatten(1).float() - noise.flatten(1).float()).norm(dim=1).mean().item()


# ---------------------------------------------------------------------------------------------- the pairings
# How noise is paired with a pool of images, for every caller (training, DG's discriminators, the pool-size
# study): one registry. A model, a study variant or a discriminator names its entry in `pairing` (`none`: EDM's
# independent noise), so a new pairing is one function here or in a plugin file (plugins/pairings/<name>.py).
# Each entry has the same signature:
#     fn(images, noise, class_ids, *, generator, solver, knn_k, **options) -> the noise for each image
# class_ids: int class per image or None; generator: the pool's own (draw from it only, for reproducibility);
# options: the pairing's own settings (a model's pairing_options), declared when it is registered.

PAIRINGS: dict[str, Callable] = {}
PAIRING_OPTIONS: dict[str, dict] = {}  # name -> {option: its schema.Spec}: what a pairing_options entry holds


def register_pairing(name: str, options: dict | None = None):
    """Decorator: add ``fn`` to :data:`PAIRINGS` under ``name`` (lower-case letters, digits, '_'). ``options``:
    {option name: schema.Spec} of the keyword options ``fn`` takes; the run's values are
    the model's (or variant's) ``pairing_options.<name>`` (all of them required, checked by the schema, part of the records)."""
    def add(fn):
        if not name.replace("_", "").isalnum() or not name[:1].isalpha() or name != name.lower():
            raise ValueError(f"pairing name {name!r}: lower-case letters, digits and '_', starting with a letter")
        if name in PAIRINGS or name == "model":  # "model": a discriminator pairs as the model it guides
            raise ValueError(f"pairing {name!r} is registered already" if name in PAIRINGS else
                             "'model' is reserved (a discriminator's pairing: the one of the model it guides)")
        PAIRINGS[name] = fn
        PAIRING_OPTIONS[name] = dict(options or {})
        return fn
    return add


def unregister_pairing(name: str) -> None:
    """Remove an entry (a plugin file imported again registers its pairings anew)."""
    PAIRINGS.pop(name, None)
    PAIRING_OPTIONS.pop(name, None)


@register_pairing("none")
def no_pairing(images, noise, class_ids, *, generator=None, solver="auto", knn_k=4):
    """EDM: each image keeps the noise drawn for it."""
    return noise


@register_pairing("assignment")
def assignment_pairing(images, noise, class_ids, *, generator=None, solver="auto", knn_k=4):
    """AOT: the exact minimum-total-distance assignment of the pool's noise to its images (class by class)."""
    return pair_noise(images, noise, labels=class_ids, solver=solver)


@register_pairing("knn")
def knn_pairing(images, noise, class_ids, *, generator=None, solver="auto", knn_k=4):
    """Nearest of knn_k fresh draws per image (Immiscible-style baseline; not a permutation)."""
    return knn_noise(images, knn_k, generator=generator, labels=class_ids)


def pair(name: str, images, noise, class_ids=None, *, generator=None, solver: str = "auto", knn_k: int = 4,
         options: dict | None = None):
    """Pair ``noise`` with ``images`` by the registered pairing ``name``, with its ``options``."""
    if name not in PAIRINGS:
        raise ValueError(f"unknown pairing {name!r}; registered: {sorted(PAIRINGS)} (aot.PAIRINGS)")
    options = dict(options or {})
    if set(options) != set(PAIRING_OPTIONS[name]):
        raise ValueError(f"pairing {name!r} takes the options {sorted(PAIRING_OPTIONS[name])}, got {sorted(options)} "
                         f"(the pairing_options of {name!r})")
    return PAIRINGS[name](images, noise, class_ids, generator=generator, solver=solver, knn_k=knn_k, **options)
