"""Every output path of the pipeline, once. Each profile writes under its own ``results/<profile>/`` and
``figures/<profile>/``, so running one profile never touches another's outputs.

The DAG (dag.py, hence the Snakefile and dvc.yaml), the stages and the report all take paths from here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["Layout", "FIGURE_NAMES", "TABLE_NAMES", "TABLE_FORMATS", "sample_key", "parse_sample_key"]

FIGURE_NAMES = ("fd_vs_nfe", "rho_steps_heatmap", "curvature_vs_sigma", "truncation_vs_nfe", "guidance_fd_vs_nfe",
                "dg_learning_curves", "hybrid_switch", "samples_low_nfe", "samples_high_nfe", "loss_curves", "teaser_denoiser_strip")
TABLE_FORMATS = ("csv", "md", "html", "tex")  # every table of the tables stage: data, README, report, paper
TABLE_NAMES = ("table1_fd_vs_nfe", "table2_guidance", "table3_curvature", "aot_vs_edm", "hybrid_switch", "paper_comparison")
CALIBRATION_TABLE = "calibration"  # target `calibrate`, outside the default DAG


def sample_key(steps: int, rho: float, seed: int) -> str:
    """The key of one sampler setting inside a samples file (the one writer: stages.sample)."""
    return f"steps{int(steps)}_rho{float(rho):g}_seed{int(seed)}"


def parse_sample_key(key: str) -> tuple[int, float, int]:
    steps, rho, seed = key.split("_")
    if not (steps.startswith("steps") and rho.startswith("rho") and seed.startswith("seed")):
        raise ValueError(f"not a sample key: {key!r}")
    return int(steps[5:]), float(rho[3:]), int(seed[4:])


class Layout:
    """Paths of one profile. ``Layout("{profile}")`` gives the patterns that the DAG templates."""

    def __init__(self, profile: str, root: Path | str = ".", study: str | None = None):
        self.profile = profile
        self.root = Path(root)
        self.study = study
        self.results = self.root / "results" / profile
        self.figures = self.root / "figures" / profile
        # Per-model outputs: a study's models (its variants) live in its own folder; data and the FD
        # reference stay shared with the main DAG.
        self.model_results = self.results / study if study else self.results

    @property
    def pool_study(self) -> "Layout":
        """Paths of the pool-size study: its variants are models under results/<profile>/pool_size/."""
        return Layout(self.profile, self.root, study="pool_size")

    @property
    def effective_params(self):  # the validated parameters of the run that wrote these results
        return self.results / "params.yaml"

    # data and the FD reference
    @property
    def dataset(self):
        return self.results / "data" / "dataset.npz"

    @property
    def data_summary(self):
        return self.results / "data" / "summary.json"

    @property
    def feature_network(self):  # digits: the trained feature classifier; cifar10: a record of Inception's assets
        return self.results / "fd" / "feature_network.pt"

    @property
    def feature_network_metrics(self):
        return self.results / "fd" / "feature_network.json"

    @property
    def fd_reference(self):
        return self.results / "fd" / "reference.npz"

    @property
    def fd_floor(self):
        return self.results / "fd" / "floor.json"

    # diffusion models
    def network(self, model):
        return self.model_results / "models" / model / "network.pt"

    def loss_log(self, model):
        return self.model_results / "models" / model / "loss.csv"

    def checkpoints(self, model):
        return self.model_results / "models" / model / "checkpoints"

    def samples(self, model):
        return self.model_results / "samples" / f"{model}.npz"

    def fd(self, model):
        return self.model_results / "fd" / f"{model}.csv"

    def features(self, model):
        return self.model_results / "fd" / f"{model}.features.npz"

    def curvature(self, model):
        return self.model_results / "curvature" / f"{model}.npz"

    def curvature_metrics(self, model):
        return self.model_results / "curvature" / f"{model}.json"

    # Discriminator Guidance
    def fakes(self, model):
        return self.results / "dg" / "fakes" / f"{model}.npz"

    @property
    def encoder(self):
        return self.results / "dg" / "encoder.pt"

    @property
    def encoder_metrics(self):
        return self.results / "dg" / "encoder.json"

    def discriminator(self, disc):
        return self.results / "dg" / "discriminators" / f"{disc}.pt"

    def discriminator_metrics(self, disc):
        return self.results / "dg" / "discriminators" / f"{disc}.json"

    def discriminator_curve(self, disc):  # the learning curve: training and held-out BCE per check
        return self.results / "dg" / "discriminators" / f"{disc}.curve.csv"

    def guided_samples(self, disc):
        return self.results / "dg" / "samples" / f"{disc}.npz"

    def guided_fd(self, disc):
        return self.results / "dg" / "fd" / f"{disc}.csv"

    def guided_features(self, disc):
        return self.results / "dg" / "fd" / f"{disc}.features.npz"

    # the hybrid-sampler analysis: AOT's denoiser above a switch sigma and EDM's below, and the reverse
    @property
    def hybrid_samples(self):
        return self.results / "hybrid" / "samples.npz"

    @property
    def hybrid_fd(self):
        return self.results / "hybrid" / "fd.csv"

    # report
    def table(self, name, ext="csv"):
        return self.results / "tables" / f"{name}.{ext}"

    @property
    def fd_curves(self):
        return self.results / "tables" / "fd_curves.csv"

    @property
    def metrics(self):
        return self.results / "metrics.json"

    def figure(self, name, ext="png"):  # every figure as PNG and as vector PDF
        return self.figures / f"{name}.{ext}"

    def sample_grid(self, model, steps, rho, seed, ext="png"):  # `aot-diffusion grid` (not a stage output)
        return self.figures / "grids" / f"{model}_{sample_key(steps, rho, seed)}.{ext}"

    # the pool-size study's report (Layout(...).pool_study)
    def study_table(self, ext="csv"):
        return self.model_results / f"pool_size_study.{ext}"

    @property
    def study_metrics(self):
        return self.model_results / "metrics.json"

    @property
    def study_figure(self):
        return self.figures / "pool_size_study.png"

    # parameter records: what each finished stage read (dag.Plan); one folder per job, one file per digest
    def job_log(self, job: str):  # what a Snakemake job printed (logs/ is not an output of either door's DAG)
        return self.root / "logs" / self.profile / f"{job}.log"

    # wall-clock measurements, kept out of every tracked output (two identical runs give identical bytes):
    # under logs/, which is git-ignored and in neither door's DAG
    @property
    def logs(self):  # logs/<profile>/, and a study's own folder in it (its variants are not the main models)
        return self.root / "logs" / self.profile / (self.study or "")

    def job_timing(self, job: str):  # one job's wall span and CPU-seconds (start-up / work): benchmarks/default_job.py
        return self.root / "logs" / self.profile / "timing" / f"{job}.json"

    def timing_log(self, model):  # training time per logging window (step, sec_per_kimg, pair_ms)
        return self.logs / f"{model}.timing.csv"

    @property
    def study_cost(self):  # the pool-size study's pairing and step times, from its variants' timing logs
        return self.root / "logs" / self.profile / "pool_size_cost.csv"

    def records(self, job: str):
        return self.results / "records" / job

    def record(self, job: str, digest: str):
        return self.records(job) / f"{digest}.json"

    # the pool-size study's variants, checked and written one file each (stage pool_variants)
    @property
    def variants_dir(self):
        return self.model_results / "variants"

    def variant_spec(self, variant):
        return self.variants_dir / f"{variant}.json"

    # released checkpoints (Snakemake target `released`, outside the default DAG)
    @property
    def released_samples(self):
        return self.results / "released" / "samples.npz"

    @property
    def released_fd(self):
        return self.results / "released" / "fd.csv"

    @property
    def released_features(self):
        return self.results / "released" / "fd.features.npz"

    # calibration: released networks at their papers' settings (Snakemake target `calibrate`)
    def calibration_samples(self, network):
        return self.results / "calibration" / f"{network}.samples.npz"

    def calibration_fd(self, network):
        return self.results / "calibration" / f"{network}.fd.csv"

    def calibration_features(self, network):
        return self.results / "calibration" / f"{network}.fd.features.npz"

    def calibration_table(self, ext):
        return self.table(CALIBRATION_TABLE, ext)
