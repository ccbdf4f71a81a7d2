"""docs/extending.md runs as written: every code block is executed here. The plugin blocks are written to the
files their first line names in a temporary project and used through the parameters (the YAML block); the new
stage's block is applied to a copy of the repository at the places its comments name, and both doors plan it."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXTENDING = ROOT / "docs" / "extending.md"


def code_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block, in order."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", EXTENDING.read_text(), re.S | re.M)]


def block(lang: str, first_line: str) -> str:
    found = [text for kind, text in code_blocks() if kind == lang and text.startswith(first_line)]
    assert len(found) == 1, f"docs/extending.md: {len(found)} {lang} blocks start with {first_line!r}"
    return found[0]


def test_every_block_of_extending_md_is_one_this_file_runs():
    """A new block must be run here too: the blocks are exactly the four the tests below execute."""
    heads = [(lang, text.splitlines()[0]) for lang, text in code_blocks()]
    assert heads == [("python", "# plugins/pairings/toy_sorted.py"), ("yaml", "plugins:"),
                     ("python", "# plugins/metrics/toy_brightness.py"),
                     ("python", "# src/aot_diffusion/layout.py, class Layout")]


@pytest.fixture
def project(tmp_path):
    from test_plugins import _unload_plugins

    _unload_plugins()
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    yield tmp_path
    _unload_plugins()


def test_the_plugin_blocks_register_and_the_yaml_block_uses_them(project):
    from aot_diffusion.aot import PAIRINGS
    from aot_diffusion.metrics.scores import METRICS
    from aot_diffusion.params import compose

    for first in ("# plugins/pairings/toy_sorted.py", "# plugins/metrics/toy_brightness.py"):
        path = project / first.removeprefix("# ")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block("python", first))
    config = yaml.safe_load(block("yaml", "plugins:"))
    config["plugins"]["metrics"] = ["toy_brightness"]  # the metric section's `plugins: {metrics: [...]}`
    p = compose("smoke", config, root=project)  # loads both files and checks the variant's pairing
    assert p["pool_study"]["variants"]["toy32"] == {"pairing": "toy_sorted", "pool_size": 32}

    g = torch.Generator().manual_seed(0)
    images, noise = torch.randn(16, 1, 4, 4, generator=g), torch.randn(16, 1, 4, 4, generator=g)
    paired = PAIRINGS["toy_sorted"](images, noise, None, generator=g)
    assert sorted(paired.flatten(1).sum(1).tolist()) == sorted(noise.flatten(1).sum(1).tolist())  # a permutation
    order = images.flatten(1).sum(1).argsort()
    assert (paired.flatten(1).sum(1)[order].diff() >= 0).all()  # brighter image, larger-sum noise

    class Cfg:
        seed, n_boot, level = 0, 200, 0.95

    class Sample:
        images = np.full((10, 1, 4, 4), 0.5)

    class Ref:
        train_images = np.zeros((10, 1, 4, 4))

    est = METRICS["toy_brightness"].fn(Sample, Ref, Cfg)
    assert est.value == pytest.approx(0.5) and est.low == pytest.approx(0.5) and est.high == pytest.approx(0.5)


def apply_new_stage_block(proj: Path) -> None:
    """Each part of the block goes where its comment says: the Layout method into class Layout, the Stage into
    STAGES, the function at the end of its stage module."""
    parts = re.split(r"^# (src/\S+)(?:, (.*))?\n", block("python", "# src/aot_diffusion/layout.py"), flags=re.M)[1:]
    for path, where, text in zip(parts[0::3], parts[1::3], parts[2::3]):
        target = proj / path
        source = target.read_text()
        text = text.rstrip() + "\n"
        if where == "class Layout":
            start = source.index("\nclass Layout")
            at = source.index("\n    def ", start) + 1
            source = source[:at] + text + "\n" + source[at:]
        elif where == "in STAGES":
            anchor = "\nSTAGES: list[Stage] = [\n"
            assert source.count(anchor) == 1
            source = source.replace(anchor, anchor + text)
        else:
            assert where is None, where
            source = source.rstrip() + "\n\n\n" + text
        target.write_text(source)


@pytest.mark.slow
def test_the_new_stage_block_makes_a_stage_both_doors_plan(tmp_path):
    from test_pipeline import copy_repo, planned_jobs, run

    from aot_diffusion.dag import Context
    from aot_diffusion.params import load_params

    proj = copy_repo(tmp_path / "proj")
    apply_new_stage_block(proj)
    run(["python", "-c", "import aot_diffusion.dag, aot_diffusion.stages.evaluate"], proj)  # it imports
    run(["aot-diffusion", "dvc-yaml"], proj)
    models = Context(load_params(proj / "params.yaml")).models
    assert planned_jobs(run(["snakemake", "-n"], proj).stdout)["precision"] == len(models)
    listed = run(["dvc", "stage", "list", "--name-only"], proj).stdout.split()
    assert sorted(s for s in listed if s.startswith("precision@")) == sorted(f"precision@{m}" for m in models)
    assert "precision" in run(["aot-diffusion", "--help"], proj).stdout  # the CLI's subcommand, from the table
    assert subprocess.run(["git", "diff", "--quiet", "--", "src"], cwd=proj).returncode == 1  # the block was applied
