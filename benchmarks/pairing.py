"""Pairing at scale: solver and cost-build times, float32 vs float64 costs, and the training step-time ratio.

    python benchmarks/pairing.py                 # everything (pool 256..8192, dims 64 and 3072)
    python benchmarks/pairing.py --quick         # a subset that validates the script in a few minutes
    python benchmarks/pairing.py --part train    # one part; the other parts' numbers in the JSON are kept

Parts (all written to results/bench/pairing.json, a table printed for each):
  solvers    solve time of every installed exact solver (lap, scipy, pot) and cost-build time (float64 and
             float32 GEMM form) per pool size and dimension; median over repetitions with min/max; the solvers'
             optimal totals are compared; the acceptance line compares the default solver with scipy at 2048 x 3072.
  gil        whether each solver releases the GIL (longest stall of a Python thread during a solve), and the
             class-wise speed-up of the thread pool (10 classes).
  precision  how often a float32 cost matrix changes the optimal assignment found with a float64 one, and by
             how much the total (float64) cost rises, on random pools and on real digits pools.
  train      training step time with AOT (pairing in the background thread, as in training) over step time
             without it; digits-shaped 8x8 SongUNet; runs interleaved (no-AOT, AOT-lap, AOT-scipy, ...).
Timings on a shared machine are noisy: the JSON records the load average at start and end of each part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch

from aot_diffusion import aot
from aot_diffusion.training import TrainConfig, train

SOLVE_LIMIT_S = 60.0  # default: skip a solver at a pool size where one solve is predicted to take longer


def spread(times) -> dict:
    return dict(median_s=float(np.median(times)), min_s=float(np.min(times)), max_s=float(np.max(times)),
                repeats=len(times))


def timed(fn, repeats, budget_s=30.0):
    """Run fn up to `repeats` times (fewer once `budget_s` is spent); returns (times, last result)."""
    times, out = [], None
    while len(times) < repeats and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def random_pool(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g) * 2 - 1, torch.randn(n, d, generator=g)


def machine_info() -> dict:
    import lap
    import ot
    import scipy

    return dict(processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), python=platform.python_version(), torch=torch.__version__,
                numpy=np.__version__, scipy=scipy.__version__, lap=lap.__version__, pot=ot.__version__,
                default_solver=aot.resolve_solver("auto"))


def load() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def bench_solvers(pools, dims, repeats, limit_s=SOLVE_LIMIT_S):
    rows, solvers = [], aot.available_solvers()
    for s in solvers:  # first calls pay for imports
        aot.assignment(np.random.default_rng(0).random((64, 64)), s)
    for d in dims:
        last = {}  # solver -> (pool, seconds) of its last timed size, to predict the next one
        for n in pools:
            images, noise = random_pool(n, d, seed=n + d)
            build64, cost = timed(lambda: aot.pairwise_cost(images, noise, torch.float64).numpy(), repeats)
            build32, _ = timed(lambda: aot.pairwise_cost(images, noise, torch.float32).numpy(), repeats)
            row = dict(pool=n, dim=d, cost_build_float64=spread(build64), cost_build_float32=spread(build32),
                       mean_random_distance=float(np.diag(cost).mean()), solve={}, total_cost={})
            for s in solvers:
                if s in last:
                    predicted = last[s][1] * (n / last[s][0]) ** 2.5  # dense JV / simplex grow about as n^2.5
                    if predicted > limit_s:
                        row["solve"][s] = dict(skipped=f"one solve predicted at {predicted:.0f} s > {limit_s:.0f} s")
                        print(f"[bench] {s:5s} pool {n:5d} dim {d:4d}: skipped ({row['solve'][s]['skipped']})",
                              flush=True)
                        continue
                times, perm = timed(lambda: aot.assignment(cost, s), repeats)
                last[s] = (n, float(np.median(times)))
                row["solve"][s] = spread(times)
                row["total_cost"][s] = float(cost[np.arange(n), perm].sum())
                print(f"[bench] {s:5s} pool {n:5d} dim {d:4d}: build f64 {np.median(build64):.3f} s "
                      f"f32 {np.median(build32):.3f} s, solve {np.median(times):.3f} s "
                      f"[{min(times):.3f}, {max(times):.3f}] x{len(times)}", flush=True)
            totals = list(row["total_cost"].values())
            row["solvers_agree"] = bool(np.allclose(totals, totals[0], rtol=1e-12, atol=0))
            row["mean_paired_distance"] = totals[0] / n
            rows.append(row)
            del cost
    return rows


def acceptance(rows) -> dict:
    """Default solver vs scipy at pool 2048, dim 3072: same optimum, at most half the time; and the targets."""
    out = {}
    for r in rows:
        if r["pool"] == 2048 and r["dim"] == 3072:
            default, ref = aot.resolve_solver("auto"), r["solve"]["scipy"]["median_s"]
            mine = r["solve"][default]["median_s"]
            out.update(default_solver=default, default_solve_s=mine, scipy_solve_s=ref, ratio_default_over_scipy=mine / ref,
                       equal_total_cost=r["total_cost"][default] == r["total_cost"]["scipy"]
                       or abs(r["total_cost"][default] / r["total_cost"]["scipy"] - 1) < 1e-12,
                       at_most_half=mine <= 0.5 * ref, solve_target_0_5_s=mine <= 0.5,
                       cost_build_float32_s=r["cost_build_float32"]["median_s"],
                       cost_build_float64_s=r["cost_build_float64"]["median_s"])
        if r["pool"] == 8192 and "median_s" in r["solve"].get(aot.resolve_solver("auto"), {}):
            out[f"solve_8192_dim{r['dim']}_s"] = r["solve"][aot.resolve_solver("auto")]["median_s"]
    return out


def longest_stall(fn) -> tuple[float, float]:
    """(seconds fn took, longest gap between two iterations of a pure-Python loop in another thread)."""
    stop, gap = threading.Event(), [0.0]

    def spin():
        last = time.perf_counter()
        while not stop.is_set():
            now = time.perf_counter()
            gap[0], last = max(gap[0], now - last), now

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    fn()
    took = time.perf_counter() - t0
    stop.set()
    thread.join()
    return took, gap[0]


def bench_gil(n_gil, n_classwise):
    import lap

    out = {"gil": {}, "classwise": []}
    images, noise = random_pool(n_gil, 3072, seed=1)
    cost = aot.pairwise_cost(images, noise).numpy()
    solvers = {s: (lambda s=s: aot.assignment(cost, s)) for s in aot.available_solvers()}
    solvers["lap.lapjv (its own wrapper)"] = lambda: lap.lapjv(cost)
    for s, solve in solvers.items():
        solve()
        took, stall = longest_stall(solve)
        out["gil"][s] = dict(pool=n_gil, solve_s=took, longest_python_stall_s=stall, releases_gil=stall < 0.5 * took)
        print(f"[bench] GIL {s:5s}: solve {took:.3f} s, longest stall of another Python thread {stall:.3f} s", flush=True)
    for n in n_classwise:
        images, noise = random_pool(n, 64, seed=2)
        labels = torch.arange(n) % 10
        for s in aot.available_solvers():
            row = dict(pool=n, dim=64, classes=10, solver=s)
            for workers in (1, os.cpu_count()):
                times, _ = timed(lambda: aot.pair_noise(images, noise, labels=labels, solver=s, workers=workers), 3)
                row[f"workers_{workers}"] = spread(times)
            row["speedup"] = row["workers_1"]["median_s"] / row[f"workers_{os.cpu_count()}"]["median_s"]
            out["classwise"].append(row)
            print(f"[bench] class-wise pool {n} {s:5s}: 1 worker {row['workers_1']['median_s']:.3f} s, "
                  f"{os.cpu_count()} workers {row[f'workers_{os.cpu_count()}']['median_s']:.3f} s", flush=True)
    return out


def bench_precision(cases, digits_pools):
    """float32 vs float64 cost matrix: same assignment? (lap solves both; totals use the float64 costs)."""
    out = []

    def compare(name, n, d, pools):
        differ, worse, rows_moved, excess = 0, 0, [], []
        for images, noise in pools:
            c64 = aot.pairwise_cost(images, noise, torch.float64).numpy()
            p64 = aot.assignment(c64)
            p32 = aot.assignment(aot.pairwise_cost(images, noise, torch.float32).numpy())
            moved = int((p64 != p32).sum())
            t64, t32 = c64[np.arange(n), p64].sum(), c64[np.arange(n), p32].sum()
            excess.append(float((t32 - t64) / t64))
            differ += moved > 0
            worse += excess[-1] > 1e-12  # a different permutation of equal cost is a tie (duplicate images)
            rows_moved.append(moved)
        row = dict(data=name, pool=n, dim=d, pools=len(rows_moved), pools_with_a_different_assignment=differ,
                   pools_where_float32_misses_the_float64_optimum=worse, mean_rows_moved=float(np.mean(rows_moved)),
                   max_rows_moved=int(np.max(rows_moved)), max_relative_total_cost_excess=float(np.max(excess)))
        print(f"[bench] precision {name} {n} x {d}: {differ}/{len(rows_moved)} pools differ, {worse} miss the "
              f"optimum, max rows moved {row['max_rows_moved']}, max relative cost excess "
              f"{row['max_relative_total_cost_excess']:.1e}", flush=True)
        out.append(row)

    for n, d, count in cases:
        compare("random", n, d, (random_pool(n, d, seed=1000 + s) for s in range(count)))
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images, dtype=torch.float32).flatten(1) / 8 - 1
    for n, count in digits_pools:
        def draws():
            for s in range(count):
                g = torch.Generator().manual_seed(s)
                yield digits[torch.randperm(len(digits), generator=g)[:n]], torch.randn(n, 64, generator=g)
        compare("digits", n, 64, draws())
    return out


DIGITS_NET = dict(model_type="SongUNet", img_resolution=8, img_channels=1, model_channels=16, channel_mult=[1, 2, 2],
                  channel_mult_emb=4, num_blocks=1, attn_resolutions=[], dropout=0.0)


def bench_train(pools, pairs, windows, batch=128, threads=2):
    """Seconds per step with AOT over without it; runs interleaved so machine-load drift hits all variants alike.

    Each log window holds exactly one pool (log_every = steps per pool); the first window (start-up, first pool
    paired in the foreground) is dropped. A run's step time is the median of its windows.
    """
    from sklearn.datasets import load_digits

    digits = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1
    variants = [("no_aot", False, "auto")] + [(f"aot_{s}", True, s) for s in ("lap", "scipy")
                                              if s in aot.available_solvers()]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    results = []
    for pool in pools:
        per_pool = pool // batch
        runs = {name: [] for name, _, _ in variants}
        pair_ms = {name: [] for name, _, _ in variants}
        for rep in range(pairs):
            for name, aot_on, solver in variants:
                cfg = TrainConfig(network=DIGITS_NET, batch_size=batch, pool_size=pool, pairing="assignment" if aot_on else "none", solver=solver,
                                  total_steps=per_pool * (windows + 1), lr=1e-3, lr_rampup_kimg=0, log_every=per_pool,
                                  checkpoint_every=10**9, prefetch=True)
                tmp = Path("results/bench/tmp") / f"pool{pool}_{name}_{rep}"
                shutil.rmtree(tmp, ignore_errors=True)  # a leftover checkpoint would be resumed, not re-timed
                hist = train(cfg, digits, None, out_path=tmp / "net.pt", checkpoint_dir=tmp, log=lambda m: None)["history"]
                shutil.rmtree(tmp, ignore_errors=True)
                runs[name].append(float(np.median([r["sec_per_kimg"] * batch / 1000 for r in hist[1:]])))
                pair_ms[name].extend(r["pair_ms"] for r in hist[1:])
            print(f"[bench] train pool {pool} pair {rep}: " + ", ".join(
                f"{k} {1000 * v[-1]:.1f} ms/step" for k, v in runs.items()), flush=True)
        row = dict(pool=pool, batch=batch, steps_per_pool=per_pool, windows_per_run=windows, interleaved_pairs=pairs,
                   torch_threads=threads, background_pairing=True, network="SongUNet 8x8 (digits-shaped), width 16")
        for name in runs:
            row[name] = dict(spread(runs[name]), pair_ms=float(np.median(pair_ms[name])) if pair_ms[name] else 0.0)
            if name != "no_aot":  # ratio of medians, and the spread of ratios within each interleaved pair
                ratios = np.array(runs[name]) / np.array(runs["no_aot"])
                row[f"ratio_{name}_over_no_aot"] = dict(of_medians=row[name]["median_s"] / row["no_aot"]["median_s"],
                                                         per_pair_median=float(np.median(ratios)),
                                                         per_pair_min=float(ratios.min()), per_pair_max=float(ratios.max()))
        results.append(row)
    torch.set_num_threads(previous)
    return results


def print_tables(result):
    if "solvers" in result:
        print("\npool  dim   build f64  build f32  " + "  ".join(f"{s:>14s}" for s in aot.available_solvers()))
        for r in result["solvers"]:
            cells = [f"{r['solve'][s]['median_s']:8.3f} s" if "median_s" in r["solve"].get(s, {}) else "       skipped"
                     for s in aot.available_solvers()]
            print(f"{r['pool']:5d} {r['dim']:4d} {r['cost_build_float64']['median_s']:8.3f} s "
                  f"{r['cost_build_float32']['median_s']:8.3f} s  " + "  ".join(f"{c:>14s}" for c in cells))
        print("acceptance:", json.dumps(result.get("acceptance", {})))
    for r in result.get("train", []):
        print(f"train pool {r['pool']}: " + ", ".join(f"{k} {v['of_medians']:.3f} (pairs {v['per_pair_min']:.3f}.."
                                                       f"{v['per_pair_max']:.3f})" for k, v in r.items() if k.startswith("ratio")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a subset that validates the script")
    ap.add_argument("--part", choices=("all", "solvers", "gil", "precision", "train"), default="all")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count()), help="torch threads (cost build, training)")
    ap.add_argument("--out", default="results/bench/pairing.json")
    ap.add_argument("--solve-limit", type=float, default=SOLVE_LIMIT_S,
                    help="skip a solver where one solve is predicted above this many seconds")
    args = ap.parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() and args.part != "all" else {}
    torch.set_num_threads(args.threads)
    result["machine"] = machine_info()
    result["quick"] = args.quick
    parts = ("solvers", "gil", "precision", "train") if args.part == "all" else (args.part,)
    for part in parts:
        start_load, t0 = load(), time.perf_counter()
        if part == "solvers":
            pools = [256, 512, 1024, 2048] if args.quick else [256, 512, 1024, 2048, 4096, 8192]
            result["solvers"] = bench_solvers(pools, [64, 3072], args.repeats, args.solve_limit)
            result["solvers_skip_rule"] = f"a solver is skipped where one solve is predicted above {args.solve_limit:.0f} s"
            result["acceptance"] = acceptance(result["solvers"])
        elif part == "gil":
            result.update(bench_gil(1024, [2048] if args.quick else [2048, 8192]))
        elif part == "precision":
            cases = [(512, 64, 10), (2048, 3072, 3)] if args.quick else [(512, 64, 50), (2048, 3072, 50), (8192, 3072, 3)]
            result["precision"] = bench_precision(cases, [(512, 10)] if args.quick else [(512, 50), (1024, 20)])
        else:
            result["train"] = bench_train([512, 2048], pairs=2 if args.quick else 5, windows=2 if args.quick else 4,
                                          threads=args.threads)
        result.setdefault("load_average", {})[part] = dict(start=start_load, end=load(),
                                                           seconds=round(time.perf_counter() - t0, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result)
    print(f"[bench] wrote {out}")


if __name__ == "__main__":
    main()
