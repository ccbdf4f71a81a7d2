"""What each CLI subcommand runs: one module per stage family. A stage reads its declared parameters (a
params.StageParams view), takes its paths from layout.Layout and writes its outputs atomically; the CLI only
parses arguments and dispatches."""

from __future__ import annotations

import json
import sys
import time
from functools import cached_property

from ..params import ParamError, StageParams, device_of, load_params
from ..utils import atomic_write_text, remove_stale_temps

__all__ = ["Run", "JobClock"]


class Run:
    """One stage run: its declared parameters (read-only), paths, device, a log that names the stage and key,
    and, when it finishes, its parameter record (dag.Plan)."""

    def __init__(self, stage, key: str | None = None, params_path="params.yaml"):
        from .. import dag
        from ..frontdoors import check_run_lock, refuse_if_snakemake_running

        refuse_if_snakemake_running()
        full = load_params(params_path)
        check_run_lock(full)
        self.stage, self.key = stage, key
        self.plan = dag.Plan(full)
        if stage.over in dag.KEYED and key not in dag.keys_of(stage, self.plan.ctx):
            where = {"model": "models", "disc": "guidance.discriminators", "variant": "pool_study.variants",
                     "network": "calibration.networks (with a pickle)"}[stage.over]
            raise ParamError(f"unknown {stage.over} {key!r}; params.yaml '{where}' has "
                             f"{sorted(dag.keys_of(stage, self.plan.ctx))}")
        self.study = stage.over == "variant"  # a pool-size study variant: a model of the study, its own folder
        self.layout = self.plan.L.pool_study if self.study else self.plan.L
        self.params = StageParams(full, self.plan.declared(stage, key), dag.job_id(stage, key))
        self.tag = stage.cli + (" pool_study" if self.study else "") + (f" {key}" if key else "")
        for path in [*stage.outs(self.plan.L, self.plan.ctx, key), self.plan.record_path(stage, key)]:
            remove_stale_temps(path)  # a killed run of this job left them; nobody else writes these paths
        self.t0 = time.perf_counter()

    @cached_property
    def device(self) -> str:
        return device_of(self.params)

    def log(self, msg: str) -> None:
        print(f"[{self.tag}] {msg} ({time.perf_counter() - self.t0:.0f} s)", flush=True)

    # What this job runs, as the stage table's context decided it (dag.Context): never worked out again here.
    def trained(self) -> dict:
        """A training job's model (or study variant): seed, conditioning, pairing and its options, pool."""
        return self.plan.ctx.trained(self.key, variant=self.study)

    def discriminator(self) -> dict:
        """A discriminator job's guided model, its first-seed trained model, conditioning and pairing."""
        return self.plan.ctx.discriminator(self.key)

    def guidance_choice(self, name: str):
        """guidance.<name>_cond / _uncond as this discriminator's model is conditioned."""
        return self.plan.ctx.guidance_choice(self.key, name)

    def sample_grid(self) -> list:
        """The (steps, rho) settings this sampling job draws."""
        return self.plan.ctx.sample_grid(self.stage, self.key)

    def first(self, model: str) -> str:
        """The trained model of ``model``'s first training seed (what DG and the hybrid samplers use)."""
        return self.plan.ctx.first(model)

    def feature_space(self):
        """The FD's feature network that stage feature_network wrote, on this job's device."""
        from ..metrics.features import FeatureSpace

        return FeatureSpace(self.layout.feature_network, self.device, self.params["fd"]["feature_batch"])

    def write_record(self) -> None:
        """The evidence of what this run computed from and wrote: written last, the only record in its folder."""
        from ..provenance import environment

        uses_net = "device" in self.plan.declared(self.stage, self.key)
        self.plan.write_record(self.stage, self.key, environment(self.device if uses_net else "cpu"))

    @staticmethod
    def write_json(path, obj) -> None:
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class JobClock:
    """A job's wall span (from its process's start) and its CPU-seconds, split at the start of the stage's work:
    the untracked timing file that benchmarks/default_job.py sums per stage kind and walks for the critical path."""

    def __init__(self):
        self.startup_cpu = _cpu_seconds()

    def write(self, path) -> None:
        total = _cpu_seconds()
        body = {"start": _process_start(), "end": time.time(), "cpu_startup": round(self.startup_cpu, 3),
                "cpu_work": round(total - self.startup_cpu, 3), "cpu": round(total, 3)}
        try:
            atomic_write_text(path, json.dumps(body) + "\n")
        except OSError as exc:  # a measurement, never a reason for a finished job to fail
            print(f"timing not written ({exc})", file=sys.stderr)


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its children that finished (torchrun's ranks)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _process_start() -> float:
    """When this process started (epoch seconds), from /proc; now where there is no /proc."""
    import os

    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()
