"""What each CLI subcommand runs: one module per stage family. A stage reads params.yaml, takes its paths
from layout.Layout and writes its outputs atomically; the CLI only parses arguments and dispatches."""

from __future__ import annotations

import json
import time
from functools import cached_property

from ..layout import Layout
from ..params import ParamError, device_of, load_params, pool_study_view
from ..utils import atomic_write_text

__all__ = ["Run"]


class Run:
    """One stage run: its parameters, paths, device and a log that names the stage and model."""

    def __init__(self, stage: str, key: str | None = None, params_path="params.yaml", study: bool = False):
        from ..frontdoors import forget_snakemake_records, refuse_if_snakemake_running

        refuse_if_snakemake_running()
        self.p = load_params(params_path)
        forget_snakemake_records(self.p)
        self.L = Layout(self.p["profile"])
        self.study = study
        if study:  # a pool-size study variant, trained, sampled and scored as a model of its own
            self.p, self.L = pool_study_view(self.p), self.L.pool_study
        self.key = key
        self.tag = stage + (" pool_study" if study else "") + (f" {key}" if key else "")
        self.t0 = time.perf_counter()

    @cached_property
    def device(self) -> str:
        return device_of(self.p)

    def log(self, msg: str) -> None:
        print(f"[{self.tag}] {msg} ({time.perf_counter() - self.t0:.0f} s)", flush=True)

    def model_spec(self, model: str) -> dict:
        if model not in self.p["models"]:
            what, where = ("variant", "pool_study.variants") if self.study else ("model", "models")
            raise ParamError(f"unknown {what} {model!r}; params.yaml '{where}' has {sorted(self.p['models'])}")
        return self.p["models"][model]

    def disc_spec(self, disc: str) -> dict:
        discs = self.p["guidance"]["discriminators"]
        if disc not in discs:
            raise ParamError(f"unknown discriminator {disc!r}; 'guidance.discriminators' has {sorted(discs)}")
        return discs[disc]

    @staticmethod
    def write_json(path, obj) -> None:
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
