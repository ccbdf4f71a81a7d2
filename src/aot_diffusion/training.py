"""EDM's training loop with AOT noise pairing (Kim et al. 2024) as a switch.

Each rank draws a *pool* of ``pool_size`` (augmented) images with one unit noise each. With AOT on,
the noises are reordered by the exact Euclidean assignment (``aot.pair_noise``, class-wise when
conditional); with AOT off they stay random. The pool is then consumed in mini-batches of
``batch_per_rank`` over ``pool_size // batch_per_rank`` rounds. Everything else is EDM's loop: Adam with
learning-rate ramp-up, EMA with half-life and ramp-up ratio, NaN/inf gradient sanitising, gradient
accumulation, DDP under torchrun.

Determinism and resume: pool k of rank r is a pure function of (seed, r, k), and the global RNG (dropout,
sigma) is re-seeded from (seed, r, step) at every step, so a resumed run replays exactly what an
uninterrupted one would have done. Pools are prepared and paired by a background thread while the
previous pool trains, which keeps pairing off the critical path.

Failing loudly, losing nothing: non-finite losses or weights raise :class:`NonFiniteTrainingError` before
anything more is written; checkpoint and loss-log recovery are in :mod:`aot_diffusion.train_state`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from . import aot
from .pools import Pool, PoolSource, _Prefetcher, _seed  # noqa: F401 (Pool, PoolSource: public here too)
from .safe_pickle import check_weights, safe_torch_load
from .schema import MAX_NETWORK_PARAMETERS
from .loss import EDMLoss
from .networks import build_network
from .train_state import NonFiniteTrainingError, NumericWatch, data_fingerprint, resume_state, save_checkpoint
from .utils import atomic_save, atomic_write_text

__all__ = ["TrainConfig", "PoolSource", "Pool", "train", "load_network", "data_fingerprint",
           "NonFiniteTrainingError"]


@dataclass
class TrainConfig:
    network: dict                       # EDM constructor arguments (build_network)
    batch_size: int = 128               # total over ranks and accumulation rounds
    batch_per_rank: Optional[int] = None  # mini-batch per rank and round; None = batch_size // world
    pairing: str = "none"               # a name of aot.PAIRINGS: none (EDM), assignment (AOT, per pool), ...
    pairing_options: dict = field(default_factory=dict)  # the pairing's own options (aot.PAIRING_OPTIONS)
    pool_size: int = 512                # images per pairing pool, per rank
    solver: str = "auto"                # exact assignment solver (aot.ASSIGNMENT_SOLVERS)
    knn_k: int = 4
    conditional: bool = False
    total_steps: int = 1000
    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    lr_rampup_kimg: float = 10_000.0
    ema_halflife_kimg: float = 500.0
    ema_rampup_ratio: Optional[float] = 0.05
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5
    augment_p: float = 0.0
    prefetch: bool = True               # pair the next pool in a background thread
    max_nonfinite_steps: int = 3        # stop after this many consecutive non-finite losses
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    device: str = "cpu"

    def __post_init__(self):
        self.betas = tuple(self.betas)

    def validate(self, world_size: int = 1) -> None:
        def fail(name, msg):
            raise ValueError(f"training parameter {name!r}: {msg}")
        for name in ("conditional", "prefetch"):
            if not isinstance(getattr(self, name), bool):
                fail(name, f"must be true or false, got {getattr(self, name)!r}")
        for name in ("batch_size", "pool_size", "total_steps", "log_every", "checkpoint_every",
                     "max_nonfinite_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                fail(name, f"must be a positive integer, got {v!r}")
        if self.batch_size % world_size:
            fail("batch_size", f"{self.batch_size} is not divisible by the number of ranks ({world_size})")
        per_rank = self.batch_size // world_size
        bpr = self.batch_per_rank or per_rank
        if per_rank % bpr:
            fail("batch_per_rank", f"{bpr} does not divide the per-rank batch {per_rank}")
        if self.pool_size < bpr:
            fail("pool_size", f"pool ({self.pool_size}) is smaller than the per-rank mini-batch ({bpr})")
        if self.pool_size % bpr:
            fail("pool_size", f"pool ({self.pool_size}) is not divisible by the per-rank mini-batch ({bpr})")
        if self.pairing not in aot.PAIRINGS:
            fail("pairing", f"must be one of {sorted(aot.PAIRINGS)} (aot.PAIRINGS), got {self.pairing!r}")
        if set(self.pairing_options) != set(aot.PAIRING_OPTIONS[self.pairing]):
            fail("pairing_options", f"the pairing {self.pairing!r} takes {sorted(aot.PAIRING_OPTIONS[self.pairing])}, "
                                    f"got {sorted(self.pairing_options)}")
        if self.solver not in aot.ASSIGNMENT_SOLVERS:
            fail("solver", f"must be one of {aot.ASSIGNMENT_SOLVERS}, got {self.solver!r}")
        if not 0 < self.lr < float("inf"):
            fail("lr", f"must be positive, got {self.lr!r}")
        if not 0 <= self.augment_p <= 1:
            fail("augment_p", f"must be in [0, 1], got {self.augment_p!r}")

    def fingerprint(self) -> str:
        """Hash of every setting that changes the result (a checkpoint of another config is not resumed)."""
        ignored = ("log_every", "checkpoint_every", "prefetch", "max_nonfinite_steps")
        keys = {k: v for k, v in asdict(self).items() if k not in ignored}
        return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dist_info():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> tuple[int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return _dist_info()


def _ema_beta(cfg: TrainConfig, cur_nimg: int) -> float:
    halflife = cfg.ema_halflife_kimg * 1000
    if cfg.ema_rampup_ratio is not None:
        halflife = min(halflife, cur_nimg * cfg.ema_rampup_ratio)
    return 0.5 ** (cfg.batch_size / max(halflife, 1e-8))


# A network file's config is built on the meta device first (no memory) and refused above this many weights:
# 500M float32 weights are 2 GB, ~9x EDM's largest CIFAR-10 network (NCSN++, 56M); the schema's bound too.
MAX_PARAMETERS = MAX_NETWORK_PARAMETERS


def load_network(path, map_location="cpu") -> torch.nn.Module:
    """Load a network written by ``train`` (EMA weights and the config that builds it); runs no code, and
    builds nothing larger than :data:`MAX_PARAMETERS` weights, nor than the weights the file holds (a 2 KB file
    may name a huge architecture)."""
    blob = safe_torch_load(path, map_location=map_location)
    try:
        with torch.device("meta"):  # names and shapes only, no memory
            expected = build_network(blob["network_config"]).state_dict()
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: its network_config can't build a network ({exc})") from None
    count = sum(t.numel() for t in expected.values())
    if count > MAX_PARAMETERS:
        raise ValueError(f"refusing {path}: its network_config builds {count:,} weights, over the "
                         f"{MAX_PARAMETERS:,} this pipeline allows (the file is corrupt or not ours)")
    check_weights(expected, blob.get("ema"), path)  # names and shapes, before the real build
    net = build_network(blob["network_config"])
    net.load_state_dict(blob["ema"])
    return net.to(map_location).eval().requires_grad_(False)  # load_state_dict copies into the CPU build


def _check_data(images, labels, num_classes, conditional):
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"training images must be float [N, C, H, W], got {images.dtype} {list(images.shape)}")
    if not bool(images.isfinite().all()) or images.min() < -1 - 1e-6 or images.max() > 1 + 1e-6:
        raise ValueError(f"training images must be finite and in [-1, 1] (no NaN/inf), found "
                         f"[{images.min():.4g}, {images.max():.4g}]")
    if conditional and (labels is None or labels.shape != images.shape[:1] or labels.is_floating_point()
                        or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes))):
        raise ValueError(f"conditional training needs one integer label in [0, {num_classes}) per image")


def train(cfg: TrainConfig, images: torch.Tensor, labels: Optional[torch.Tensor], *, out_path, checkpoint_dir,
          num_classes: int = 0, augment: Optional[Callable] = None, log: Callable[[str], None] = print,
          stop_after: Optional[int] = None, deadline: Optional[float] = None, resume_key: str = "") -> dict:
    """Train and write the EMA network to ``out_path``; ``images`` float in [-1, 1], [N, C, H, W], ``labels``
    int ids. Resumes from ``checkpoint_dir`` (checkpoint.pt, else checkpoint.prev.pt) when it holds a
    checkpoint of the same config *and* training data (and ``resume_key``: the pipeline passes the job's record
    digest, so code and plugin edits count too); a stale one (other config, data or key) is moved aside
    as ``*.stale`` with a log line and training starts afresh; an unreadable checkpoint or a corrupt line
    in loss.jsonl is moved aside as ``*.corrupt`` and training resumes from the previous good state.
    ``stop_after`` ends the process early after that many steps (tests of resume) without writing out_path.
    ``deadline`` (unix time): stop at the first checkpoint after which the next one might not be reached in
    time (1.5x the last checkpoint interval), returning ``stopped`` and ``deadline``: a cluster job resubmits,
    and training resumes from that checkpoint to the same bytes.
    Raises :class:`NonFiniteTrainingError` (writing nothing more) when the loss or weights stop being finite.
    """
    rank, world = init_distributed(cfg.device)
    cfg.validate(world)
    _check_data(images, labels, num_classes, cfg.conditional)
    local = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    device = torch.device(local if cfg.device.startswith("cuda") else cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    per_rank = cfg.batch_size // world
    bpr = cfg.batch_per_rank or per_rank
    rounds = per_rank // bpr
    steps_per_pool = cfg.pool_size // bpr
    checkpoint_dir = Path(checkpoint_dir)
    ckpt_path = checkpoint_dir / "checkpoint.pt"
    log_path = checkpoint_dir / "loss.jsonl"
    data_fp = data_fingerprint(images, labels)

    torch.manual_seed(_seed("init", cfg.seed))  # same initial weights on every rank
    net = build_network(cfg.network).to(device).train().requires_grad_(True)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    loss_fn = EDMLoss(P_mean=cfg.P_mean, P_std=cfg.P_std, sigma_data=cfg.sigma_data)

    if world > 1 and rank != 0:  # rank 0 repairs the checkpoint folder first; the others read what it left
        dist.barrier()
    # ``resume_key``: the job's record digest (its parameters, code and plugins), so a checkpoint is resumed
    # only by the job that made it
    fingerprint = cfg.fingerprint() if not resume_key else \
        hashlib.sha256(f"{cfg.fingerprint()} {resume_key}".encode()).hexdigest()[:16]
    state, rows = resume_state(ckpt_path, log_path, fingerprint=fingerprint, data_fingerprint=data_fp,
                               log_every=cfg.log_every, device=device, repair=rank == 0, log=log)
    step = 0
    if state is not None:
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        log(f"resumed from {state['path']} at step {step}")
    if rank == 0:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in rows))
    if world > 1 and rank == 0:  # the others may now read the repaired folder
        dist.barrier()
    if world > 1:  # every rank must resume at the same step
        steps = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
        dist.all_gather(steps, torch.tensor([step], device=device))
        if len({int(s) for s in steps}) != 1:
            raise RuntimeError(f"ranks resumed from different steps {[int(s) for s in steps]}")

    ddp = net
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    source = PoolSource(images, labels if cfg.conditional else None, pool_size=cfg.pool_size,
                        solver=cfg.solver, pairing=cfg.pairing, pairing_options=cfg.pairing_options, knn_k=cfg.knn_k, seed=cfg.seed, rank=rank,
                        num_classes=num_classes if cfg.conditional else 0, augment=augment, device=str(device))
    # Position in the pool stream: each round consumes one mini-batch.
    batch_pos = step * rounds
    prefetch = _Prefetcher(source, batch_pos // steps_per_pool, cfg.prefetch,
                           last=(cfg.total_steps * rounds - 1) // steps_per_pool)
    pool = prefetch.get()
    offset = batch_pos % steps_per_pool

    stats = dict(loss=0.0, n=0, pair_ms=[], paired=[], random=[])
    t_log = time.perf_counter()
    t_ckpt = time.time()  # the start of the current checkpoint interval (deadline)
    history = []
    watch = NumericWatch(cfg.max_nonfinite_steps, cfg.lr, device, ckpt_path, start_step=step)
    try:
        while step < cfg.total_steps:
            torch.manual_seed(_seed("step", cfg.seed, rank, step))  # dropout and sigma
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for r in range(rounds):
                if offset == steps_per_pool:
                    pool, offset = prefetch.get(), 0
                if offset == 0:
                    stats["pair_ms"].append(pool.pair_ms)
                    stats["paired"].append(pool.paired_distance)
                    stats["random"].append(pool.random_distance)
                sl = slice(offset * bpr, (offset + 1) * bpr)
                offset += 1
                batch_labels = pool.labels[sl] if pool.labels is not None else None
                aug = pool.augment_labels[sl] if pool.augment_labels is not None else None
                sync = world > 1 and r == rounds - 1
                ctx = ddp.no_sync() if world > 1 and not sync else contextlib.nullcontext()
                with ctx:
                    loss = loss_fn(ddp, pool.images[sl], pool.noise[sl], batch_labels, augment_labels=aug)
                    loss.sum().mul(1.0 / per_rank).backward()
                step_loss = step_loss + loss.detach().mean() / rounds  # stays on the device: no sync per step
            stats["loss"] += step_loss
            stats["n"] += 1
            watch.update(step_loss)

            cur_nimg = step * cfg.batch_size
            for g in optimizer.param_groups:
                g["lr"] = cfg.lr * min(cur_nimg / max(cfg.lr_rampup_kimg * 1000, 1e-8), 1)
            for p in net.parameters():
                if p.grad is not None:
                    torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
            optimizer.step()
            beta = _ema_beta(cfg, cur_nimg)
            with torch.no_grad():
                for p_ema, p_net in zip(ema.parameters(), net.parameters()):
                    p_ema.copy_(p_net.detach().lerp(p_ema, beta))
            step += 1

            stopping = stop_after is not None and stop_after <= step < cfg.total_steps
            logging, saving = step % cfg.log_every == 0, step % cfg.checkpoint_every == 0
            if logging or saving or stopping or step == cfg.total_steps:
                watch.check(step, net, ema, world)  # before anything is written
            if logging or step == cfg.total_steps:
                elapsed = time.perf_counter() - t_log
                if not stats["paired"]:  # a pool outlasted the window: report the pool it trained on
                    stats.update(pair_ms=[pool.pair_ms], paired=[pool.paired_distance], random=[pool.random_distance])
                # sec_per_kimg and pair_ms are wall-clock: the train stage keeps them out of the tracked loss.csv
                # (stages.train.TIMING_FIELDS) and writes them to the untracked timing log (Layout.timing_log)
                row = dict(step=step, kimg=step * cfg.batch_size / 1000, loss=float(stats["loss"]) / max(stats["n"], 1),
                           sec_per_kimg=elapsed / max(stats["n"] * cfg.batch_size / 1000, 1e-9),
                           pair_ms=float(np.mean(stats["pair_ms"])), paired_distance=float(np.mean(stats["paired"])),
                           random_distance=float(np.mean(stats["random"])),
                           lr=optimizer.param_groups[0]["lr"])
                history.append(row)
                if rank == 0:
                    eta = row["sec_per_kimg"] * (cfg.total_steps - step) * cfg.batch_size / 1000
                    log(f"step {step}/{cfg.total_steps} kimg {row['kimg']:.1f} loss {row['loss']:.4f} "
                        f"sec/kimg {row['sec_per_kimg']:.2f} ETA {eta / 60:.1f} min pair {row['pair_ms']:.1f} ms "
                        f"dist paired/random {row['paired_distance']:.3f}/{row['random_distance']:.3f}")
                    with open(log_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                stats = dict(loss=0.0, n=0, pair_ms=[], paired=[], random=[])
                t_log = time.perf_counter()

            if saving or step == cfg.total_steps:
                if rank == 0:
                    save_checkpoint(dict(net=net.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                                         step=step, fingerprint=fingerprint, data_fingerprint=data_fp),
                                    ckpt_path)
                if world > 1:
                    dist.barrier()
                now = time.time()
                out_of_time = deadline is not None and step < cfg.total_steps and now + 1.5 * (now - t_ckpt) > deadline
                if world > 1:  # every rank stops at the same checkpoint
                    flag = torch.tensor([float(out_of_time)], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    out_of_time = bool(flag.item())
                t_ckpt = now
                if out_of_time:
                    if rank == 0:
                        log(f"stopping at the checkpoint of step {step}: the next one may not fit before the job's "
                            f"time limit ({max(deadline - now, 0):.0f} s left)")
                    return dict(step=step, stopped=True, deadline=True)
            if stopping:
                return dict(step=step, stopped=True)
    finally:
        prefetch.close()

    if world > 1:  # DDP keeps replicas identical; check it rather than assume it
        checksum = torch.stack([p.detach().double().sum() for p in ema.parameters()]).sum().reshape(1).to(device)
        gathered = [torch.zeros_like(checksum) for _ in range(world)]
        dist.all_gather(gathered, checksum)
        sums = [g.item() for g in gathered]
        if rank == 0:
            log(f"rank EMA checksums: {sums}")
        if len(set(sums)) != 1:
            raise RuntimeError(f"DDP ranks diverged: EMA checksums {sums}")
    if rank == 0:
        atomic_save(dict(network_config=cfg.network, ema=ema.state_dict(), train_config=asdict(cfg), step=step,
                         data_fingerprint=data_fp), out_path)
    if world > 1:
        dist.barrier()
    return dict(step=step, history=history, ema=ema)

