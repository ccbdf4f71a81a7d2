"""One-GPU check of the paper-scale path (< 8 minutes on an H100); writes results/bench/gpu_check.json.

    python benchmarks/gpu_check.py [--steps 200] [--batch 64] [--rehearsal]     (or: make gpu-check)

With ``--rehearsal`` it first runs the cifar10 DAG at toy size (the `rehearsal` profile, every stage and the
`released` target) with ``device=cuda`` in a temporary copy of the repository, and records its wall time and
outcome. Then it measures,
on CIFAR-shaped random data with the full-size NCSN++ (56M parameters):
- img/s and peak GPU memory of training without AOT (plain loop) and with AOT at pool 512 (unconditional)
  and pool 2048 (conditional, class-wise), and the AOT / no-AOT step-time ratios;
- the pairing time itself at pool 512 and 2048 (cost matrix on the GPU);
- sampling throughput (images/s) of the Heun sampler at 27 NFE (14 steps, rho 90).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aot_diffusion.aot import pair_noise
from aot_diffusion.networks import build_network
from aot_diffusion.sampling import edm_sampler
from aot_diffusion.training import TrainConfig, train

NCSNPP = dict(preset="ncsnpp", img_resolution=32, img_channels=3, augment_dim=9, dropout=0.13)


def bench_train(images, labels, *, aot_on, conditional, pool, steps, batch, window):
    torch.cuda.reset_peak_memory_stats()
    net = {**NCSNPP, "label_dim": 10 if conditional else 0}
    cfg = TrainConfig(network=net, batch_size=batch, pool_size=pool, pairing="assignment" if aot_on else "none", conditional=conditional,
                      total_steps=steps, lr=1e-3, lr_rampup_kimg=0, log_every=window, checkpoint_every=10**9,
                      device="cuda", prefetch=True)
    tag = f"aot{int(aot_on)}_cond{int(conditional)}_pool{pool}"
    shutil.rmtree(f"results/bench/tmp/{tag}", ignore_errors=True)  # never resume an old run
    res = train(cfg, images, labels, out_path=f"results/bench/tmp/{tag}.pt", checkpoint_dir=f"results/bench/tmp/{tag}",
                num_classes=10, log=print)
    sec_per_step = float(np.median([r["sec_per_kimg"] * batch / 1000 for r in res["history"][1:]]))
    out = dict(img_per_s=batch / sec_per_step, sec_per_step=sec_per_step,
               peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
               pair_ms_per_pool=float(np.median([r["pair_ms"] for r in res["history"][1:]])))
    print(f"[gpu_check] {tag}: {out}", flush=True)
    return out


ROOT = Path(__file__).resolve().parents[1]


def rehearsal_on_gpu(log_path: Path) -> dict:
    """The rehearsal DAG with device=cuda, in a copy of the repository (the checkout's params.yaml is untouched).
    One GPU: training runs one rank (NCCL can't put two ranks on one device), and the batch shrinks with the ranks
    so that a rank's mini-batch still equals its pool (4, the profile's per-rank size)."""
    ranks = min(2, torch.cuda.device_count())
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rehearsal-") as tmp:
        for f in files:
            if (ROOT / f).is_file() and not f.startswith(("results/", "figures/")):
                (Path(tmp) / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, Path(tmp) / f)
        cmds = [["git", "init", "-q"], ["aot-diffusion", "rehearsal-inputs"],
                ["snakemake", "--cores", "all", "--config", "profile=rehearsal", "device=cuda",
                 f"train={{nproc_per_node: {ranks}, batch_size: {4 * ranks}}}", "released_pickle=data/rehearsal/network.pkl", "--", "all",
                 "released"]]
        with open(log_path, "w") as log:
            for cmd in cmds:
                rc = subprocess.run(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT).returncode
                if rc:
                    break
        metrics = Path(tmp) / "results" / "rehearsal" / "metrics.json"
        out = dict(ok=rc == 0, returncode=rc, wall_s=time.time() - t0, ranks=ranks, log=str(log_path),
                   metrics_keys=len(json.loads(metrics.read_text())) if metrics.exists() else 0)
    print(f"[gpu_check] rehearsal: {out}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64, help="per-GPU batch (the paper: 256 over 4 GPUs)")
    ap.add_argument("--out", default="results/bench/gpu_check.json")
    ap.add_argument("--rehearsal", action="store_true", help="first run the rehearsal DAG with device=cuda")
    ap.add_argument("--no-bench", action="store_true",
                    help="skip the throughput measurements (with --rehearsal: the DAG alone, e.g. under its own timeout)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    t_start = time.time()
    result = dict(device=torch.cuda.get_device_name(), steps=args.steps, batch=args.batch, torch=torch.__version__)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.rehearsal:
        result["rehearsal"] = rehearsal_on_gpu(Path(args.out).with_name("gpu_rehearsal.log"))
    if args.no_bench:
        result["wall_s"] = time.time() - t_start
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    g = torch.Generator().manual_seed(0)
    images = torch.rand(20_000, 3, 32, 32, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (20_000,), generator=g)

    pair = {}
    for pool in (512, 2048):
        x = torch.rand(pool, 3, 32, 32, device="cuda") * 2 - 1
        n = torch.randn_like(x)
        lab = torch.randint(0, 10, (pool,), device="cuda") if pool == 2048 else None
        pair_noise(x, n, labels=lab)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            pair_noise(x, n, labels=lab)
        torch.cuda.synchronize()
        pair[f"pool{pool}_ms"] = 1000 * (time.perf_counter() - t0) / 3
    result["pairing"] = pair
    print(f"[gpu_check] pairing: {pair}", flush=True)

    window = max(args.steps // 5, 10)
    plain = bench_train(images, labels, aot_on=False, conditional=False, pool=512, steps=args.steps, batch=args.batch,
                        window=window)
    aot512 = bench_train(images, labels, aot_on=True, conditional=False, pool=512, steps=args.steps, batch=args.batch,
                         window=window)
    plain_c = bench_train(images, labels, aot_on=False, conditional=True, pool=2048, steps=args.steps,
                          batch=args.batch, window=window)
    aot2048 = bench_train(images, labels, aot_on=True, conditional=True, pool=2048, steps=args.steps,
                          batch=args.batch, window=window)
    result["train"] = dict(no_aot_uncond=plain, aot_uncond_pool512=aot512, no_aot_cond=plain_c,
                           aot_cond_pool2048=aot2048,
                           ratio_pool512=aot512["sec_per_step"] / plain["sec_per_step"],
                           ratio_pool2048=aot2048["sec_per_step"] / plain_c["sec_per_step"])

    net = build_network(NCSNPP).cuda().eval()
    denoise = lambda x, s, c: net(x.float(), s.float(), c)  # noqa: E731
    latents = torch.randn(500, 3, 32, 32, device="cuda", dtype=torch.float64)
    with torch.no_grad():
        edm_sampler(denoise, latents[:50], num_steps=3)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        edm_sampler(denoise, latents, num_steps=14, rho=90)
        torch.cuda.synchronize()
    result["sampling_27nfe_img_per_s"] = 500 / (time.perf_counter() - t0)
    result["wall_s"] = time.time() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
