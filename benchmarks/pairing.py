"""Pairing cost and its effect on the training step rate; writes results/bench/pairing.json.

    python benchmarks/pairing.py            # full grid (pool 256..8192, dim 64 and 3072)
    python benchmarks/pairing.py --quick    # smaller grid, a few minutes on 2 CPU cores
    python benchmarks/pairing.py --part train   # only the step-time part (keeps the solver numbers)

1. Solve time of each exact solver (scipy linear_sum_assignment, POT emd) against pool size and dimension,
   with the cost-matrix build timed separately.
2. Training step time with AOT and without it (background pairing on, as in training), on the digits
   settings and on a CIFAR-shaped NCSN++ at reduced width, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from aot_diffusion.aot import assignment
from aot_diffusion.training import TrainConfig, train


def time_solvers(pools, dims, pot_max, repeats=1):
    rows = []
    warm = np.random.default_rng(0).random((64, 64))
    for solver in ("scipy", "pot"):  # first calls pay for imports and JIT set-up
        assignment(warm, solver)
    for d in dims:
        for n in pools:
            g = torch.Generator().manual_seed(n + d)
            images, noise = torch.rand(n, d, generator=g) * 2 - 1, torch.randn(n, d, generator=g)
            t0 = time.perf_counter()
            cost = torch.cdist(images.double(), noise.double()).numpy()
            build = time.perf_counter() - t0
            for solver in ("scipy", "pot"):
                if solver == "pot" and n > pot_max:
                    continue
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    perm = assignment(cost, solver)
                    times.append(time.perf_counter() - t0)
                total = cost[np.arange(n), perm].sum()
                rows.append(dict(solver=solver, pool=n, dim=d, cost_build_s=build, solve_s=min(times),
                                 mean_paired_distance=total / n, mean_random_distance=float(np.diag(cost).mean())))
                print(f"[bench] {solver:5s} pool {n:5d} dim {d:4d}: build {build:.3f} s, solve {min(times):.3f} s", flush=True)
    return rows


def time_training(name, network, images, steps, batch, pool, window, threads=2, prefetch=True):
    """Median seconds per step over log windows after the first (which holds start-up costs)."""
    out = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    for rep, aot_on in enumerate((False, True, False, True)):  # interleaved to spread drift in machine load
        cfg = TrainConfig(network=network, batch_size=batch, pool_size=pool, aot=aot_on, total_steps=steps,
                          lr=1e-3, lr_rampup_kimg=0, log_every=window, checkpoint_every=10**9, prefetch=prefetch)
        tmp = Path("results/bench/tmp") / f"{name}_{rep}"
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover checkpoint would be resumed, not re-timed
        hist = train(cfg, images, None, out_path=tmp / "net.pt", checkpoint_dir=tmp, log=lambda m: None)["history"]
        per_step = [r["sec_per_kimg"] * batch / 1000 for r in hist[1:]]
        out.setdefault("aot" if aot_on else "no_aot", []).extend(per_step)
        if aot_on:
            out.setdefault("pair_ms_per_pool", []).extend(r["pair_ms"] for r in hist[1:])
        print(f"[bench] {name} aot={aot_on}: {1000 * np.median(per_step):.1f} ms/step", flush=True)
    torch.set_num_threads(previous)
    res = {k: float(np.median(v)) for k, v in out.items()}
    res["ratio_aot_over_no_aot"] = res["aot"] / res["no_aot"]
    res.update(batch=batch, pool=pool, steps=steps, torch_threads=threads, background_pairing=prefetch)
    print(f"[bench] {name}: AOT / no-AOT step time = {res['ratio_aot_over_no_aot']:.3f}", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=("all", "solvers", "train"), default="all")
    ap.add_argument("--out", default="results/bench/pairing.json")
    args = ap.parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() and args.part != "all" else {}
    result.update(machine=platform.processor() or platform.machine(), cpu_count=os.cpu_count())
    if args.part in ("all", "solvers"):
        torch.set_num_threads(2)
        pools = [256, 512, 1024, 2048] if args.quick else [256, 512, 1024, 2048, 4096, 8192]
        result["solvers"] = time_solvers(pools, [64, 3072], pot_max=1024 if args.quick else 2048)
    if args.part in ("all", "train"):
        from sklearn.datasets import load_digits

        digits = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1
        digits_net = dict(model_type="SongUNet", img_resolution=8, img_channels=1, model_channels=16,
                          channel_mult=[1, 2, 2], channel_mult_emb=4, num_blocks=1, attn_resolutions=[], dropout=0.0)
        steps = 48 if args.quick else 160
        # All cores busy with training (2 torch threads on 2 cores), pairing in the background thread ...
        result["train_digits"] = time_training("digits", digits_net, digits, steps=steps, batch=128, pool=512,
                                               window=8, threads=2, prefetch=True)
        # ... the same with pairing done synchronously, as the official code does ...
        result["train_digits_sync"] = time_training("digits_sync", digits_net, digits, steps=steps, batch=128,
                                                    pool=512, window=8, threads=2, prefetch=False)
        # ... and with a core left for the pairing thread (one torch thread, as each pipeline job uses).
        result["train_digits_1thread"] = time_training("digits_1thread", digits_net, digits, steps=steps, batch=128,
                                                       pool=512, window=8, threads=1, prefetch=True)
        cifar = torch.rand(4096, 3, 32, 32) * 2 - 1
        cifar_net = dict(preset="ncsnpp", img_resolution=32, img_channels=3, model_channels=16, channel_mult=[1, 2, 2],
                         num_blocks=1, attn_resolutions=[16], dropout=0.13)
        result["train_cifar_ncsnpp_small"] = time_training("cifar_ncsnpp_w16", cifar_net, cifar,
                                                           steps=12 if args.quick else 32, batch=64, pool=512,
                                                           window=4, threads=2, prefetch=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] wrote {out}")


if __name__ == "__main__":
    main()
