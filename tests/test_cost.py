"""`aot-diffusion plan`: what a profile costs before it is submitted, from its parameters and a per-GPU rate."""

import subprocess
import sys

import pytest

from aot_diffusion.cost import STATED_RATES, estimate
from aot_diffusion.params import compose
from test_pipeline import ROOT


def test_cifar10_training_cost_is_models_x_seeds_x_images_over_the_rate():
    p = compose("cifar10", root=ROOT)
    rows = {r["kind"]: r for r in estimate(p)}
    jobs = len(p["models"]) * len(p["train"]["seeds"])
    images = p["train"]["total_steps"] * p["train"]["batch_size"]
    assert rows["train"]["jobs"] == jobs == 8 and images == pytest.approx(200e6)
    assert rows["train"]["gpu_hours"] == pytest.approx(jobs * images / STATED_RATES["train_img_per_s"] / 3600)
    assert 60 < rows["train"]["gpu_hours"] / 24 < 70  # about 64 GPU-days: two seeds x four models x 200 Mimg
    # DG's protocol: epochs x (50k real + 50k fakes) per discriminator; sampling: every setting x 3 x 50k
    assert rows["train_discriminator"]["work"].startswith("protocol dg, epochs 60 / 250")
    halved = estimate(p, train_img_per_s=2 * STATED_RATES["train_img_per_s"])
    assert next(r for r in halved if r["kind"] == "train")["gpu_hours"] == pytest.approx(rows["train"]["gpu_hours"] / 2)


def test_plan_prints_gpu_hours_per_stage_kind_and_the_total():
    out = subprocess.run([sys.executable, "-m", "aot_diffusion.cli", "plan", "--profile", "cifar10"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for needle in ("train", "sample", "train_discriminator", "guided_sample", "GPU-h", "total", "GPU-days",
                   "one training seed (train.seeds: [0]) saves"):
        assert needle in out, needle
    mine = subprocess.run([sys.executable, "-m", "aot_diffusion.cli", "plan", "--profile", "cifar10",
                           "--train-img-per-s", "580"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "your rates" in mine and "580 training img/s" in mine


def test_the_readme_shows_what_plan_prints():
    """The cost block of docs/cifar10.md is the command's output for the shipped cifar10 profile, not typed by hand."""
    out = subprocess.run([sys.executable, "-m", "aot_diffusion.cli", "plan", "--profile", "cifar10"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.rstrip("\n")
    readme = (ROOT / "docs" / "cifar10.md").read_text()
    block = "\n".join(("  " + line) if line else "" for line in out.split("\n"))
    assert f"  ```\n{block}\n  ```" in readme
