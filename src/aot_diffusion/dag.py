"""The pipeline's stages, defined once: the Snakemake rules (workflow/rules/*.smk) read them, and
dvc.yaml is generated from them (``aot-diffusion dvc-yaml``; a test regenerates and compares).

A stage runs one CLI subcommand, ``aot-diffusion <cli> [--model M | --disc D]``; the command reads
params.yaml and takes every path from layout.Layout, so both front doors run the very same command.
``params`` lists exactly the parameters a stage reads, so a change reruns only what it affects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import yaml

from .layout import FIGURE_NAMES, TABLE_NAMES, Layout
from .params import DISCRIMINATOR, MODEL, VARIANT

__all__ = ["Stage", "STAGES", "POOL_STUDY_STAGES", "Context", "stage", "keys_of", "command", "dvc_yaml",
           "pool_study_dvc_yaml"]

# What an output is to DVC: cached data, a metrics file, a plot, or a small file kept in git (cache: false).
OUT, METRIC, PLOT, GIT, PERSIST = "out", "metric", "plot", "git", "persist"

_SAMPLING = ["sample.num_samples", "sample.seeds", "sample.batch_size", "sample.sigma_min", "sample.sigma_max"]


@dataclass(frozen=True)
class Stage:
    name: str
    cli: str
    over: str | None                                    # "model", "disc" or None (one job)
    deps: Callable[[Layout, Mapping, str], list]        # (layout, params, key) -> input paths
    outs: Callable[[Layout, str], dict]                 # (layout, key) -> {path: kind}
    params: Callable[[Mapping, str], list]              # (params, key) -> dotted parameter names
    gpus: Callable[[Mapping], int] = field(default=lambda p: 0)
    plots: tuple = ()                                   # (path-kind, x, y) for dvc plots of PLOT outputs


class Context:
    """What the stage table needs to know of the parameters; ``template=True`` gives DVC's ``${item...}``."""

    def __init__(self, p: Mapping, template: bool = False):
        self.p, self.template = p, template
        self.models = list(p["models"])
        self.discs = list(p["guidance"]["discriminators"])
        self.variants = list(p["pool_study"]["variants"])

    def model_of(self, disc):
        return "${item.model}" if self.template else self.p["guidance"]["discriminators"][disc]["model"]

    def weight_key(self, disc):
        if self.template:
            return "${item.weight}"
        cond = self.p["models"][self.model_of(disc)]["conditional"]
        return "guidance.weight_cond" if cond else "guidance.weight_uncond"


def _one_gpu(p):
    return 1


STAGES: list[Stage] = [
    # First, and reading every parameter: DVC stops here on a renamed or missing key; the run's effective
    # parameters are recorded beside its results. Only the report depends on it.
    Stage("check_params", "check-params", None,
          deps=lambda L, p, k: [],
          outs=lambda L, k: {L.effective_params: GIT},
          params=lambda p, k: list(p.p)),
    Stage("prepare_data", "prepare-data", None,
          deps=lambda L, p, k: [],
          outs=lambda L, k: {L.dataset: OUT, L.data_summary: GIT},
          params=lambda p, k: ["seed", "data"]),
    # offline profiles: train the FD feature classifier; cifar10: check clean-fid's Inception assets.
    Stage("feature_network", "feature-network", None,
          deps=lambda L, p, k: [L.dataset],
          outs=lambda L, k: {L.feature_network: OUT, L.feature_network_metrics: GIT},
          params=lambda p, k: ["seed", "device", "classifier", "fd.allow_download"], gpus=_one_gpu),
    Stage("fd_reference", "fd-reference", None,
          deps=lambda L, p, k: [L.dataset, L.feature_network],
          outs=lambda L, k: {L.fd_reference: OUT, L.fd_floor: GIT},
          params=lambda p, k: ["seed", "device", "sample.num_samples", "fd"], gpus=_one_gpu),
    Stage("train", "train", "model",
          deps=lambda L, p, k: [L.dataset],
          outs=lambda L, k: {L.network(k): OUT, L.loss_log(k): PLOT, L.checkpoints(k): PERSIST},
          params=lambda p, k: ["seed", "device", "train", f"models.{k}"],
          gpus=lambda p: p.p["train"]["nproc_per_node"], plots=(("kimg", "loss"),)),
    Stage("sample", "sample", "model",
          deps=lambda L, p, k: [L.network(k)],
          outs=lambda L, k: {L.samples(k): OUT},
          params=lambda p, k: ["device", "sample.steps", "sample.rho", *_SAMPLING], gpus=_one_gpu),
    Stage("fd", "fd", "model",
          deps=lambda L, p, k: [L.samples(k), L.fd_reference, L.feature_network],
          outs=lambda L, k: {L.fd(k): GIT, L.features(k): OUT},
          params=lambda p, k: ["seed", "device", "fd"], gpus=_one_gpu),
    Stage("curvature", "curvature", "model",
          deps=lambda L, p, k: [L.network(k)],
          outs=lambda L, k: {L.curvature(k): OUT, L.curvature_metrics(k): GIT},
          params=lambda p, k: ["seed", "device", "curvature", "sample.rho", "sample.sigma_min",
                               "sample.sigma_max"], gpus=_one_gpu),
    Stage("fake_samples", "fake-samples", "model",
          deps=lambda L, p, k: [L.network(k)],
          outs=lambda L, k: {L.fakes(k): OUT},
          params=lambda p, k: ["seed", "device", "sample.batch_size", "guidance.num_fake",
                               "guidance.fake_steps", "guidance.fake_rho", "guidance.fake_seed_offset"],
          gpus=_one_gpu),
    Stage("train_encoder", "train-encoder", None,
          deps=lambda L, p, k: [L.dataset],
          outs=lambda L, k: {L.encoder: OUT, L.encoder_metrics: GIT},
          params=lambda p, k: ["seed", "device", "guidance.encoder", "guidance.encoder_steps",
                               "guidance.encoder_batch_size", "guidance.encoder_lr", "guidance.adm_classifier"],
          gpus=_one_gpu),
    Stage("train_discriminator", "train-discriminator", "disc",
          deps=lambda L, p, k: [L.fakes(p.model_of(k)), L.dataset, L.encoder],
          outs=lambda L, k: {L.discriminator(k): OUT, L.discriminator_metrics(k): GIT},
          params=lambda p, k: ["seed", "device", f"guidance.discriminators.{k}", "guidance.heldout_fraction",
                               "guidance.head_channels", "guidance.head_depth", "guidance.pool_size",
                               "guidance.batch_size", "guidance.steps", "guidance.lr", "guidance.weight_decay",
                               "train.solver"], gpus=_one_gpu),
    Stage("guided_sample", "guided-sample", "disc",
          deps=lambda L, p, k: [L.network(p.model_of(k)), L.discriminator(k), L.encoder],
          outs=lambda L, k: {L.guided_samples(k): OUT},
          params=lambda p, k: ["device", p.weight_key(k), "guidance.sigma_window", "guidance.steps_list",
                               "guidance.rho", *_SAMPLING], gpus=_one_gpu),
    Stage("guided_fd", "guided-fd", "disc",
          deps=lambda L, p, k: [L.guided_samples(k), L.fd_reference, L.feature_network],
          outs=lambda L, k: {L.guided_fd(k): GIT, L.guided_features(k): OUT},
          params=lambda p, k: ["seed", "device", "fd"], gpus=_one_gpu),
    Stage("tables", "tables", None,
          deps=lambda L, p, k: [L.effective_params, L.fd_floor, *[L.fd(m) for m in p.models], *[L.features(m) for m in p.models],
                                *[L.curvature_metrics(m) for m in p.models],
                                *[L.guided_fd(d) for d in p.discs],
                                *[L.discriminator_metrics(d) for d in p.discs]]
          + [L.feature_network_metrics],
          outs=lambda L, k: {**{L.table(t, e): GIT for t in TABLE_NAMES for e in ("csv", "md")},
                             L.fd_curves: PLOT, L.metrics: METRIC},
          params=lambda p, k: ["seed", "fd", "models", "guidance.discriminators", "guidance.steps_list",
                               "guidance.rho"], plots=(("nfe", "fd"),)),
    Stage("figures", "figures", None,
          deps=lambda L, p, k: [*[L.fd(m) for m in p.models], *[L.curvature(m) for m in p.models],
                                *[L.samples(m) for m in p.models], *[L.loss_log(m) for m in p.models],
                                *[L.guided_fd(d) for d in p.discs], L.fd_floor],
          outs=lambda L, k: {L.figure(f): PLOT for f in FIGURE_NAMES},
          params=lambda p, k: ["models", "sample.grid_steps", "guidance.discriminators"]),
]


# The pool-size study: its own DAG on top of the main one's data and FD reference, outside the default
# target (`snakemake pool_study`; DVC: workflow/pool_size/dvc.yaml, which `dvc repro` alone does not run).
# Its variants are trained, sampled and scored by the main stages' commands with `--variant`.
POOL_STUDY_STAGES: list[Stage] = [
    Stage("pool_train", "train", "variant",
          deps=lambda L, p, k: [L.dataset],
          outs=lambda L, k: {L.pool_study.network(k): OUT, L.pool_study.loss_log(k): PLOT,
                             L.pool_study.checkpoints(k): PERSIST},
          params=lambda p, k: ["seed", "device", "train", f"pool_study.variants.{k}"],
          gpus=lambda p: p.p["train"]["nproc_per_node"], plots=(("kimg", "loss"),)),
    Stage("pool_sample", "sample", "variant",
          deps=lambda L, p, k: [L.pool_study.network(k)],
          outs=lambda L, k: {L.pool_study.samples(k): OUT},
          params=lambda p, k: ["device", "sample.steps", "pool_study.rho", *_SAMPLING], gpus=_one_gpu),
    Stage("pool_fd", "fd", "variant",
          deps=lambda L, p, k: [L.pool_study.samples(k), L.fd_reference, L.feature_network],
          outs=lambda L, k: {L.pool_study.fd(k): GIT, L.pool_study.features(k): OUT},
          params=lambda p, k: ["seed", "device", "fd"], gpus=_one_gpu),
    Stage("pool_curvature", "curvature", "variant",
          deps=lambda L, p, k: [L.pool_study.network(k)],
          outs=lambda L, k: {L.pool_study.curvature(k): OUT, L.pool_study.curvature_metrics(k): GIT},
          params=lambda p, k: ["seed", "device", "curvature", "pool_study.rho", "sample.sigma_min",
                               "sample.sigma_max"], gpus=_one_gpu),
    Stage("pool_study", "pool-study", None,
          deps=lambda L, p, k: [L.fd_floor, L.fd_reference,
                                *[path for v in p.variants for path in (
                                    L.pool_study.fd(v), L.pool_study.features(v), L.pool_study.curvature_metrics(v),
                                    L.pool_study.loss_log(v))]],
          outs=lambda L, k: {L.pool_study.study_table("csv"): GIT, L.pool_study.study_table("md"): GIT,
                             L.pool_study.study_metrics: METRIC, L.pool_study.study_figure: PLOT},
          params=lambda p, k: ["seed", "fd", "sample.seeds", "train.batch_size", "train.knn_k", "pool_study"]),
]
POOL_STUDY_DVC = Path("workflow/pool_size/dvc.yaml")


def stage(name: str) -> Stage:
    for st in STAGES + POOL_STUDY_STAGES:
        if st.name == name:
            return st
    raise KeyError(f"no stage {name!r}")


def keys_of(st: Stage, ctx: Context) -> list:
    return {"model": ctx.models, "disc": ctx.discs, "variant": ctx.variants}.get(st.over, [None])


def command(st: Stage, key: str | None) -> str:
    return f"aot-diffusion {st.cli}" + (f" --{st.over} {key}" if st.over else "")


def _dvc_entry(st: Stage, ctx: Context, key, wdir: str | None = None) -> dict:
    L = Layout("${profile}")
    outs, metrics, plots = [], [], []
    for path, kind in st.outs(L, key).items():
        path = str(path)
        if kind == OUT:
            outs.append(path)
        elif kind == PERSIST:
            outs.append({path: {"persist": True, "cache": False}})
        elif kind == GIT:
            outs.append({path: {"cache": False}})
        elif kind == METRIC:
            metrics.append({path: {"cache": False}})
        elif kind == PLOT:
            opts = {"cache": False}
            if path.endswith(".csv") and st.plots:
                opts.update(x=st.plots[0][0], y=st.plots[0][1])
            plots.append({path: opts})
    entry = {"wdir": wdir} if wdir else {}
    entry["cmd"] = command(st, key)
    deps = [str(d) for d in st.deps(L, ctx, key)]
    if deps:
        entry["deps"] = deps
    entry["params"] = [leaf for name in st.params(ctx, key) for leaf in _leaves(ctx.p, name)]
    for name, items in (("outs", outs), ("metrics", metrics), ("plots", plots)):
        if items:
            entry[name] = items
    return entry


# Free-form sections (their keys differ between profiles) are tracked whole; records have fixed keys.
_WHOLE = ("train.network", "pool_study.variants")
_RECORDS = {"models.": tuple(MODEL), "guidance.discriminators.": tuple(DISCRIMINATOR),
            "pool_study.variants.": tuple(VARIANT)}


def _leaves(p: Mapping, name: str) -> list:
    """DVC tracks parameters leaf by leaf, so a renamed or missing key stops `dvc repro` naming it."""
    for prefix, fields in _RECORDS.items():
        if name.startswith(prefix) and name.count(".") == prefix.count("."):
            return [f"{name}.{f}" for f in fields]
    if name in ("models", "guidance.discriminators"):
        return [leaf for k in _get(p, name) for leaf in _leaves(p, f"{name}.{k}")]
    if "${" in name or name in _WHOLE:
        return [name]
    node = _get(p, name)
    if not isinstance(node, Mapping):
        return [name]
    return [leaf for k in node for leaf in _leaves(p, f"{name}.{k}")]


def _get(p: Mapping, name: str):
    for part in name.split("."):
        p = p[part]
    return p


def dvc_yaml(p: Mapping) -> str:
    """dvc.yaml for the stage table: paths per ``${profile}``, ``foreach`` over models and discriminators."""
    ctx, tmpl = Context(p), Context(p, template=True)
    stages = {}
    for st in STAGES:
        if st.over is None:
            stages[st.name] = _dvc_entry(st, ctx, None)
        elif st.over == "model":
            stages[st.name] = {"foreach": ctx.models, "do": _dvc_entry(st, tmpl, "${item}")}
        else:
            items = {d: {"model": ctx.model_of(d), "weight": ctx.weight_key(d)} for d in ctx.discs}
            stages[st.name] = {"foreach": items, "do": _dvc_entry(st, tmpl, "${key}")}
    L = Layout("${profile}")
    body = {"stages": stages, "plots": [
        {str(L.fd_curves): {"x": "nfe", "y": "fd", "template": "linear"}},
        *[str(L.figure(f)) for f in FIGURE_NAMES]]}
    head = ("# GENERATED by `aot-diffusion dvc-yaml` from src/aot_diffusion/dag.py (the stage table that the\n"
            "# Snakefile also reads); do not edit by hand. tests/test_pipeline.py checks it is up to date.\n")
    return head + yaml.dump(body, Dumper=_NoAliases, sort_keys=False, width=200)


def pool_study_dvc_yaml(p: Mapping) -> str:
    """workflow/pool_size/dvc.yaml: the study's stages, run from the repository root (wdir), over the variants
    that params.yaml names (``foreach`` reads them, so ``-S`` can add one)."""
    ctx, tmpl = Context(p), Context(p, template=True)
    up = "/".join([".."] * len(POOL_STUDY_DVC.parent.parts))
    stages = {}
    for st in POOL_STUDY_STAGES:
        if st.over is None:
            stages[st.name] = _dvc_entry(st, ctx, None, wdir=up)
        else:
            stages[st.name] = {"foreach": "${pool_study.variants}", "do": _dvc_entry(st, tmpl, "${key}", wdir=up)}
    head = ("# GENERATED by `aot-diffusion dvc-yaml` from src/aot_diffusion/dag.py (POOL_STUDY_STAGES); do not edit.\n"
            "# The pool-size study, outside the default pipeline: dvc repro workflow/pool_size/dvc.yaml\n")
    body = {"vars": [f"{up}/params.yaml:profile,pool_study"], "stages": stages}
    return head + yaml.dump(body, Dumper=_NoAliases, sort_keys=False, width=200)


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


def dvc_commit_targets(root=".") -> tuple[list, int]:
    """What `dvc commit` can record after a Snakemake run, and how many stages finished: a pipeline file whose
    stages all finished is one target (one pass over it is ~5x faster than naming its stages), otherwise each
    finished stage by name (``file:stage@key`` for the study's file)."""
    from .params import load_params

    p = load_params(Path(root) / "params.yaml")
    ctx, L = Context(p), Layout(p["profile"], root)
    targets, finished = [], 0
    for table, dvcfile in ((STAGES, Path("dvc.yaml")), (POOL_STUDY_STAGES, POOL_STUDY_DVC)):
        names, total = [], 0
        for st in table:
            for key in keys_of(st, ctx):
                total += 1
                if all(Path(path).exists() for path in st.outs(L, key)):
                    name = st.name if key is None else f"{st.name}@{key}"
                    names.append(name if table is STAGES else f"{dvcfile}:{name}")
        finished += len(names)
        targets += [str(dvcfile)] if names and len(names) == total else names
    return targets, finished
