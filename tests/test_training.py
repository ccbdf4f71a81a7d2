"""Training engine: resume after a kill is bitwise exact, DDP under torchrun stays in sync, input errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from aot_diffusion.training import PoolSource, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def make_project(tmp_path, **train_overrides):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    overlay = tmp_path / "config" / "profiles" / "smoke.yaml"
    o = yaml.safe_load(overlay.read_text())
    o["train"].update(train_overrides)
    overlay.write_text(yaml.safe_dump(o))
    cli(tmp_path, "prepare-data", "--out", "data.npz", "--summary", "summary.json")
    return tmp_path


def cli(cwd, *args, check=True):
    cmd = [sys.executable, "-m", "aot_diffusion.cli", args[0], "--profile", "smoke", "--threads", "1", *args[1:]]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{out.stdout}\n{out.stderr}")
    return out


def train(cwd, model, out, ckpt, *extra):
    return cli(cwd, "train", "--model", model, "--data", "data.npz", "--out", out, "--checkpoint-dir", ckpt,
               "--loss-log", out + ".loss.jsonl", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["aot_cond"])
def test_resume_after_kill_is_bitwise_exact(tmp_path, model):
    proj = make_project(tmp_path, total_steps=8, checkpoint_every=3, log_every=1)
    train(proj, model, "full.pt", "ck_full")
    stopped = train(proj, model, "resumed.pt", "ck_resume", "--stop-after", "5")  # checkpoint at 3, dies at 5
    assert "stopped after step 5" in stopped.stdout
    assert not (proj / "resumed.pt").exists()
    resumed = train(proj, model, "resumed.pt", "ck_resume")  # a fresh process
    assert "resumed from" in resumed.stdout and "at step 6" not in resumed.stdout
    full = torch.load(proj / "full.pt", weights_only=True)["ema"]
    res = torch.load(proj / "resumed.pt", weights_only=True)["ema"]
    assert full.keys() == res.keys()
    for k in full:
        assert torch.equal(full[k], res[k]), k
    # The loss log of the resumed run has each step once, as the uninterrupted run's.
    steps = [json.loads(line)["step"] for line in (proj / "resumed.pt.loss.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


@pytest.mark.slow
def test_torchrun_ddp_two_ranks_stay_in_sync(tmp_path):
    proj = make_project(tmp_path, total_steps=4, nproc_per_node=2, checkpoint_every=2, log_every=2)
    out = train(proj, "aot_uncond", "ddp.pt", "ck_ddp")
    assert "launching 2 processes" in out.stdout
    line = next(l for l in out.stdout.splitlines() if "rank EMA checksums" in l)
    sums = json.loads(line.split(":", 1)[1].strip())
    assert len(sums) == 2 and sums[0] == sums[1]
    assert (proj / "ddp.pt").exists()


def test_pool_source_is_deterministic_and_pairs():
    images = torch.rand(50, 1, 4, 4) * 2 - 1
    labels = torch.arange(50) % 5
    a = PoolSource(images, labels, pool_size=20, aot_on=True, seed=1, num_classes=5)
    b = PoolSource(images, labels, pool_size=20, aot_on=True, seed=1, num_classes=5)
    r = PoolSource(images, labels, pool_size=20, aot_on=False, seed=1, num_classes=5)
    for k in (0, 3):  # pool 3 crosses an epoch boundary
        pa, pb, pr = a.make(k), b.make(k), r.make(k)
        assert torch.equal(pa.noise, pb.noise) and torch.equal(pa.images, pb.images)
        assert torch.equal(pa.images, pr.images)  # same images; only the pairing differs
        assert pa.paired_distance < pr.paired_distance
        # Paired noise is a permutation of the random noise rows that keeps classes.
        dist = torch.cdist(pa.noise.flatten(1), pr.noise.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
        match = dist.argmin(1)
        assert bool((dist.min(1).values == 0).all()) and match.unique().numel() == len(match)
        assert torch.equal(pa.labels.argmax(1), pr.labels[match].argmax(1))
    other_rank = PoolSource(images, labels, pool_size=20, aot_on=True, seed=1, rank=1, num_classes=5)
    assert not torch.equal(other_rank.make(0).noise, a.make(0).noise)


@pytest.mark.parametrize("overrides,match", [
    (dict(pool_size=16, batch_size=32), "smaller than"),
    (dict(pool_size=48, batch_size=32), "not divisible"),
    (dict(solver="auction"), "solver"),
])
def test_bad_training_config(overrides, match):
    cfg = TrainConfig(network={}, **{**dict(batch_size=32, pool_size=64), **overrides})
    with pytest.raises(ValueError, match=match):
        cfg.validate()
