"""The train stage: EDM training of one model, AOT as a switch (training.py), under torchrun when asked."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys

import torch

from ..cluster import RESUBMIT_EXIT, job_deadline
from ..data import load_dataset
from ..training import TrainConfig, train as train_loop
from ..utils import AtomicPath
from . import Run

# Parameters of train.* that are not TrainConfig fields: how many processes, the network, and what the stage
# table's context resolves per job (the pool by conditioning, the seed).
_LAUNCH_KEYS = ("nproc_per_node", "pool_size", "pool_size_cond", "network", "seeds")


def _torchrun_relaunch(nproc: int, log) -> None:
    """Re-run this very command under torchrun when the parameters ask for several processes."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "aot_diffusion.cli", *sys.argv[1:]]
        log(f"launching {nproc} processes: {' '.join(cmd)}")
        sys.exit(subprocess.call(cmd))


def train_config(run: Run, data: dict) -> TrainConfig:
    job, t = run.trained(), run.params["train"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = {k: v for k, v in t.items() if k in fields and k not in _LAUNCH_KEYS}
    unused = sorted(set(t) - fields - set(_LAUNCH_KEYS))
    if unused:
        raise RuntimeError(f"train.{unused[0]} has no TrainConfig field: the training loop would ignore it")
    net = dict(t["network"], img_channels=int(data["train_images"].shape[1]),
               img_resolution=int(data["train_images"].shape[2]))
    if job["conditional"]:
        net["label_dim"] = int(data["num_classes"])
    if t["augment_p"] > 0:
        from ..augment import EDM_CIFAR10_AUGMENT, augment_dim

        net["augment_dim"] = augment_dim(**EDM_CIFAR10_AUGMENT)
    return TrainConfig(network=net, pairing=job["pairing"], pairing_options=job["pairing_options"],
                       pool_size=job["pool_size"], conditional=job["conditional"], device=run.device, seed=job["seed"],
                       **kwargs)


# Wall-clock fields of a loss-log row (training.train): never in the tracked loss.csv, whose bytes must be the
# same for two identical runs; they go to the untracked timing log (Layout.timing_log) instead.
TIMING_FIELDS = ("sec_per_kimg", "pair_ms")


def _write_csv(rows, cols, out) -> None:
    with AtomicPath(out, suffix=".csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _loss_csv(jsonl, out, timing=None) -> None:
    """The loss log as CSV, which `dvc plots` reads (x: kimg, y: loss): the deterministic fields only. The
    wall-clock ones (TIMING_FIELDS), with the step, go to ``timing`` when given."""
    rows = [json.loads(line) for line in open(jsonl) if line.strip()]
    cols = [c for c in (list(rows[0]) if rows else ["step", "kimg", "loss"]) if c not in TIMING_FIELDS]
    _write_csv(rows, cols, out)
    if timing is not None:
        _write_csv(rows, ["step", *TIMING_FIELDS], timing)


def train(run: Run, stop_after: int | None = None) -> None:
    model = run.key
    _torchrun_relaunch(run.params["train"]["nproc_per_node"], run.log)
    d = load_dataset(run.layout.dataset)
    cfg = train_config(run, d)
    augment = None
    if cfg.augment_p > 0:
        from ..augment import EDM_CIFAR10_AUGMENT, AugmentPipe

        augment = AugmentPipe(**dict(EDM_CIFAR10_AUGMENT, p=cfg.augment_p))
    options = "".join(f" {k}={v}" for k, v in cfg.pairing_options.items())
    run.log(f"pairing={cfg.pairing}{options} conditional={cfg.conditional} steps={cfg.total_steps} "
            f"batch={cfg.batch_size} pool={cfg.pool_size} device={cfg.device}")
    ckpt = run.layout.checkpoints(model)
    result = train_loop(cfg, torch.as_tensor(d["train_images"]), torch.as_tensor(d["train_labels"]),
                        out_path=run.layout.network(model), checkpoint_dir=ckpt, num_classes=int(d["num_classes"]),
                        augment=augment, log=run.log, stop_after=stop_after, deadline=job_deadline(),
                        resume_key=run.plan.digest(run.stage, run.key))
    if result.get("deadline"):  # the job's time is nearly up: the rule's retries resubmit and resume
        run.log(f"stopped at step {result['step']} before the job's time limit; exit {RESUBMIT_EXIT}: run again "
                f"to resume from the checkpoint")
        sys.exit(RESUBMIT_EXIT)
    if result.get("stopped"):
        run.log(f"stopped after step {result['step']} (--stop-after); rerun to resume")
        return False
    if int(os.environ.get("RANK", "0")) == 0:
        _loss_csv(ckpt / "loss.jsonl", run.layout.loss_log(model), timing=run.layout.timing_log(model))
        # finished: the network is the result, and a later (forced or changed) run of this job starts afresh
        for name in ("checkpoint.pt", "checkpoint.prev.pt"):
            (ckpt / name).unlink(missing_ok=True)
