"""Running on a cluster: what each job asks for, whether a partition can ever give it, and when a job's
time is up.

- **Requests** come from the stage table (each stage's ``resources`` class: light, network or train) and the profile's
  sizes (``resources.<class>`` in params.yaml), so one cluster profile serves smoke, digits and cifar10.
  The site's own settings (account, partitions, status command) live in config/slurm.
- **Pre-flight**: before Snakemake submits anything to SLURM, every rule's request is compared with what
  its partition offers (``sinfo``); a request no node can satisfy stops the run at once, naming the rule,
  the resource and the partition (otherwise the job would pend forever, reason PartitionConfig).
- **Time limits**: training stops at a checkpoint when the job's time is nearly up (:func:`job_deadline`)
  and exits with :data:`RESUBMIT_EXIT`; the rule's ``retries`` resubmit it and the bitwise resume goes on.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import yaml

__all__ = ["RESOURCE_CLASSES", "requests", "site_settings", "parse_sinfo", "preflight", "ClusterError", "job_deadline",
           "RESUBMIT_EXIT", "DEADLINE_ENV"]

RESOURCE_CLASSES = ("light", "network", "train")
SITE_FILE = Path("config/slurm/site.yaml")
RESUBMIT_EXIT = 75  # EX_TEMPFAIL: stopped at a checkpoint before the job's time limit; run again to resume
DEADLINE_ENV = "AOT_DIFFUSION_DEADLINE"  # unix time by which a job must have stopped (else SLURM's end time)
MARGIN_ENV = "AOT_DIFFUSION_DEADLINE_MARGIN"  # seconds kept free before the deadline (default 120)


class ClusterError(RuntimeError):
    """A request that the cluster can never satisfy."""


def site_settings(root: Path | str = ".") -> dict:
    """config/slurm/site.yaml: account and partitions of this site ({} when absent: a local run)."""
    path = Path(root) / SITE_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def requests(st, ctx, site: dict | None = None) -> dict:
    """Snakemake resources of one stage's jobs: the profile's sizes for the stage's resource class, its GPU count
    (stage table: 1, or train.nproc_per_node) where that class runs on GPUs, and the site's partition."""
    size = dict(ctx.p["resources"][st.resources])
    size.pop("resubmits")  # the rule's retries, not a resource
    on_gpu = size.pop("gpu", False) and ctx.p["device"] != "cpu"
    out = dict(size, gpu=st.gpus(ctx) if on_gpu else 0)
    site = site or {}
    partition = site.get("gpu_partition" if out["gpu"] else "cpu_partition")
    if partition:
        out["slurm_partition"] = partition
    if site.get("account"):
        out["slurm_account"] = site["account"]
    return out


# ---------------------------------------------------------------------------------------------- pre-flight

SINFO_FORMAT = "%P|%c|%m|%l|%G"  # partition, CPUs per node, memory per node (MB), time limit, GRES


def _minutes(limit: str) -> float:
    """sinfo's time limit ('infinite', 'D-HH:MM:SS', 'HH:MM:SS', 'MM:SS', 'MM') in minutes."""
    limit = limit.strip()
    if limit.lower() in ("infinite", "unlimited", "n/a", ""):
        return math.inf
    days, _, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + s / 60


def _gpus(gres: str) -> int:
    """GPUs per node from sinfo's GRES ('gpu:4', 'gpu:a100:4(S:0-1)', '(null)')."""
    return sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[\w.-]+)*?:(\d+)", gres))


def parse_sinfo(text: str) -> dict:
    """``sinfo -h -o '%P|%c|%m|%l|%G'`` -> {partition: dict(cpus, mem_mb, runtime, gpu)}, the most any one
    node of the partition offers (a partition has one row per node configuration)."""
    out: dict = {}
    for line in text.strip().splitlines():
        if not line.strip():
            continue
        name, cpus, mem, limit, gres = (x.strip() for x in line.split("|"))
        name = name.rstrip("*")  # the default partition is starred
        row = dict(cpus_per_task=int(cpus.rstrip("+")), mem_mb=int(mem.rstrip("+")), runtime=_minutes(limit),
                   gpu=_gpus(gres))
        best = out.setdefault(name, row)
        for k, v in row.items():
            best[k] = max(best[k], v)
    return out


_UNITS = {"cpus_per_task": "CPUs", "mem_mb": "MB of memory", "runtime": "minutes", "gpu": "GPUs"}


def preflight(rule_requests: dict, partitions: dict, default_partition: str | None = None) -> None:
    """Refuse, before anything is submitted, every rule whose request its partition can never satisfy."""
    problems = []
    for rule, req in sorted(rule_requests.items()):
        part = req.get("slurm_partition", default_partition)
        if part not in partitions:
            problems.append(f"rule {rule}: partition {part!r} does not exist (sinfo lists {sorted(partitions)})")
            continue
        for key, unit in _UNITS.items():
            want, have = req.get(key, 0) or 0, partitions[part][key]
            if want > have:
                problems.append(f"rule {rule}: asks for {want:g} {unit} but partition {part!r} offers at most "
                                f"{have:g} per node")
    if problems:
        raise ClusterError("pre-flight: these jobs could never start; lower resources.<class> in the profile or "
                           "choose other partitions in config/slurm/site.yaml:\n  " + "\n  ".join(problems))


def sinfo() -> dict:
    """The partitions of the cluster this machine submits to."""
    if shutil.which("sinfo") is None:
        raise ClusterError("pre-flight: sinfo not found on this machine, so SLURM can't be asked what it offers")
    out = subprocess.run(["sinfo", "-h", "-o", SINFO_FORMAT], capture_output=True, text=True, check=True).stdout
    return parse_sinfo(out)


# ---------------------------------------------------------------------------------------------- time limits

def job_deadline() -> float | None:
    """Unix time by which this job must have stopped, minus a margin: $AOT_DIFFUSION_DEADLINE, else the
    end time SLURM gives this job; None when neither is known (no limit)."""
    margin = float(os.environ.get(MARGIN_ENV, "120"))
    if os.environ.get(DEADLINE_ENV):
        return float(os.environ[DEADLINE_ENV]) - margin
    job = os.environ.get("SLURM_JOB_ID")
    if job and shutil.which("squeue"):
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True).stdout.strip()
        try:
            return time.mktime(time.strptime(out, "%Y-%m-%dT%H:%M:%S")) - margin
        except ValueError:
            return None
    return None
