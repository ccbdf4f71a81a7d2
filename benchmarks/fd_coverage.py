"""Coverage of the FD intervals on known Gaussians: one-sample (the reference held fixed) vs two-sample (both sets
resampled), at the digits run's sizes (N = M = 900 images, 8 dimensions).

    python benchmarks/fd_coverage.py [--trials 200] [--n-boot 200]     -> results/bench/fd_coverage.json

Each trial draws N samples from P = N(0, I) and M reference images from Q = N(0.3, 1.2 I), scores the samples'
FD against the reference's statistics, and builds both intervals. Two targets: the population FD of P and Q
(analytic), and the FD this protocol measures at these N and M (the median over 4000 fresh draws of both sets:
the estimator's own bias included). A 95 % interval should cover each near 95 % of the time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from aot_diffusion.metrics import fd as fdm

OUT = Path("results/bench/fd_coverage.json")


def population_fd(dim: int, shift: float, scale: float) -> float:
    """FD of N(0, I) and N(shift, scale I) in ``dim`` dimensions: |mu|^2 + tr(I + sI - 2 sqrt(s) I)."""
    return dim * shift ** 2 + dim * (1 + scale - 2 * np.sqrt(scale))


def measure(trials: int = 200, n_boot: int = 200, n: int = 900, m: int = 900, dim: int = 8, shift: float = 0.3,
            scale: float = 1.2, level: float = 0.95, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def draw_sample(k):
        return rng.normal(size=(k, dim))

    def draw_reference(k):
        return shift + np.sqrt(scale) * rng.normal(size=(k, dim))

    protocol = float(np.median([fdm.frechet_distance(fdm.feature_statistics(draw_sample(n)),
                                                     fdm.feature_statistics(draw_reference(m))) for _ in range(4000)]))
    truth = population_fd(dim, shift, scale)
    hits = {kind: {"population": 0, "protocol": 0} for kind in ("one_sample", "two_sample")}
    widths = {kind: [] for kind in hits}
    t0, c0 = time.perf_counter(), time.process_time()
    for t in range(trials):
        x, r = draw_sample(n), draw_reference(m)
        stats = fdm.feature_statistics(r)
        for kind, ref in (("one_sample", None), ("two_sample", r)):
            low, high = fdm.fd_ci(x, stats, n_boot=n_boot, seed=t, level=level, ref_features=ref)
            hits[kind]["population"] += low <= truth <= high
            hits[kind]["protocol"] += low <= protocol <= high
            widths[kind].append(high - low)
    return dict(
        setup=dict(trials=trials, n_boot=n_boot, n=n, m=m, dim=dim, P="N(0, I)", Q=f"N({shift}, {scale} I)",
                   level=level, seed=seed),
        population_fd=truth, protocol_fd=protocol,
        coverage={kind: {target: v / trials for target, v in h.items()} for kind, h in hits.items()},
        mean_width={kind: float(np.mean(w)) for kind, w in widths.items()},
        wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
        machine=dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args()
    result = measure(trials=args.trials, n_boot=args.n_boot)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, OUT)
    for kind, cov in result["coverage"].items():
        print(f"{kind}: coverage of the population FD {cov['population']:.3f}, of the protocol's FD "
              f"{cov['protocol']:.3f}, mean width {result['mean_width'][kind]:.4f}")
    print(f"wrote {OUT} ({result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} CPU-s)")


if __name__ == "__main__":
    main()
