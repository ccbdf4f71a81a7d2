"""Frechet distance (FD), KID, the real-data floor, and bootstrap confidence intervals that state
the resolution of each number (definitions and the measured coverage: docs/method.md, "FD protocol").

An FD from N samples is biased upward (the mean term alone carries tr(Sigma)/N) and the bias,
not the model, dominates at small N. We therefore report, at the same N:
- the FD of the samples against the reference (train) statistics,
- the floor: the FD of as many held-out *real* images against the same statistics,
- a confidence interval for the FD this N-sample protocol measures, and for paired differences.

Intervals. Resampling with replacement duplicates rows, which inflates the covariance, so the
bootstrap distribution of FD sits above the estimate (a naive percentile interval often excludes
its own estimate). We keep the bootstrap's *spread* and put it back around the estimate:
[theta + q_lo - median*, theta + q_hi - median*], where q are the bootstrap quantiles. The interval
always holds the estimate; its coverage of the median FD at this N is checked on real data by
:func:`interval_coverage` (numbers in docs/method.md).
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["feature_statistics", "frechet_distance", "kid", "fd_ci", "paired_diff_ci", "kid_ci", "bootstrap_fd",
           "interval_coverage", "nearest_distance", "nearest_distances", "fd_draws", "hierarchical_interval", "resample_weights",
           "reference_weights"]


def _check_features(features, what="features", min_rows=2) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [N, D], got shape {list(f.shape)}")
    if f.shape[0] < min_rows:
        raise ValueError(f"{what} needs at least {min_rows} rows, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return f


def _check_stats(stats, dim: int, what="ref_stats"):
    mu, sigma = (np.asarray(s, dtype=np.float64) for s in stats)
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"{what} are for {mu.shape[0] if mu.ndim == 1 else mu.shape}-dim features "
                         f"(mu {list(mu.shape)}, sigma {list(sigma.shape)}) but the features are {dim}-dim")
    return mu, sigma


def _check_ci_args(n_boot, level):
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 20:
        raise ValueError(f"n_boot must be an integer >= 20, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def feature_statistics(features):
    """(mean [D], covariance [D, D]) of features [N, D], as clean-fid computes them."""
    f = _check_features(features)
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


def frechet_distance(stats_a, stats_b) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), by clean-fid."""
    from cleanfid.fid import frechet_distance as cleanfid_fd

    mu_a, sigma_a = _check_stats(stats_a, np.shape(stats_a[0])[0], "stats_a")
    mu_b, sigma_b = _check_stats(stats_b, mu_a.shape[0], "stats_b")
    with warnings.catch_warnings():  # clean-fid passes scipy's deprecated sqrtm(disp=...)
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(cleanfid_fd(mu_a, sigma_a, mu_b, sigma_b))


# ----------------------------------------------------------------------------------------------
# Batched FD of reweighted samples (the bootstrap engine)

def _psd_sqrt(sigma):
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _weighted_fd(features, weights, ref_stats, chunk=100):
    """FD of each reweighted sample (weights [B, N], row sums = sample size) against ref_stats.

    tr (S S_r)^(1/2) = sum sqrt(eig(R S R)) with R = S_r^(1/2): one batched symmetric
    eigendecomposition per chunk instead of a general matrix square root per draw.
    """
    mu_r, sigma_r = ref_stats
    n, dim = features.shape
    center = features.mean(axis=0)  # centring first keeps the second moments well conditioned
    x = features - center
    outer = (x[:, :, None] * x[:, None, :]).reshape(n, dim * dim) if n * dim * dim <= 2 ** 25 else None
    root = _psd_sqrt(sigma_r)
    out = np.empty(weights.shape[0])
    for s in range(0, weights.shape[0], chunk):
        w = weights[s:s + chunk]
        total = w.sum(axis=1)
        mean = (w @ x) / total[:, None]
        second = ((w @ outer).reshape(-1, dim, dim) if outer is not None
                  else np.stack([(x.T * wi) @ x for wi in w]))
        cov = (second - total[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (total - 1)[:, None, None]
        eig = np.linalg.eigvalsh(root @ cov @ root)
        diff = mean + center - mu_r
        out[s:s + chunk] = ((diff ** 2).sum(1) + np.trace(cov, axis1=1, axis2=2) + np.trace(sigma_r)
                            - 2 * np.sqrt(np.clip(eig, 0, None)).sum(1))
    return out


def _resample_weights(n, n_boot, seed):
    """Multiplicity of each row in n_boot resamples of n rows with replacement: [n_boot, n]."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _reference_weights(m, n_boot, seed):
    """The reference set's resamples: a stream of their own (not the samples'), so adding the reference's noise
    leaves the samples' draws as they were."""
    return _resample_weights(m, n_boot, [int(seed), 1])


def _weighted_moments(features, weights):
    """(mean [B, D], covariance [B, D, D]) of each reweighted set (weights [B, N], row sums = N)."""
    n, dim = features.shape
    center = features.mean(axis=0)
    x = features - center
    total = weights.sum(axis=1)
    mean = (weights @ x) / total[:, None]
    if n * dim * dim <= 2 ** 25:
        second = (weights @ (x[:, :, None] * x[:, None, :]).reshape(n, dim * dim)).reshape(-1, dim, dim)
    else:
        second = np.stack([(x.T * w) @ x for w in weights])
    cov = (second - total[:, None, None] * mean[:, :, None] * mean[:, None, :]) / (total - 1)[:, None, None]
    return mean + center, cov


# The reference side of recent two-sample bootstraps: (features, weights) digest -> (mean, cov, cov^(1/2)). Every
# sample set of a job is scored against the same reference resamples (one seeded stream), so they are computed
# once per job, not once per score (the same arithmetic: the same bits).
_REFERENCE_SIDE: dict = {}
_REFERENCE_SIDE_MAX = 16


def _reference_side(ref_features, ref_weights):
    import hashlib

    key = tuple(hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).hexdigest() + str(a.shape)
                for a in (ref_features, ref_weights))
    if key not in _REFERENCE_SIDE:
        mean_r, cov_r = _weighted_moments(ref_features, ref_weights)
        w, v = np.linalg.eigh(cov_r)
        root = (v * np.sqrt(np.clip(w, 0, None))[:, None, :]) @ np.swapaxes(v, 1, 2)
        while len(_REFERENCE_SIDE) >= _REFERENCE_SIDE_MAX:
            _REFERENCE_SIDE.pop(next(iter(_REFERENCE_SIDE)))
        _REFERENCE_SIDE[key] = (mean_r, cov_r, root)
    return _REFERENCE_SIDE[key]


def _two_sample_fd(features, weights, ref_features, ref_weights, chunk=50):
    """FD of each reweighted sample against the same draw's reweighted reference: both sets' noise."""
    out = np.empty(weights.shape[0])
    for s in range(0, weights.shape[0], chunk):
        mean_a, cov_a = _weighted_moments(features, weights[s:s + chunk])
        mean_r, cov_r, root = _reference_side(ref_features, ref_weights[s:s + chunk])
        eig = np.linalg.eigvalsh(root @ cov_a @ root)
        out[s:s + chunk] = (((mean_a - mean_r) ** 2).sum(1) + np.trace(cov_a, axis1=1, axis2=2)
                            + np.trace(cov_r, axis1=1, axis2=2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum(1))
    return out


def bootstrap_fd(features, ref_stats, *, n_boot=500, seed=0) -> np.ndarray:
    """FD of n_boot resamples (with replacement) of the features against ref_stats."""
    f = _check_features(features)
    stats = _check_stats(ref_stats, f.shape[1])
    return _weighted_fd(f, _resample_weights(len(f), n_boot, seed), stats)


def _centred_interval(estimate, boot, level):
    """The bootstrap's spread put back around the estimate: median* moves onto the estimate."""
    lo, med, hi = np.quantile(boot, [(1 - level) / 2, 0.5, (1 + level) / 2])
    return float(estimate + lo - med), float(estimate + hi - med)


def _check_reference(ref_features, dim):
    if ref_features is None:
        return None
    r = _check_features(ref_features, "ref_features")
    if r.shape[1] != dim:
        raise ValueError(f"ref_features are {r.shape[1]}-dim but the features are {dim}-dim")
    return r


def fd_ci(features, ref_stats, *, n_boot=500, seed=0, level=0.95, ref_features=None):
    """(low, high): confidence interval for the FD of N samples against ref_stats (N = len(features)).

    ``ref_features`` (the reference set that ref_stats summarise): a two-sample interval, the reference
    resampled too, so its own finite-sample noise is inside; None: the reference held fixed (one-sample).
    """
    _check_ci_args(n_boot, level)
    f = _check_features(features)
    estimate = frechet_distance(feature_statistics(f), ref_stats)
    r = _check_reference(ref_features, f.shape[1])
    if r is None:
        boot = bootstrap_fd(f, ref_stats, n_boot=n_boot, seed=seed)
    else:
        boot = _two_sample_fd(f, _resample_weights(len(f), n_boot, seed), r, _reference_weights(len(r), n_boot, seed))
    return _centred_interval(estimate, boot, level)


def paired_diff_ci(feats_a, feats_b, ref_stats, *, n_boot=500, seed=0, level=0.95, ref_features=None):
    """(diff, low, high) for FD(a) - FD(b), where row i of a and of b come from the same latent.

    Both sets are resampled with the same indices, so what the latents share cancels; with ``ref_features``
    the reference is resampled too, the same draw for both (what the shared reference adds cancels as well).
    """
    _check_ci_args(n_boot, level)
    a, b = _check_features(feats_a, "feats_a"), _check_features(feats_b, "feats_b")
    if a.shape != b.shape:
        raise ValueError(f"paired features must have the same shape, got {list(a.shape)} and {list(b.shape)}")
    stats = _check_stats(ref_stats, a.shape[1])
    diff = frechet_distance(feature_statistics(a), stats) - frechet_distance(feature_statistics(b), stats)
    weights = _resample_weights(len(a), n_boot, seed)
    r = _check_reference(ref_features, a.shape[1])
    if r is None:
        boot = _weighted_fd(a, weights, stats) - _weighted_fd(b, weights, stats)
    else:
        ref_weights = _reference_weights(len(r), n_boot, seed)
        boot = _two_sample_fd(a, weights, r, ref_weights) - _two_sample_fd(b, weights, r, ref_weights)
    return (float(diff), *_centred_interval(diff, boot, level))


def resample_weights(n: int, n_boot: int, seed) -> np.ndarray:
    """[n_boot, n] multiplicities of n rows drawn with replacement (the generated images' draws)."""
    return _resample_weights(n, n_boot, seed)


def reference_weights(m: int, n_boot: int, seed) -> np.ndarray:
    """[n_boot, m] multiplicities of the reference set's draws (a stream apart from the samples')."""
    return _reference_weights(m, n_boot, seed)


def fd_draws(features, ref_stats, weights, ref_features=None, ref_weights=None) -> np.ndarray:
    """FD of each reweighted sample (weights [B, N]) against ref_stats, or, with ``ref_features`` and
    ``ref_weights`` [B, M], against the same draw's reweighted reference (two-sample)."""
    f = _check_features(features)
    if ref_features is None:
        return _weighted_fd(f, weights, _check_stats(ref_stats, f.shape[1]))
    return _two_sample_fd(f, weights, _check_reference(ref_features, f.shape[1]), ref_weights)


def hierarchical_interval(estimate: float, draws, *, seed=0, level=0.95) -> tuple[float, float]:
    """Interval of a mean over training seeds that holds every level of noise: ``draws[t][j]`` are B bootstrap
    values of training seed t and sampling seed j (each from its own resample of the generated images, all
    against the same B reference draws). Each of B draws picks the training seeds with replacement, within
    each the sampling seeds with replacement, and averages their values at that draw; the spread of those
    means is put back around ``estimate`` (the mean over training seeds of the mean over sampling seeds).
    With two training seeds this can only recombine the two (it undercovers): callers say so."""
    if not draws or any(not d for d in draws):
        raise ValueError("hierarchical_interval needs at least one sampling seed's draws per training seed")
    n_boot = len(draws[0][0])
    if any(len(x) != n_boot for d in draws for x in d):
        raise ValueError("every seed's draws must come from the same number of bootstrap draws")
    rng = np.random.default_rng([int(seed), 2])
    stacked = [np.stack(d) for d in draws]  # [J_t, B] per training seed
    out = np.empty(n_boot)
    for b in range(n_boot):
        picks = rng.integers(len(stacked), size=len(stacked))
        out[b] = np.mean([stacked[t][rng.integers(len(stacked[t]), size=len(stacked[t])), b].mean() for t in picks])
    return _centred_interval(estimate, out, level)


def nearest_distance(images, reference, chunk: int = 1024, device: str = "cpu") -> float:
    """Mean over ``images`` of the L2 distance (pixels in [-1, 1]) to the nearest ``reference`` image: how close
    samples sit to the training set. Beside held-out real images' value it tells memorising from generalising."""
    return float(_nearest(images, reference, chunk, device).mean())


def nearest_distances(images, reference, chunk: int = 1024, device: str = "cpu") -> np.ndarray:
    """Each image's L2 distance to its nearest ``reference`` image (a mean can hide a minority of copies)."""
    return _nearest(images, reference, chunk, device).cpu().numpy()


def _nearest(images, reference, chunk, device):
    import torch

    x = torch.as_tensor(np.asarray(images, dtype=np.float32)).flatten(1).to(device)
    ref = torch.as_tensor(np.asarray(reference, dtype=np.float32)).flatten(1).to(device)
    if x.shape[1] != ref.shape[1]:
        raise ValueError(f"images ({list(x.shape)}) and reference ({list(ref.shape)}) differ in size")
    ref = ref.double()  # cdist's matrix-product form loses ~1e-3 in float32
    return torch.cat([torch.cdist(x[i:i + chunk].double(), ref).min(1).values for i in range(0, len(x), chunk)])


# ----------------------------------------------------------------------------------------------
# KID on standardised features

def _standardise(features, ref_stats):
    # clean-fid's cubic kernel (x.y / D + 1)^3 assumes Inception-scale features (entries ~ 1);
    # raw classifier features (trace of covariance ~ 2000) put KID in the cubic's tails, where the
    # unbiased estimate swings to large negative or positive values. Standardising with the
    # *reference* mean/std puts both sets on the same, unit scale.
    mu, sigma = ref_stats
    std = np.sqrt(np.clip(np.diag(sigma), 1e-12, None))
    return (features - mu) / std


def _cubic_kernel(x, y):
    k = x @ y.T / x.shape[1] + 1
    return k * k * k


def kid(features, ref_features, ref_stats, *, num_subsets=100, seed=0) -> float:
    """clean-fid's kernel distance (unbiased MMD^2, cubic kernel) on reference-standardised features.

    clean-fid averages over ``num_subsets`` random subsets of min(N, N_ref, 1000) rows each; when
    both sets have that many rows every subset is a permutation of all rows, so one suffices.
    """
    from cleanfid.fid import kernel_distance

    f, r = _check_features(features), _check_features(ref_features, "ref_features")
    stats = _check_stats(ref_stats, f.shape[1])
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"ref_features are {r.shape[1]}-dim but features are {f.shape[1]}-dim")
    if len(f) == len(r) <= 1000:
        num_subsets = 1
    state = np.random.get_state()  # clean-fid draws its subsets from numpy's global generator
    np.random.seed(seed)
    try:
        return kernel_distance(_standardise(f, stats), _standardise(r, stats), num_subsets=num_subsets)
    finally:
        np.random.set_state(state)


def kid_ci(features, ref_features, ref_stats, *, n_boot=500, seed=0, level=0.95, num_subsets=100,
           resample_reference=False):
    """(low, high) for KID of N samples (as :func:`kid` computes it): samples resampled, and with
    ``resample_reference`` the reference set too (two-sample); otherwise the reference held fixed."""
    _check_ci_args(n_boot, level)
    f, r = _check_features(features), _check_features(ref_features, "ref_features")
    stats = _check_stats(ref_stats, f.shape[1])
    x, y = _standardise(f, stats), _standardise(r, stats)
    kxx, kxy, kyy = _cubic_kernel(x, x), _cubic_kernel(x, y), _cubic_kernel(y, y)
    m, n = len(y), len(x)
    w = _resample_weights(n, n_boot, seed)
    # sum over pairs of distinct draws a != b of k(x_{i_a}, x_{i_b}) = w K w - sum_i w_i K_ii
    xx = (((w @ kxx) * w).sum(1) - w @ np.diag(kxx)) / (n * (n - 1))
    if resample_reference:
        v = _reference_weights(m, n_boot, seed)
        ref_term = (((v @ kyy) * v).sum(1) - v @ np.diag(kyy)) / (m * (m - 1))
        cross = ((w @ kxy) * v).sum(1) / (n * m)
    else:
        ref_term = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        cross = (w @ kxy.mean(1)) / n
    boot = xx + ref_term - 2 * cross
    return _centred_interval(kid(f, r, stats, num_subsets=num_subsets, seed=seed), boot, level)


# ----------------------------------------------------------------------------------------------
# Coverage check

def interval_coverage(pool, ref_stats, n: int, *, trials=200, truth_draws=2000, replace=False, n_boot=300,
                      seed=0, level=0.95) -> dict:
    """How often fd_ci on n rows drawn from ``pool`` contains the median FD of n-row draws.

    ``replace=False`` draws random subsets of the pool (real held-out data); ``replace=True`` draws
    i.i.d. from the pool's empirical distribution (what the bootstrap assumes; allows n = len(pool)).
    Returns the coverage, the target, and the mean interval width.
    """
    pool = _check_features(pool, "pool")
    stats = _check_stats(ref_stats, pool.shape[1])
    if not replace and n >= len(pool):
        raise ValueError(f"subsets without replacement need n < {len(pool)}, got n={n}")
    rng = np.random.default_rng(seed)

    def draw(k):
        if replace:
            return rng.multinomial(n, np.full(len(pool), 1.0 / len(pool)), size=k).astype(np.float64)
        w = np.zeros((k, len(pool)))
        for row in w:
            row[rng.choice(len(pool), n, replace=False)] = 1
        return w

    target = float(np.median(_weighted_fd(pool, draw(truth_draws), stats)))
    hits, widths = 0, []
    for w in draw(trials):
        sample = np.repeat(pool, w.astype(int), axis=0)
        low, high = fd_ci(sample, stats, n_boot=n_boot, seed=int(rng.integers(2 ** 31)), level=level)
        hits += low <= target <= high
        widths.append(high - low)
    return dict(coverage=hits / trials, target=target, mean_width=float(np.mean(widths)), n=n, trials=trials)
