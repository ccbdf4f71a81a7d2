"""What a training run writes and trusts: checkpoints, the loss log, and the run's numerical health.

Nothing is lost and nothing goes wrong silently:

* a checkpoint is written atomically and the one it replaces is kept as ``checkpoint.prev.pt``;
* an unreadable checkpoint (truncated, corrupt) or a loss log with a corrupt line (a run killed
  mid-write) is reported by name, moved aside as ``<name>.corrupt``, and the run resumes from the
  previous good state (``checkpoint.prev.pt``, else from scratch);
* a checkpoint of another config or other training data is moved aside as ``<name>.stale`` (with
  its loss log) and the run starts afresh, with a log line saying so;
* :class:`NumericWatch` stops the run with :class:`NonFiniteTrainingError` once the loss has been
  non-finite for N consecutive steps or an EMA weight is, before anything else is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from .safe_pickle import safe_torch_load
from .utils import AtomicPath

__all__ = ["resume_state", "save_checkpoint", "read_loss_log", "NumericWatch", "NonFiniteTrainingError"]


def _set_aside(path: Path, tag: str, why: str, log: Callable[[str], None]) -> None:
    aside = path.with_name(f"{path.name}.{tag}")
    os.replace(path, aside)
    log(f"[train] {path} {why}; moved it to {aside}")


def read_loss_log(path: Path, *, repair: bool = True, log: Callable[[str], None] = print) -> tuple[list, bool]:
    """``(rows, corrupt)``: the rows of a loss log up to its first corrupt line. With ``repair`` a corrupt
    file is moved aside as ``<name>.corrupt`` (the caller writes the good rows back)."""
    rows: list = []
    if not path.exists():
        return rows, False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("no integer 'step'")
        except ValueError as exc:
            if repair:
                _set_aside(path, "corrupt", f"line {number} is corrupt ({exc}); keeping its {len(rows)} good rows",
                           log)
            return rows, True
        rows.append(row)
    return rows, False


def resume_state(checkpoint: Path, loss_log: Path, *, fingerprint: str, data_fingerprint: str, log_every: int,
                 device="cpu", repair: bool = True, log: Callable[[str], None] = print) -> tuple[Optional[dict], list]:
    """``(state, rows)``: the newest usable checkpoint of this config and data (``checkpoint``, then
    ``checkpoint.prev.pt``; ``state["path"]`` says which) or None, and the loss-log rows up to its step.

    Only with ``repair`` (rank 0) are files moved aside; other ranks read what rank 0 left.
    """
    rows, log_corrupt = read_loss_log(loss_log, repair=repair, log=log)
    for path in (checkpoint, checkpoint.with_name("checkpoint.prev.pt")):
        if not path.exists():
            continue
        try:
            state = safe_torch_load(path, map_location=device)
            step = int(state["step"])
            missing = {"net", "ema", "optimizer"} - set(state)
            if missing:
                raise KeyError(f"no {sorted(missing)}")
        except Exception as exc:  # truncated zip, bad pickle, missing keys: all mean "unusable"
            if repair:
                _set_aside(path, "corrupt", f"is unreadable ({type(exc).__name__}: {exc})", log)
            continue
        why = ("a different training config" if state.get("fingerprint") != fingerprint else
               "different training data" if state.get("data_fingerprint") != data_fingerprint else None)
        if why:
            if repair:
                _set_aside(path, "stale", f"was written with {why}; starting afresh", log)
                if loss_log.exists():
                    _set_aside(loss_log, "stale", "belongs to that stale run", log)
            rows = []
            continue
        last_logged = step - step % log_every
        if log_corrupt and last_logged and last_logged not in {r["step"] for r in rows}:
            log(f"[train] not resuming from {path}: the corrupt loss log lost its rows up to step {step}")
            continue
        state["path"] = path
        return state, [r for r in rows if r["step"] <= step]
    return None, []


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``path`` atomically, keeping the checkpoint it replaces as ``checkpoint.prev.pt``."""
    with AtomicPath(path) as tmp:
        with open(tmp, "wb") as f:  # a handle, not a path: the zip root is fixed, the bytes reproducible
            torch.save(state, f)
        if path.exists():
            os.replace(path, path.with_name("checkpoint.prev.pt"))


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss or EMA weight; nothing further was written."""


# Divergence: a step whose loss is more than this many times the lowest loss so far counts as a fault, like a
# non-finite one. An EDM loss varies by a few times from batch to batch (sigma is drawn per sample); a learning
# rate that blows training up takes it up by orders of magnitude within a few steps (lr 10 on digits: 1.9 to
# 3.5e6 in 6 steps), long before it overflows to inf.
DIVERGENCE_FACTOR = 100.0


class NumericWatch:
    """Counts, on the device, consecutive faulty losses (no host sync per step): non-finite, or more than
    :data:`DIVERGENCE_FACTOR` times the lowest loss of this run so far. :meth:`check` reads the count (one
    sync, at log and checkpoint steps) and raises :class:`NonFiniteTrainingError`."""

    def __init__(self, max_steps: int, lr: float, device, checkpoint: Path, start_step: int = 0):
        self.max_steps, self.lr, self.checkpoint = max_steps, lr, checkpoint
        self.step = torch.full((), float(start_step), dtype=torch.float64, device=device)  # no per-step upload
        self.run = torch.zeros((), dtype=torch.int64, device=device)
        self.low = torch.full((), float("inf"), dtype=torch.float64, device=device)  # lowest finite loss so far
        self.fault = torch.full((3,), float("nan"), dtype=torch.float64, device=device)  # (step, loss, low)

    def update(self, loss: torch.Tensor) -> None:
        """Record one step's (device) loss."""
        self.step += 1
        loss = loss.double()
        finite = loss.isfinite()
        self.low = torch.where(finite, torch.minimum(self.low, loss), self.low)
        faulty = ~finite | (loss > DIVERGENCE_FACTOR * self.low)
        self.run = (self.run + 1) * faulty
        hit = (self.run == self.max_steps) & self.fault[0].isnan()
        self.fault = torch.where(hit, torch.stack([self.step, loss, self.low]), self.fault)

    def check(self, step: int, net: torch.nn.Module, ema: torch.nn.Module, world: int = 1) -> None:
        """Raise if the loss has been non-finite too long, or any weight of ``net`` or ``ema`` is (from a
        non-finite weight training cannot recover, so that stops the run at once)."""
        def bad(module):
            return torch.stack([~p.isfinite().all() for p in module.parameters()]).any().double()
        flags = torch.stack([(~self.fault[0].isnan()).double(), bad(net), bad(ema)])
        if world > 1:  # every rank stops together
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        loss_bad, net_bad, ema_bad = (bool(f) for f in flags.tolist())
        if not (loss_bad or net_bad or ema_bad):
            return
        fault_step, loss, low = self.fault.tolist()
        if loss_bad and fault_step == fault_step:
            kind = f"non-finite ({loss})" if not math.isfinite(loss) else \
                f"diverging ({loss:.4g}, over {DIVERGENCE_FACTOR:g}x its lowest value so far, {low:.4g})"
            what = (f"the loss was {kind} for {self.max_steps} consecutive steps, "
                    f"steps {fault_step - self.max_steps + 1:.0f} to {fault_step:.0f}")
        elif loss_bad:
            what = "another rank's loss was non-finite"
        else:
            what = f"at step {step} the {'network' if net_bad else 'EMA'} weights hold NaN/inf values"
        raise NonFiniteTrainingError(
            f"training stopped: {what}. Likely causes: the learning rate is too high (lr={self.lr:g}; try 10x "
            f"lower or a longer lr_rampup_kimg), training data outside [-1, 1] or holding NaN/inf, or a broken "
            f"network config. No network file was written; {self.checkpoint} holds the last checkpoint, if any.")


def data_fingerprint(images: torch.Tensor, labels: Optional[torch.Tensor]) -> str:
    """Hash of the training data (shape, dtype and bytes of images and labels)."""
    h = hashlib.sha256()
    for t in (images, labels):
        if t is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()[:16]
