"""One record for every score of a set of images: the metric registry.

Every caller scores through :func:`score`: the samples of every model and setting (stage fd), the guided runs
(guided_fd), the hybrid samplers, the pool-size study's variants and a released network. :func:`score_floor`
scores real images the same way, so every metric has its real-data floor at the same N. Each score is an
:class:`Estimate` (a value and, where the metric has one, its interval); tables and metrics.json read those
records (``<metric>``, ``<metric>_low``, ``<metric>_high`` columns) and never name a metric themselves.

A new metric is one function::

    @register_metric("mean_brightness", against="train", headline=True)
    def mean_brightness(sample, ref, cfg):
        return Estimate(float(sample.images.mean()))

``against``: the real split a metric compares with. Its floor scores the *other* split's real images: held-out
images for a metric against the training set, training images for one against the held-out set. ``headline``:
the metric's values per model go into metrics.json (what ``dvc exp show`` compares; the built-in headline is
memorisation, nn_train_dist; FD enters as EDM minus AOT); every metric, and its floor, is a column of the tables. Plugins register metrics the same way (plugins.py). Importing this module needs numpy only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import fd as fdm

__all__ = ["Estimate", "Sample", "Reference", "ScoreConfig", "Metric", "METRICS", "register_metric", "score",
           "score_floor", "columns", "describe", "interval_metrics"]


@dataclass(frozen=True)
class Estimate:
    """A score: its value and, for a metric with an interval, the interval's ends."""
    value: float
    low: float | None = None
    high: float | None = None

    def columns(self, name: str) -> dict:
        """The record as table columns: ``name`` (and ``name_low``, ``name_high``)."""
        out = {name: float(self.value)}
        if self.low is not None:
            out.update({f"{name}_low": float(self.low), f"{name}_high": float(self.high)})
        return out

    def to_json(self) -> dict:
        return {k: float(v) for k, v in (("value", self.value), ("low", self.low), ("high", self.high))
                if v is not None}

    @classmethod
    def from_json(cls, d: dict) -> "Estimate":
        return cls(d["value"], d.get("low"), d.get("high"))


@dataclass(frozen=True)
class Sample:
    """The images scored: their features in the FD feature space [N, D] and their pixels in [-1, 1]."""
    features: np.ndarray
    images: np.ndarray


@dataclass(frozen=True)
class Reference:
    """The real data a sample is scored against (stage fd_reference's file, and the dataset's training images)."""
    stats: tuple                # (mu, sigma) of the training images' features (cifar10: clean-fid's)
    features: np.ndarray        # training images' features (KID's reference set; cifar10: 10k of them)
    heldout_stats: tuple        # (mu, sigma) of the held-out images' features
    train_images: np.ndarray    # training images, pixels in [-1, 1]
    train_features: np.ndarray | None = None    # every training image's features (resampled: two-sample)
    heldout_features: np.ndarray | None = None  # the held-out images' features (resampled: two-sample)
    heldout_nn_quantiles: tuple | None = None   # 1st and 5th percentile of held-out images' nearest-training distance


@dataclass(frozen=True)
class ScoreConfig:
    """fd.* as the metrics read it: bootstrap draws, interval level, KID subsets, what an interval resamples
    (fd.interval); the run's seed and device."""
    n_boot: int
    level: float
    seed: int
    kid_subsets: int
    device: str = "cpu"
    interval: str = "two_sample"

    @classmethod
    def from_params(cls, p, device: str = "cpu") -> "ScoreConfig":
        f = p["fd"]
        return cls(n_boot=f["bootstrap"], level=f["ci_level"], seed=p["seed"], kid_subsets=f["kid_subsets"],
                   device=device, interval=f["interval"])

    def reference(self, features):
        """The reference set an interval resamples: ``features`` for two-sample intervals, None for one-sample."""
        return features if self.interval == "two_sample" else None


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[Sample, Reference, ScoreConfig], Estimate]
    against: str        # "train" | "heldout"
    headline: bool
    description: str


METRICS: dict[str, Metric] = {}
_NAME = re.compile(r"[a-z][a-z0-9_]*")  # matched whole (fullmatch)


def register_metric(name: str, *, against: str = "train", headline: bool = False, description: str = ""):
    """Decorator: add ``fn(sample, ref, cfg) -> Estimate`` to :data:`METRICS` under ``name`` (a column name)."""
    if not _NAME.fullmatch(name) or name.endswith(("_low", "_high")):
        raise ValueError(f"metric name {name!r}: lower-case letters, digits and '_', not ending in _low / _high")
    if against not in ("train", "heldout"):
        raise ValueError(f"metric {name!r}: against must be 'train' or 'heldout', got {against!r}")

    def add(fn):
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered already (by {METRICS[name].fn.__module__})")
        METRICS[name] = Metric(name, fn, against, headline, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return add


def score(sample: Sample, ref: Reference, cfg: ScoreConfig) -> dict[str, Estimate]:
    """Every registered metric of one set of images, in registration order."""
    out = {}
    for name, m in METRICS.items():
        est = m.fn(sample, ref, cfg)
        if not isinstance(est, Estimate):
            raise TypeError(f"metric {name!r} ({m.fn.__module__}.{m.fn.__name__}) returned {type(est).__name__}, "
                            f"not an Estimate")
        out[name] = est
    return out


def _subset(sample: Sample, n: int, seed: int) -> Sample:
    pick = np.random.default_rng(seed).permutation(len(sample.features))[:n]
    return Sample(sample.features[pick], sample.images[pick])


def score_floor(heldout: Sample, train: Sample, ref: Reference, cfg: ScoreConfig, n: int) -> dict[str, Estimate]:
    """The real-data floor of every metric at N = n: a seeded random subset of n real images (all of them where
    the split is smaller) of the split the metric does not compare with, scored as a sample would be. A model
    within it is, by this protocol, indistinguishable from real data."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 2 <= n <= len(heldout.features):
        raise ValueError(f"the floor needs 2 <= n <= {len(heldout.features)} held-out real images (as many as the "
                         f"samples), got n={n!r}")
    real = {"train": _subset(heldout, n, cfg.seed), "heldout": _subset(train, min(n, len(train.features)), cfg.seed)}
    return {name: m.fn(real[m.against], ref, cfg) for name, m in METRICS.items()}


def columns(scores: dict[str, Estimate]) -> dict:
    """A set of records as one table row's columns."""
    return {k: v for name, est in scores.items() for k, v in est.columns(name).items()}


def describe(scores: dict[str, Estimate]) -> str:
    """A set of records as a log line."""
    return ", ".join(f"{name} {e.value:.4g}" + (f" [{e.low:.4g}, {e.high:.4g}]" if e.low is not None else "")
                     for name, e in scores.items())


def interval_metrics(df) -> list:
    """The registered metrics that a table holds with intervals (``m``, ``m_low``, ``m_high``)."""
    return [m for m in METRICS if m in df and f"{m}_low" in df]


# ---------------------------------------------------------------------------------------------- the metrics

@register_metric("fd")
def frechet(sample, ref, cfg):
    """FD against the training statistics (FID with Inception's features), bootstrap interval."""
    value = fdm.frechet_distance(fdm.feature_statistics(sample.features), ref.stats)
    return Estimate(value, *fdm.fd_ci(sample.features, ref.stats, n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.level,
                                      ref_features=cfg.reference(ref.train_features)))


@register_metric("kid")
def kernel(sample, ref, cfg):
    """KID against the training images' features (reference-standardised), bootstrap interval."""
    value = fdm.kid(sample.features, ref.features, ref.stats, seed=cfg.seed, num_subsets=cfg.kid_subsets)
    return Estimate(value, *fdm.kid_ci(sample.features, ref.features, ref.stats, n_boot=cfg.n_boot, seed=cfg.seed,
                                       level=cfg.level, num_subsets=cfg.kid_subsets,
                                       resample_reference=cfg.interval == "two_sample"))


@register_metric("fd_heldout", against="heldout")
def frechet_heldout(sample, ref, cfg):
    """FD against the held-out images' statistics (a model can't win it by memorising), bootstrap interval."""
    value = fdm.frechet_distance(fdm.feature_statistics(sample.features), ref.heldout_stats)
    return Estimate(value, *fdm.fd_ci(sample.features, ref.heldout_stats, n_boot=cfg.n_boot, seed=cfg.seed,
                                      level=cfg.level, ref_features=cfg.reference(ref.heldout_features)))


@register_metric("nn_train_dist", headline=True)
def nearest_training_image(sample, ref, cfg):
    """Mean pixel distance to the nearest training image (memorisation: compare with held-out images')."""
    return Estimate(fdm.nearest_distance(sample.images, ref.train_images, device=cfg.device))


def _copies(sample, ref, cfg, which: int) -> Estimate:
    if ref.heldout_nn_quantiles is None:
        return Estimate(float("nan"))
    d = fdm.nearest_distances(sample.images, ref.train_images, device=cfg.device)
    return Estimate(float((d < ref.heldout_nn_quantiles[which]).mean()))


@register_metric("nn_below_p1")
def closer_than_heldout_p1(sample, ref, cfg):
    """Fraction of images nearer a training image than 99 % of held-out real images are (copies; real: 0.01)."""
    return _copies(sample, ref, cfg, 0)


@register_metric("nn_below_p5")
def closer_than_heldout_p5(sample, ref, cfg):
    """Fraction of images nearer a training image than 95 % of held-out real images are (real: 0.05)."""
    return _copies(sample, ref, cfg, 1)
