"""The pipeline's stages, defined once: the Snakemake rules (workflow/rules/*.smk) are built from them,
dvc.yaml is generated from them (dvcfile.py, ``aot-diffusion dvc-yaml``; a test regenerates and compares) and the CLI's
subcommands come from them (cli.py).

A stage runs one CLI subcommand, ``aot-diffusion <cli> [--model M | --disc D | --variant V | --released]``;
the command takes every path from layout.Layout, so both front doors run the very same command.
``params`` lists exactly the parameters a stage reads: the stage sees only those (params.StageParams raises
on any other), so a change reruns exactly what it affects.

**Parameter records.** A finished stage writes ``records/<job>/<digest>.json`` (layout.Layout.record): the
values it read and the records of the stages it read from; the digest hashes both (a Merkle chain), so it
names the parameters of everything upstream too. DVC tracks the record folder as an output; for Snakemake the
record of the current digest is an output of the job and an input of the jobs that read from it. Whichever
door ran last, a stage whose record for the current parameters is missing reruns, and one whose record is
there does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .layout import FIGURE_NAMES, TABLE_FORMATS, TABLE_NAMES, Layout
from .plugins import PLUGIN_DIR, plugin_path
from .params import (CONF_DIR, NAME_PATTERN, PARAMS_FILE, PROFILES, ParamError, digest, guidance_settings, instance_key,
                     model_instances, select)

__all__ = ["Stage", "STAGES", "POOL_STUDY_STAGES", "RELEASED_STAGES", "ALL_STAGES", "Context", "Plan", "stage",
           "find_stage", "keys_of", "job_id", "command", "POOL_STUDY_DVC"]

# What an output is to DVC: cached data, a metrics file, a plot, or a small file kept in git (cache: false).
OUT, METRIC, PLOT, GIT = "out", "metric", "plot", "git"
KEYED = ("model", "disc", "variant", "network")  # what a stage runs once per: --model M, --disc D, --variant V,
# --network N (a released network of calibration.networks)

_SAMPLING = ["sample.num_samples", "sample.seeds", "sample.batch_size", "sample.sigma_min", "sample.sigma_max"]
# a stage that runs a network: where, how many CPU threads (sums change with it), TF32 on CUDA (EDM: off)
_NET = ["device", "threads", "tf32"]
# where guidance is evaluated (params.guidance_settings)
# The researcher's plugins (plugins.py): what scores samples runs every metric plugin (it declares the list;
# the files are inputs, DVC: the folder); a training job runs its own model's pairing plugin, if any (its
# file is an input). The record holds the code of each plugin a job uses (Plan.plugins_used).
_SCORES = "plugins.metrics"
# fd.* as scoring reads it: not fd.headline, which only decides what the tables lead with
_FD = ["fd.bootstrap", "fd.ci_level", "fd.kid_subsets", "fd.feature_batch", "fd.allow_download", "fd.features",
       "fd.interval"]
AOT_SOURCE = "src/aot_diffusion/aot.py"  # the built-in pairings


def _plugin_files(c: "Context", family: str) -> list:
    return [PLUGIN_DIR / family] if c.dvc else [plugin_path(family, name) for name in c.p["plugins"][family]]


def _pairing_code(c: "Context", key) -> list:
    """The code of the pairing a trained model uses: its plugin file, or the package's aot.py (DVC: the item's
    ``pairing_code``, so a plugin edit reruns only the models that pair with it)."""
    if c.template:
        return ["${item.pairing_code}"]
    return [c.pairing_code(key)]


def _disc_pairing_code(c: "Context", disc) -> list:
    """The code of the pairing a discriminator trains with (DVC: the item's ``pairing_code``)."""
    return ["${item.pairing_code}"] if c.template else [c.pairing_code(disc, disc=True)]


def _guided_model(c: "Context", disc) -> str:
    """The `models` entry of the model a discriminator guides (its conditioning; its pairing under `model`)."""
    return "models.${item.model}" if c.template else f"models.{c.p['guidance']['discriminators'][disc]['model']}"


def _param_files(c: "Context", names, key=None) -> list:
    """Files a stage reads through a parameter (e.g. DG's classifier), when set (Snakemake: inputs; both doors:
    their sha256 in the record). A name may hold ``{key}``: the job's key."""
    names = [n.format(key=key) for n in names]
    return [] if c.dvc else [c.p_value(n) for n in names if c.p_value(n)]


_GUIDED_AT = ["guidance.sample_steps", "guidance.rho", "guidance.paper_setting_uncond", "guidance.paper_setting_cond"]


@dataclass(frozen=True)
class Stage:
    name: str
    cli: str                                            # the subcommand: aot-diffusion <cli>
    over: str | None                                    # "model", "disc", "variant", "released" (a flag) or None
    run: str                                            # "module:function" in aot_diffusion.stages
    deps: Callable[[Layout, "Context", str], list]      # (layout, context, key) -> input paths
    outs: Callable[[Layout, "Context", str], dict]      # (layout, context, key) -> {path: storage}
    params: Callable[["Context", str], list]            # (context, key) -> dotted parameter names it reads
    gpus: Callable[["Context"], int] = field(default=lambda ctx: 0)
    plots: tuple = ()                                   # (x, y) for dvc plots of PLOT outputs
    resources: str = "network"                          # what it asks a cluster for: resources.<this> (cluster.py)
    keys: Callable[["Context"], list] | None = None     # a subset of its `over` keys (default: all)
    param_files: tuple = ()                             # parameters naming a file it reads (an input of the job)
    pairs_noise: bool = False                           # trains with its model's pairing (plugin code it runs)
    effort: int = 1                                     # rough relative work of one job: only orders ready jobs
    gate: bool = False                                  # refuses bad parameters before any other stage runs
    chained: bool = True                                # False: a reader run per key reads its part of it through
                                                        # its own parameters, so takes no record of it (only the
                                                        # order); a reader of the whole DAG still does

    def function(self) -> Callable:
        """The stage's function, imported when a job runs (the table is read at planning time, when importing
        every stage module, and torch with it, would cost every Snakemake and DVC start-up)."""
        import importlib

        module, name = self.run.split(":")
        return getattr(importlib.import_module(f"{__package__}.stages.{module}"), name)


class Context:
    """What the stage table needs to know of the parameters; ``dvc=True``: for dvc.yaml, ``template=True``
    also gives DVC's ``${item...}``.

    It also decides, once, what each job runs (``trained``, ``discriminator``, ``sample_grid``, ``first``): the
    stages read those facts instead of working them out again from other evidence, and each fact comes from the
    parameters the job declares (tests/test_provenance.py computes them through the job's declared view)."""

    def __init__(self, p: Mapping, template: bool = False, dvc: bool = False):
        self.p, self.template, self.dvc = p, template, dvc or template
        self.model_names = list(p["models"])
        self.instances = model_instances(p)
        self.models = list(self.instances)  # the trained models, <model>_s<seed>: what `--model` takes
        self.discs = list(p["guidance"]["discriminators"])

    @property
    def variants(self) -> list:
        """The study's variants, read when asked for: a job outside the study never reads `pool_study`."""
        return list(self.p["pool_study"]["variants"])

    def first(self, model: str) -> str:
        """The trained model of the first training seed: what DG and the hybrid samplers use (a path of the
        job's inputs, not a parameter it reads)."""
        return instance_key(model, self.p["train"]["seeds"][0])

    def spec_name(self, key):
        """The `models` entry of a trained model."""
        return "${item.model}" if self.template else self.instances[key][0]

    def model_of(self, disc):
        """The trained model a discriminator guides (its model, first training seed)."""
        return "${item.instance}" if self.template else self.first(self.p["guidance"]["discriminators"][disc]["model"])

    def conditioning(self, model: str) -> str:
        """"cond" or "uncond": the suffix of the guidance.*_cond / *_uncond parameter a model's jobs read."""
        return "cond" if self.p["models"][model]["conditional"] else "uncond"

    def setting_key(self, key):
        """The paper's guidance setting that a trained model is also sampled at (params.guidance_settings)."""
        if self.template:
            return "${item.setting}"
        return "guidance.paper_setting_" + self.conditioning(self.instances[key][0])

    def by_conditioning(self, disc, name):
        """guidance.<name>_cond or guidance.<name>_uncond: the one a discriminator's model reads (its weight,
        epochs, boosting); DVC: the item's field <name>."""
        if self.template:
            return f"${{item.{name}}}"
        return f"guidance.{name}_{self.conditioning(self.p['guidance']['discriminators'][disc]['model'])}"

    def weight_key(self, disc):
        return self.by_conditioning(disc, "weight")

    def calibration_keys(self) -> list:
        """The released networks of `calibration.networks` that have a pickle named (target `calibrate`)."""
        return [k for k, n in self.p["calibration"]["networks"].items() if n["pickle"]]

    def p_value(self, name: str):
        """The value of one dotted parameter."""
        return select(self.p, [name])[name]

    # ------------------------------------------------------------------ what a job runs, decided here once
    def trained(self, key, variant: bool = False) -> dict:
        """What a training job trains: a model of `models` with its training seed (key <model>_s<seed>), or a
        study variant (a model of the study: unconditional, the run's seed). The pool is the model's own, else
        train.pool_size / pool_size_cond by conditioning."""
        p = self.p
        if variant:
            name, seed, spec = key, p["seed"], dict(p["pool_study"]["variants"][key], conditional=False)
        else:
            name, seed = self.instances[key]
            spec = p["models"][name]
        cond = spec["conditional"]
        pool = spec.get("pool_size") or p["train"]["pool_size_cond" if cond else "pool_size"]
        return dict(model=name, seed=seed, conditional=cond, pairing=spec["pairing"], pool_size=pool,
                    pairing_options=dict(spec.get("pairing_options") or {}))

    def discriminator(self, disc) -> dict:
        """What a discriminator's jobs run: the model it guides (and its first-seed trained model), its
        conditioning and its pairing (`model`: the guided model's, with that model's options)."""
        spec = self.p["guidance"]["discriminators"][disc]
        model = spec["model"]
        source = self.p["models"][model] if spec["pairing"] == "model" else spec
        return dict(model=model, instance=self.first(model), conditional=self.p["models"][model]["conditional"],
                    pairing=source["pairing"], pairing_options=dict(source.get("pairing_options") or {}))

    def guidance_choice(self, disc, name: str):
        """guidance.<name>_cond or _uncond (weight, boosting, epochs), as the discriminator's model is."""
        return self.p_value(self.by_conditioning(disc, name))

    def sample_grid(self, st: "Stage", key) -> list:
        """The (steps, rho) settings a sampling job draws: the sweep, sample.steps x sample.rho (a study
        variant: x pool_study.rho), and for a trained model also where its guided runs are scored (their paired
        unguided baseline, params.guidance_settings); a guided job: those settings only."""
        s = self.p["sample"]
        if st.over == "disc":
            return guidance_settings(self.p, self.discriminator(key)["conditional"])
        rhos = [self.p["pool_study"]["rho"]] if st.over == "variant" else s["rho"]
        grid = [(int(steps), float(rho)) for rho in rhos for steps in s["steps"]]
        if st.over == "model":
            model = self.instances[key][0]
            grid += [x for x in guidance_settings(self.p, self.p["models"][model]["conditional"]) if x not in grid]
        return grid

    def pairing_of(self, key, variant: bool = False) -> str | None:
        """The pairing a trained model (or a study variant) trains with; None: no pairing (EDM)."""
        pairing = self.trained(key, variant)["pairing"]
        return None if pairing == "none" else pairing

    def pairing_code(self, key, variant: bool = False, disc: bool = False) -> str:
        """The file holding the code of a job's pairing: its plugin's, or the package's aot.py."""
        pairing = self.discriminator(key)["pairing"] if disc else self.pairing_of(key, variant)
        if pairing in self.p["plugins"]["pairings"]:
            return str(plugin_path("pairings", pairing))
        return AOT_SOURCE

    def guided_models(self) -> list:
        """The trained models that DG samples fakes of (first training seed of each guided model)."""
        return list(dict.fromkeys(self.first(d["model"]) for d in self.p["guidance"]["discriminators"].values()))

    def train_keys(self) -> list:
        """train.* as a trained model reads it: every key but the seed list (its own seed is in its key)."""
        return [f"train.{k}" for k in self.p["train"] if k != "seeds"]


def _one_gpu(ctx):
    return 1


def _ranks(ctx):
    return ctx.p["train"]["nproc_per_node"]


STAGES: list[Stage] = [
    # First, and reading every parameter (DVC: its dependency is the whole params.yaml, so it runs whenever the
    # file changes and stops the run on an unknown key); the run's effective parameters are recorded beside its
    # results. Only the report depends on it.
    Stage("check_params", "check-params", None, "data:check_params",
          deps=lambda L, c, k: [Path(PARAMS_FILE), Path(CONF_DIR, "config.yaml"),
                                *(Path(CONF_DIR, "profile", f"{name}.yaml") for name in PROFILES)],
          outs=lambda L, c, k: {L.effective_params: GIT},
          params=lambda c, k: [name for name in c.p if name != "resources"], resources="light",
          gate=True),  # first in DVC's order; its outputs persist, so a refused `dvc exp run` deletes nothing
    Stage("prepare_data", "prepare-data", None, "data:prepare_data",
          deps=lambda L, c, k: [],
          outs=lambda L, c, k: {L.dataset: OUT, L.data_summary: GIT},
          params=lambda c, k: ["seed", "data"], resources="light"),
    # offline profiles: train the FD feature classifier; cifar10: check clean-fid's Inception assets.
    Stage("feature_network", "feature-network", None, "data:feature_network",
          deps=lambda L, c, k: [L.dataset],
          outs=lambda L, c, k: {L.feature_network: OUT, L.feature_network_metrics: GIT},
          params=lambda c, k: ["seed", *_NET, "data.dataset", "classifier", "fd.allow_download", "fd.features"],
          gpus=_one_gpu),
    Stage("fd_reference", "fd-reference", None, "data:fd_reference",
          deps=lambda L, c, k: [L.dataset, L.feature_network, *_plugin_files(c, "metrics")],
          outs=lambda L, c, k: {L.fd_reference: OUT, L.fd_floor: GIT},
          params=lambda c, k: ["seed", *_NET, "data.dataset", "sample.num_samples", *_FD, _SCORES], gpus=_one_gpu),
    Stage("train", "train", "model", "train:train",
          deps=lambda L, c, k: [L.dataset, *_pairing_code(c, k)],
          outs=lambda L, c, k: {L.network(k): OUT, L.loss_log(k): PLOT},
          params=lambda c, k: ["seed", *_NET, *c.train_keys(), f"models.{c.spec_name(k)}"],
          gpus=_ranks, plots=("kimg", "loss"), resources="train", pairs_noise=True, effort=8),
    Stage("sample", "sample", "model", "sample:sample",
          deps=lambda L, c, k: [L.network(k)],
          outs=lambda L, c, k: {L.samples(k): OUT},
          params=lambda c, k: [*_NET, "sample.steps", "sample.rho", *_SAMPLING, "guidance.sample_steps", "guidance.rho",
                               c.setting_key(k), f"models.{c.spec_name(k)}"], gpus=_one_gpu, effort=3),
    Stage("fd", "fd", "model", "evaluate:fd",
          deps=lambda L, c, k: [L.samples(k), L.fd_reference, L.feature_network, L.dataset, *_plugin_files(c, "metrics")],
          outs=lambda L, c, k: {L.fd(k): GIT, L.features(k): OUT},
          params=lambda c, k: ["seed", *_NET, *_FD, _SCORES], gpus=_one_gpu),
    Stage("curvature", "curvature", "model", "evaluate:curvature",
          deps=lambda L, c, k: [L.network(k)],
          outs=lambda L, c, k: {L.curvature(k): OUT, L.curvature_metrics(k): GIT},
          params=lambda c, k: ["seed", *_NET, "curvature", "sample.rho", "sample.sigma_min", "sample.sigma_max"],
          gpus=_one_gpu, effort=2),
    Stage("fake_samples", "fake-samples", "model", "sample:fake_samples",
          deps=lambda L, c, k: [L.network(k)],
          outs=lambda L, c, k: {L.fakes(k): OUT},
          params=lambda c, k: ["seed", *_NET, "sample.batch_size", "sample.sigma_min", "sample.sigma_max",
                               "guidance.num_fake", "guidance.fake_steps", "guidance.fake_rho",
                               "guidance.fake_seed_offset", "guidance.protocol", "guidance.heldout_fraction"],
          gpus=_one_gpu, effort=5,
          keys=lambda c: c.guided_models()),
    Stage("train_encoder", "train-encoder", None, "guidance:train_encoder",
          deps=lambda L, c, k: [L.dataset, *_param_files(c, ["guidance.adm_classifier"])],
          outs=lambda L, c, k: {L.encoder: OUT, L.encoder_metrics: GIT},
          params=lambda c, k: ["seed", *_NET, "guidance.encoder", "guidance.encoder_steps",
                               "guidance.encoder_batch_size", "guidance.encoder_lr", "guidance.adm_classifier"],
          gpus=_one_gpu, param_files=("guidance.adm_classifier",)),
    Stage("train_discriminator", "train-discriminator", "disc", "guidance:train_discriminator",
          deps=lambda L, c, k: [L.fakes(c.model_of(k)), L.dataset, L.encoder, *_disc_pairing_code(c, k)],
          outs=lambda L, c, k: {L.discriminator(k): OUT, L.discriminator_metrics(k): GIT,
                                L.discriminator_curve(k): PLOT},
          params=lambda c, k: ["seed", *_NET, "data.dataset", f"guidance.discriminators.{k}", _guided_model(c, k),
                               "guidance.heldout_fraction", "guidance.head_channels", "guidance.head_depth",
                               "guidance.pool_size", "guidance.batch_size", "guidance.max_steps", "guidance.eval_every",
                               "guidance.patience", "guidance.lr", "guidance.weight_decay", "train.solver",
                               "guidance.protocol", "guidance.num_fake", c.by_conditioning(k, "epochs"),
                               "guidance.sigma_window"],
          gpus=_one_gpu, effort=6, pairs_noise=True,
          plots=("step", "val_bce")),
    Stage("guided_sample", "guided-sample", "disc", "guidance:guided_sample",
          # the discriminator's metrics: the window it chose on validation data (guidance.sigma_window)
          deps=lambda L, c, k: [L.network(c.model_of(k)), L.discriminator(k), L.discriminator_metrics(k), L.encoder],
          outs=lambda L, c, k: {L.guided_samples(k): OUT},
          params=lambda c, k: [*_NET, f"guidance.discriminators.{k}", _guided_model(c, k), c.weight_key(k),
                               c.by_conditioning(k, "boosting"), "guidance.sigma_window",
                               "guidance.sample_steps", "guidance.rho", c.setting_key(c.model_of(k)), *_SAMPLING],
          gpus=_one_gpu, effort=3),
    Stage("guided_fd", "guided-fd", "disc", "evaluate:guided_fd",
          deps=lambda L, c, k: [L.guided_samples(k), L.fd_reference, L.feature_network, L.dataset,
                                *_plugin_files(c, "metrics")],
          outs=lambda L, c, k: {L.guided_fd(k): GIT, L.guided_features(k): OUT},
          params=lambda c, k: ["seed", *_NET, *_FD, _SCORES], gpus=_one_gpu),
    Stage("hybrid", "hybrid", None, "evaluate:hybrid",
          deps=lambda L, c, k: [*[L.network(c.first(m)) for m in c.model_names], L.fd_reference, L.feature_network,
                                L.dataset, *_plugin_files(c, "metrics")],
          outs=lambda L, c, k: {L.hybrid_samples: OUT, L.hybrid_fd: GIT},
          params=lambda c, k: ["seed", *_NET, "models", "hybrid", *_FD, *_SAMPLING, _SCORES], gpus=_one_gpu,
          effort=10),
    Stage("tables", "tables", None, "report:tables",
          deps=lambda L, c, k: [L.effective_params, L.fd_floor, *[L.fd(m) for m in c.models],
                                *[L.features(m) for m in c.models], *[L.curvature_metrics(m) for m in c.models],
                                *[L.guided_fd(d) for d in c.discs], *[L.discriminator_metrics(d) for d in c.discs],
                                L.feature_network_metrics, L.hybrid_fd, *_plugin_files(c, "metrics")],
          outs=lambda L, c, k: {**{L.table(t, e): GIT for t in TABLE_NAMES for e in TABLE_FORMATS},
                             L.fd_curves: GIT, L.metrics: METRIC},  # fd_curves: a top-level plot in dvc.yaml
          # the paper comparison (paper.differences) reads the training and guidance protocol too
          params=lambda c, k: ["seed", "data.dataset", "fd", "models", "train", "sample.steps", "sample.rho",
                               "sample.seeds", "sample.num_samples", "guidance", "hybrid", _SCORES],
          resources="light", effort=2),
    Stage("figures", "figures", None, "report:figures",
          # the FD figures draw the tables' numbers, computed from the same outputs by the same functions (reading
          # the tables' CSVs would chain the tables' record, which every parameter changes, where DVC sees equal bytes)
          deps=lambda L, c, k: [L.fd_floor, L.fd_reference, *[L.fd(m) for m in c.models],
                                *[L.features(m) for m in c.models], *[L.curvature(m) for m in c.models],
                                *[L.samples(m) for m in c.models], *[L.loss_log(m) for m in c.models],
                                *[L.guided_fd(d) for d in c.discs], *[L.guided_features(d) for d in c.discs],
                                *[L.discriminator_metrics(d) for d in c.discs],
                                *[L.discriminator_curve(d) for d in c.discs], L.hybrid_fd, *_plugin_files(c, "metrics")],
          # kept in git; DVC's plots are dvc.yaml's top-level `plots` (one entry per figure, not two)
          outs=lambda L, c, k: {L.figure(f, ext): GIT for f in FIGURE_NAMES for ext in ("png", "pdf")},
          params=lambda c, k: ["seed", "data.dataset", "fd", "models", "train", "sample.steps", "sample.rho",
                               "sample.seeds", "sample.num_samples", "sample.grid_steps", "guidance", "hybrid",
                               _SCORES], resources="light"),
]


# The pool-size study: its own DAG on top of the main one's data and FD reference, outside the default
# target (`snakemake pool_study`; DVC: workflow/pool_size/dvc.yaml, written when a study is asked for).
# Its variants are trained, sampled and scored by the main stages' commands with `--variant`; those stages
# see a variant as a model of the study (Context.trained). `pool_variants` comes first: it checks the variants'
# names before DVC puts any of them into a command, and writes one file per variant.
POOL_STUDY_STAGES: list[Stage] = [
    Stage("pool_variants", "pool-variants", None, "data:pool_variants",
          deps=lambda L, c, k: [],
          # DVC: the folder (its foreach reads the variants when it runs); Snakemake: one file per variant
          outs=lambda L, c, k: ({L.pool_study.variants_dir: GIT} if c.dvc else
                                {L.pool_study.variant_spec(v): GIT for v in c.variants}),
          params=lambda c, k: ["pool_study.variants"], resources="light",
          chained=False),  # a variant's file is its entry, which its own jobs read: another variant's edit reruns none
    Stage("pool_train", "train", "variant", "train:train",
          # after pool_variants (its file: both doors have the same inputs, so a Snakemake run records in dvc.lock);
          # DVC: the plugin folder (its foreach reads the variants from params.yaml, which can't name a file)
          deps=lambda L, c, k: [L.dataset, L.pool_study.variant_spec(k),
                                *(_plugin_files(c, "pairings") if c.dvc else [c.pairing_code(k, variant=True)])],
          outs=lambda L, c, k: {L.pool_study.network(k): OUT, L.pool_study.loss_log(k): PLOT},
          params=lambda c, k: ["seed", *_NET, *c.train_keys(), f"pool_study.variants.{k}"],
          gpus=_ranks, plots=("kimg", "loss"), resources="train", pairs_noise=True),
    Stage("pool_sample", "sample", "variant", "sample:sample",
          deps=lambda L, c, k: [L.pool_study.network(k)],
          outs=lambda L, c, k: {L.pool_study.samples(k): OUT},
          params=lambda c, k: [*_NET, "sample.steps", "pool_study.rho", *_SAMPLING], gpus=_one_gpu),
    Stage("pool_fd", "fd", "variant", "evaluate:fd",
          deps=lambda L, c, k: [L.pool_study.samples(k), L.fd_reference, L.feature_network, L.dataset, *_plugin_files(c, "metrics")],
          outs=lambda L, c, k: {L.pool_study.fd(k): GIT, L.pool_study.features(k): OUT},
          params=lambda c, k: ["seed", *_NET, *_FD, _SCORES], gpus=_one_gpu),
    Stage("pool_curvature", "curvature", "variant", "evaluate:curvature",
          deps=lambda L, c, k: [L.pool_study.network(k)],
          outs=lambda L, c, k: {L.pool_study.curvature(k): OUT, L.pool_study.curvature_metrics(k): GIT},
          params=lambda c, k: ["seed", *_NET, "curvature", "pool_study.rho", "sample.sigma_min", "sample.sigma_max"],
          gpus=_one_gpu),
    Stage("pool_study", "pool-study", None, "report:pool_study",
          deps=lambda L, c, k: [L.fd_floor, L.fd_reference, *_plugin_files(c, "metrics"),
                                *([L.pool_study.variants_dir] if c.dvc else map(L.pool_study.variant_spec, c.variants)),
                                *[path for v in c.variants for path in (
                                    L.pool_study.fd(v), L.pool_study.features(v), L.pool_study.curvature_metrics(v),
                                    L.pool_study.loss_log(v))]],
          outs=lambda L, c, k: {**{L.pool_study.study_table(e): GIT for e in ("csv", "md", "html")},
                             L.pool_study.study_metrics: GIT, L.pool_study.study_figure: PLOT,
                             L.pool_study.study_figure.with_suffix(".pdf"): GIT},
          params=lambda c, k: ["seed", "data.dataset", "fd", "sample.seeds", "train.batch_size", "train.knn_k",
                               "pool_study", _SCORES], resources="light"),
]

# A released NVlabs/edm or EDM-AOT network pickle, sampled and scored at the profile's settings (Snakemake
# target `released`, outside the default DAG). The pickle's path is a parameter, never part of a command.
RELEASED_STAGES: list[Stage] = [
    Stage("released_sample", "sample", "released", "sample:sample",
          deps=lambda L, c, k: [c.p["released_pickle"] or "released_pickle-is-not-set.pkl"],
          outs=lambda L, c, k: {L.released_samples: OUT},
          params=lambda c, k: [*_NET, "released_pickle", "sample.steps", "sample.rho", *_SAMPLING], gpus=_one_gpu,
          param_files=("released_pickle",)),
    Stage("released_fd", "fd", "released", "evaluate:fd",
          deps=lambda L, c, k: [L.released_samples, L.fd_reference, L.feature_network, L.dataset, *_plugin_files(c, "metrics")],
          outs=lambda L, c, k: {L.released_fd: GIT, L.released_features: OUT},
          params=lambda c, k: ["seed", *_NET, *_FD, _SCORES], gpus=_one_gpu),
]
# Calibration before training: each released network of calibration.networks (a pickle named) sampled at its
# paper's headline setting (paper.CALIBRATION) and scored; the table puts it beside the published FID (Snakemake
# target `calibrate`, outside the default DAG).
CALIBRATION_STAGES: list[Stage] = [
    Stage("calibrate_sample", "sample", "network", "sample:calibrate_sample",
          deps=lambda L, c, k: _param_files(c, ["calibration.networks.{key}.pickle"], k),
          outs=lambda L, c, k: {L.calibration_samples(k): OUT},
          params=lambda c, k: ["seed", *_NET, f"calibration.networks.{k}", *_SAMPLING], gpus=_one_gpu,
          keys=lambda c: c.calibration_keys(), param_files=("calibration.networks.{key}.pickle",)),
    Stage("calibrate_fd", "fd", "network", "evaluate:fd",
          deps=lambda L, c, k: [L.calibration_samples(k), L.fd_reference, L.feature_network, L.dataset,
                                *_plugin_files(c, "metrics")],
          outs=lambda L, c, k: {L.calibration_fd(k): GIT, L.calibration_features(k): OUT},
          params=lambda c, k: ["seed", *_NET, *_FD, _SCORES], gpus=_one_gpu, keys=lambda c: c.calibration_keys()),
    Stage("calibration", "calibration", None, "report:calibration",
          deps=lambda L, c, k: [L.fd_floor, *[L.calibration_fd(n) for n in c.calibration_keys()]],
          outs=lambda L, c, k: {L.calibration_table(e): GIT for e in TABLE_FORMATS},
          params=lambda c, k: ["data.dataset", "fd", "calibration", "sample.num_samples", "sample.seeds"],
          resources="light"),
]
ALL_STAGES = STAGES + POOL_STUDY_STAGES + RELEASED_STAGES + CALIBRATION_STAGES
POOL_STUDY_DVC = Path("workflow/pool_size/dvc.yaml")


def stage(name: str) -> Stage:
    for st in ALL_STAGES:
        if st.name == name:
            return st
    raise KeyError(f"no stage {name!r}")


def find_stage(cli: str, over: str | None) -> Stage:
    """The stage that ``aot-diffusion <cli> [--<over> ...]`` runs."""
    for st in ALL_STAGES:
        if st.cli == cli and st.over == over:
            return st
    raise KeyError(f"no stage runs `aot-diffusion {cli}`" + (f" --{over}" if over else ""))


def keys_of(st: Stage, ctx: Context) -> list:
    if st.keys is not None:
        return st.keys(ctx)
    return {"model": ctx.models, "disc": ctx.discs, "variant": ctx.variants,
            "network": ctx.calibration_keys()}.get(st.over, [None])


def job_id(st: Stage, key: str | None) -> str:
    """One run of a stage, as DVC names it: ``stage`` or ``stage@key``."""
    return st.name if key is None else f"{st.name}@{key}"


def quote_name(key: str) -> str:
    """A model / discriminator / variant name as a shell word. Names are checked by the schema; a name that
    got here unchecked is refused rather than quoted into something a shell would run."""
    if not NAME_PATTERN.fullmatch(key):
        raise ParamError(f"the name {key!r} is not allowed in a command ({NAME_PATTERN.pattern})")
    return f"'{key}'"  # what shlex.quote gives for a name that needs it; the same form as DVC's below


def command(st: Stage, key: str | None) -> str:
    cmd = f"aot-diffusion {st.cli}"
    if st.over == "released":
        return cmd + " --released"
    if st.over in KEYED:
        # DVC fills in its ${item} / ${key} when it runs: single quotes keep a shell from reading it, and
        # the stage `pool_variants` refuses a bad name before any such command runs.
        return cmd + f" --{st.over} " + (f"'{key}'" if key.startswith("${") else quote_name(key))
    return cmd


class Plan:
    """The jobs of one parameter set and their parameter records (module docstring)."""

    def __init__(self, p: Mapping, root: Path | str = "."):
        self.p, self.ctx = p, Context(p)
        self.L = Layout(p["profile"])
        self.root = Path(root)
        self.producer = {}
        for st in ALL_STAGES:
            for key in keys_of(st, self.ctx):
                for path in st.outs(self.L, self.ctx, key):
                    self.producer[str(path)] = (st, key)
        self._digests = {}

    def declared(self, st: Stage, key: str | None) -> list:
        return st.params(self.ctx, key)

    def upstream(self, st: Stage, key: str | None) -> list:
        """The jobs whose records are part of this job's (what it reads from, unless ``chained`` is off)."""
        return [self.producer[str(d)] for d in st.deps(self.L, self.ctx, key)
                if str(d) in self.producer and (self.producer[str(d)][0].chained or st.over is None)]

    def priorities(self) -> dict:
        """{job: priority} for Snakemake's choice among ready jobs: a job's own effort plus the largest priority
        among the jobs that read from it (the longest chain of work it holds up), so that on few cores the
        chains that end the run (DG's, the hybrid samplers) start early and no long job is left for the tail.
        Scheduling only: no output, record or digest depends on it."""
        jobs = self.jobs()
        readers: dict = {job_id(*j): [] for j in jobs}
        for j in jobs:
            for up in self.upstream(*j):
                readers.setdefault(job_id(*up), []).append(job_id(*j))
        effort = {job_id(*j): j[0].effort for j in jobs}
        rank: dict = {}

        def rank_of(job):
            if job not in rank:
                rank[job] = effort[job] + max((rank_of(r) for r in readers.get(job, [])), default=0)
            return rank[job]

        return {job: rank_of(job) for job in effort}

    def plugins_used(self, st: Stage, key: str | None) -> list:
        """The plugin files whose code the job runs: every metric plugin where samples are scored, the pairing
        plugin of the model a training job trains (none for EDM's, nor for the built-in pairings)."""
        declared = self.declared(st, key)
        used = [plugin_path("metrics", n) for n in self.p["plugins"]["metrics"]] if _SCORES in declared else []
        if st.pairs_noise:
            pairing = (self.ctx.discriminator(key)["pairing"] if st.over == "disc"
                       else self.ctx.pairing_of(key, variant=st.over == "variant"))
            if pairing in self.p["plugins"]["pairings"]:
                used.append(plugin_path("pairings", pairing))
        return used

    def record(self, st: Stage, key: str | None) -> dict:
        """What the job computed from: the values it reads, the digests of the records it reads from, its
        command and code (provenance.code_of), the plugins it uses and the files it reads through a parameter.
        All of it goes into the digest."""
        from .provenance import code_of, content_sha256, plugin_digest

        ups = {job_id(*up): self.digest(*up) for up in self.upstream(st, key)}
        declared = self.declared(st, key)
        record = {"stage": job_id(st, key), "params": select(self.p, declared), "upstream": dict(sorted(ups.items())),
                  "command": command(st, key), "code": code_of(st.run)[1]}
        plugins = self.plugins_used(st, key)
        if plugins:
            record["plugins"] = {str(path): plugin_digest(self.root / path) for path in plugins}
        inputs = {}
        for name in st.param_files:
            name = name.format(key=key)
            value = self.ctx.p_value(name)
            if value:
                path = self.root / value
                inputs[name] = {"path": str(value),
                                "sha256": content_sha256(path, self.root, str(value)) if path.is_file() else "missing"}
        if inputs:
            record["inputs"] = inputs
        return record

    def digest(self, st: Stage, key: str | None) -> str:
        job = job_id(st, key)
        if job not in self._digests:
            self._digests[job] = digest(self.record(st, key))
        return self._digests[job]

    def record_path(self, st: Stage, key: str | None) -> Path:
        return self.L.record(job_id(st, key), self.digest(st, key))

    def outputs(self, st: Stage, key: str | None) -> list:
        return [str(path) for path in st.outs(self.L, self.ctx, key)]

    def write_record(self, st: Stage, key: str | None, environment: dict | None = None) -> Path:
        """Write the job's record, the only one in its folder (torchrun: rank 0 writes): the digested part,
        then, outside the digest, the content of every output it wrote and the environment. (No commit: a record
        is a tracked output, and the same code and parameters give the same bytes whatever the commit.)"""
        import json
        import os

        from .provenance import output_state
        from .utils import atomic_write_text

        path = self.root / self.record_path(st, key)
        if int(os.environ.get("RANK", "0")) == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            for old in path.parent.iterdir():
                if old.name != path.name:
                    old.unlink()
            written = {rel: output_state(self.root / rel, self.root, rel) for rel in self.outputs(st, key)}
            body = dict(self.record(st, key), digest=self.digest(st, key), outputs=written, environment=environment or {})
            atomic_write_text(path, json.dumps(body, indent=2) + "\n")
        return path

    def read_record(self, st: Stage, key: str | None) -> dict | None:
        """The job's record of the current digest, if there."""
        import json

        path = self.root / self.record_path(st, key)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def hand_edited(self, st: Stage, key: str | None) -> list:
        """Outputs of a finished job (its record of the current digest there) that are not what it wrote."""
        from .provenance import changed_outputs

        record = self.read_record(st, key)
        if record is None or "outputs" not in record:
            return []
        return changed_outputs(record["outputs"], self.root)

    def environment_changes(self, st: Stage, key: str | None) -> list:
        """Where the environment in the job's current record differs from this machine's (device: as
        params.device_of decides, without importing torch into the planner; "cpu" for a job without a network)."""
        from .provenance import environment_changes, software

        record = self.read_record(st, key)
        if not record or not record.get("environment"):
            return []
        device = "cpu"
        if "device" in self.declared(st, key):
            device = self.p["device"] if self.p["device"] != "auto" else \
                ("cuda" if Path("/dev/nvidia0").exists() else "cpu")
        return environment_changes(record["environment"], software(device, self.p["threads"]))

    def jobs(self):
        return [(st, key) for st in ALL_STAGES for key in keys_of(st, self.ctx)]

    def hand_edits(self) -> list:
        """``[(stage, key, [changed outputs])]`` over every job with a record of the current digest."""
        return [(st, key, changed) for st, key in self.jobs() if (changed := self.hand_edited(st, key))]

    def is_current(self, st: Stage, key: str | None) -> bool:
        """Outputs there, made with the current parameters and code (its record of the current digest is
        there), and still what the job wrote."""
        paths = [*st.outs(self.L, self.ctx, key), self.record_path(st, key)]
        return all((self.root / path).exists() for path in paths) and not self.hand_edited(st, key)
