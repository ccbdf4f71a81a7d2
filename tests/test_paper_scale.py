"""Paper-scale pieces that run without a GPU: the cifar10 DAG plans, Inception-FID preflight and
plumbing, and a released (EDM-format) checkpoint sampled and scored by the `released` target."""


import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from aot_diffusion.metrics import fid as fidmod
from aot_diffusion.networks import build_network
from test_checkpoints import _write, fake_edm  # noqa: F401  (fixture reused)
from test_pipeline import copy_repo, run


def test_cifar10_profile_plans_the_full_paper_dag(tmp_path):
    proj = copy_repo(tmp_path)
    out = run(["snakemake", "-n", "-p", "--config", "profile=cifar10"], proj).stdout
    for kind in ("prepare_data", "train_classifier", "train", "sample", "fid", "curvature", "fake_samples",
                 "train_discriminator", "guided_sample", "guided_fid", "tables", "figures"):
        assert f"rule {kind}:" in out, kind
    assert "--profile cifar10" in out
    p = yaml.safe_load((proj / "config/profiles/cifar10.yaml").read_text())
    assert p["train"]["batch_size"] == 256 and p["train"]["pool_size"] == 512 and p["train"]["pool_size_cond"] == 2048
    assert p["train"]["total_steps"] * p["train"]["batch_size"] == 200_000_000


def test_slurm_profile_requests_gpus_for_training():
    from pathlib import Path

    cfg = yaml.safe_load((Path(__file__).parents[1] / "config/slurm/config.yaml").read_text())
    assert cfg["executor"] == "slurm"
    assert cfg["set-resources"]["train"]["gpu"] == 4
    assert all(cfg["set-resources"][r]["gpu"] >= 1 for r in ("sample", "fid", "guided_sample"))


def test_inception_preflight_fails_clearly_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(fidmod, "INCEPTION_FILE", str(tmp_path / "missing-inception.pt"))
    with pytest.raises(FileNotFoundError, match="Pre-seed"):
        fidmod.check_inception_assets(allow_download=False)
    fidmod.check_inception_assets(allow_download=True)  # the user allowed the download: no error here


def test_inception_fid_plumbing_with_a_stand_in_feature_network():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(300, 3, 32, 32), dtype=np.uint8)
    proj = torch.randn(3 * 32 * 32, 16, generator=torch.Generator().manual_seed(0))
    seen = []

    def feature_model(batch):  # clean-fid passes float pixels in [0, 255]
        seen.append((batch.dtype, float(batch.max())))
        return batch.flatten(1) @ proj / 255

    feats = fidmod.inception_features(images, device="cpu", batch_size=128, feature_model=feature_model)
    assert feats.shape == (300, 16) and seen[0][0] == torch.float32 and seen[0][1] > 1
    ref = fidmod.feature_statistics(feats)
    assert fidmod.cifar10_inception_fid(images, device="cpu", feature_model=feature_model, reference=ref) == \
        pytest.approx(0.0, abs=1e-6)
    shifted = np.clip(images.astype(int) + 40, 0, 255).astype(np.uint8)
    assert fidmod.cifar10_inception_fid(shifted, device="cpu", feature_model=feature_model, reference=ref) > 1.0


def test_uint8_roundtrip():
    x = np.linspace(-1, 1, 256, dtype=np.float32)
    assert np.abs(fidmod.from_uint8(fidmod.to_uint8(x)) - x).max() <= 1 / 127.5


@pytest.mark.slow
def test_released_checkpoint_target(tmp_path, fake_edm):  # noqa: F811
    persistence, marker = fake_edm
    proj = copy_repo(tmp_path / "repo")
    smoke = yaml.safe_load((proj / "config/profiles/smoke.yaml").read_text())
    base = yaml.safe_load((proj / "params.yaml").read_text())
    net_cfg = {**base["train"]["network"], **smoke["train"]["network"], "img_resolution": 8, "img_channels": 1}
    torch.manual_seed(0)
    net = build_network(net_cfg).eval()
    pkl = tmp_path / "edm-released.pkl"
    _write(pkl, persistence, dict(ema=net, loss_fn=None, augment_pipe=None), net, init_kwargs=net_cfg)
    run(["snakemake", "--cores", "2", "--config", "profile=smoke", f"released_pickle={pkl}", "--", "released"], proj)
    assert not marker.exists()  # the pickle's embedded code never ran
    df = pd.read_csv(proj / "results/released/fid.csv")
    assert len(df) == 4 * 3 and np.isfinite(df["fid"]).all()
