"""The cifar10 DAG rehearsed: the `rehearsal` profile is cifar10 at toy size with two stand-in inputs; its inputs
are written in the real formats and read by the real readers; the whole DAG (and the `released` target) runs end
to end on a CPU, with CIFAR-shaped outputs, the paper's tables, and nothing left to plan at either door."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from aot_diffusion.dag import STAGES, Context, command, job_id, keys_of
from aot_diffusion.layout import FIGURE_NAMES, TABLE_NAMES, Layout, sample_key
from aot_diffusion.params import compose, flatten, guidance_settings
from aot_diffusion.schema import fake_split
from test_pipeline import ROOT, copy_repo, run

# What the overlay may change: the profile's name, the two stand-in inputs (data and the FD's features) with the
# paths of the files that stand in for downloads, and sizes and counts.
STAND_INS = {"profile", "data.cifar10_tarball", "data.cifar10_md5", "fd.features", "guidance.adm_classifier",
             *[f"calibration.networks.{n}.pickle" for n in ("edm_uncond", "edm_cond", "aot_uncond", "aot_cond")]}
SIZES = {"threads", "train.network.model_channels", "train.network.channel_mult", "train.network.channel_mult_emb",
         "train.network.num_blocks", "train.batch_size", "train.pool_size", "train.pool_size_cond", "train.total_steps",
         "train.lr_rampup_kimg", "train.ema_halflife_kimg", "train.log_every", "train.checkpoint_every",
         "train.nproc_per_node", "classifier.steps", "classifier.batch_size", "classifier.feature_dim", "sample.steps",
         "sample.num_samples", "sample.batch_size", "sample.grid_steps", "fd.feature_batch", "curvature.fine_steps",
         "curvature.num_latents", "curvature.sigma_grid", "curvature.coarse_steps", "guidance.num_fake",
         "guidance.fake_steps", "guidance.encoder.model_channels", "guidance.encoder.channel_mult",
         "guidance.encoder.num_res_blocks", "guidance.encoder.attention_resolutions",
         "guidance.encoder.num_head_channels", "guidance.head_channels", "guidance.head_depth", "guidance.pool_size",
         "guidance.batch_size", "guidance.max_steps", "guidance.eval_every", "guidance.patience", "guidance.sample_steps",
         "guidance.rho", "guidance.epochs_uncond", "guidance.epochs_cond", "hybrid.switch_sigmas",
         "hybrid.steps"}


def _is_size(value) -> bool:
    if isinstance(value, dict):
        return all(_is_size(v) for v in value.values())
    if isinstance(value, list):
        return all(_is_size(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_overlay_changes_only_sizes_counts_and_the_stand_ins():
    cifar, rehearsal = flatten(compose("cifar10", root=ROOT)), flatten(compose("rehearsal", root=ROOT))
    assert set(cifar) == set(rehearsal)
    changed = {k for k in cifar if cifar[k] != rehearsal[k]}
    assert changed - STAND_INS - SIZES == set(), "the rehearsal changes more than sizes and stand-ins"
    assert all(_is_size(cifar[k]) and _is_size(rehearsal[k]) for k in changed & SIZES)
    assert STAND_INS <= changed  # each stand-in really is one (else the rehearsal would need a download)
    # what the issue names stays the profile's: NCSN++ (fourier, residual), augment pipe, conditional and
    # unconditional models, class-wise pairing, several ranks, three sampling seeds, DG's classifier file
    for key in ("train.network.embedding_type", "train.network.encoder_type", "train.augment_p", "models",
                "guidance.discriminators", "sample.seeds", "sample.rho", "data.dataset",
                "guidance.paper_setting_uncond.steps", "guidance.paper_setting_uncond.rho",
                "guidance.paper_setting_cond.steps", "guidance.paper_setting_cond.rho", "guidance.protocol",
                "guidance.boosting_cond", "fd.headline"):
        assert rehearsal[key] == cifar[key], key
    assert rehearsal["train.nproc_per_node"] == 2 and rehearsal["train.augment_p"] > 0
    assert len(rehearsal["sample.seeds"]) == 3


def test_rehearsal_plans_the_cifar10_dag():
    """The same jobs and commands as cifar10 (the commands name no parameter: both read params.yaml)."""
    def jobs(profile):
        ctx = Context(compose(profile, root=ROOT))
        return [(job_id(st, k), command(st, k)) for st in STAGES for k in keys_of(st, ctx)]
    assert jobs("rehearsal") == jobs("cifar10")


def test_rehearsal_inputs_are_real_formats_read_by_the_real_readers(tmp_path):
    from aot_diffusion.cifar10 import load_cifar10, load_label_names
    from aot_diffusion.edm_pickle import load_edm_pickle, load_edm_pickle_data
    from aot_diffusion.guidance.adm import load_dg_classifier
    from aot_diffusion.networks import build_network
    from aot_diffusion.rehearsal import released_config, write_dg_classifier, write_edm_pickle, write_cifar10_tarball

    p = compose("rehearsal", root=ROOT)
    md5 = write_cifar10_tarball(tmp_path / "a.tar.gz")
    assert md5 == write_cifar10_tarball(tmp_path / "b.tar.gz") == p["data"]["cifar10_md5"]  # byte for byte
    x, y = load_cifar10(tmp_path / "a.tar.gz", "train", expected_md5=md5)
    assert x.shape == (200, 3, 32, 32) and x.dtype == np.uint8 and np.bincount(y).tolist() == [20] * 10
    assert load_cifar10(tmp_path / "a.tar.gz", "test", expected_md5=md5)[0].shape == (100, 3, 32, 32)
    assert load_label_names(tmp_path / "a.tar.gz", expected_md5=md5)[0] == "airplane"
    with pytest.raises(ValueError, match="md5"):
        load_cifar10(tmp_path / "a.tar.gz", "train")  # the official md5: not the official file

    write_dg_classifier(tmp_path / "clf.pt", p["guidance"]["encoder"])
    state = torch.load(tmp_path / "clf.pt", weights_only=True)
    assert "input_blocks.0.0.weight" in state and "out.2.c_proj.weight" in state  # guided-diffusion's names
    encoder = load_dg_classifier(tmp_path / "clf.pt", encoder=p["guidance"]["encoder"])
    assert encoder.feature_resolution == 16
    with pytest.raises(ValueError, match="model_channels is 16 \\(expected 128\\)"):
        load_dg_classifier(tmp_path / "clf.pt", encoder=compose("cifar10", root=ROOT)["guidance"]["encoder"])

    config = released_config(p["train"]["network"])
    write_edm_pickle(tmp_path / "network.pkl", config, seed=3)
    raw = load_edm_pickle_data(tmp_path / "network.pkl")
    assert raw["ema"].class_name == "EDMPrecond" and raw["augment_pipe"].class_name == "AugmentPipe"
    net = load_edm_pickle(tmp_path / "network.pkl")
    torch.manual_seed(3)
    ref = build_network(config).eval()
    z, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.5, 20.0])
    with torch.no_grad():
        assert torch.equal(net(z, sigma), ref(z, sigma))


# ------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def rehearsal_tree(tmp_path_factory):
    """One rehearsal run: the inputs, then the default target and `calibrate` (released pickles through the loader and
    scoring that `released` uses too), through Snakemake."""
    proj = copy_repo(tmp_path_factory.mktemp("rehearsal"))
    run(["aot-diffusion", "rehearsal-inputs"], proj)
    out = run(["snakemake", "--cores", "2", "--config", "profile=rehearsal", "--", "all", "calibrate"], proj,
              timeout=1500)
    return proj, out.stdout + out.stderr


def _arrays(path):
    from aot_diffusion.safe_pickle import safe_np_load

    with safe_np_load(path) as d:
        return {k: d[k] for k in d.files}


@pytest.mark.slow
def test_rehearsal_runs_the_cifar10_dag_end_to_end(rehearsal_tree):
    proj, log = rehearsal_tree
    p = compose("rehearsal", root=proj)
    L, ctx = Layout("rehearsal", proj), Context(p)
    assert log.count("launching 2 processes") == len(ctx.models)  # every training under torchrun, two ranks
    assert "nan" not in " ".join(re.findall(r"dist paired/random \S+", log))

    data = _arrays(L.dataset)
    assert data["train_images"].shape == (200, 3, 32, 32) and data["train_images"].dtype == np.float32
    assert data["test_images"].shape == (100, 3, 32, 32) and int(data["num_classes"]) == 10
    # Every image array the DAG wrote is CIFAR-shaped: samples, fakes, guided and hybrid samples as uint8 pixels.
    images = [f for f in (proj / "results" / "rehearsal").rglob("*.npz") if "records" not in f.parts]
    assert len(images) > 40
    for f in images:
        for name, a in _arrays(f).items():
            if a.ndim == 4:
                assert a.shape[1:] == (3, 32, 32), (f, name)
    settings = {sample_key(s, r, seed) for s in p["sample"]["steps"] for r in p["sample"]["rho"]
                for seed in p["sample"]["seeds"]}
    for model in ctx.models:
        cond = p["models"][ctx.spec_name(model)]["conditional"]
        blob = torch.load(L.network(model), weights_only=True)
        net = blob["network_config"]
        assert (net["img_resolution"], net["img_channels"], net["augment_dim"]) == (32, 3, 9)
        assert (net["embedding_type"], net["encoder_type"], net.get("label_dim", 0)) == ("fourier", "residual", 10 * cond)
        samples = _arrays(L.samples(model))
        extra = {sample_key(s, r, seed) for s, r in guidance_settings(p, cond) for seed in p["sample"]["seeds"]}
        assert set(samples) == settings | extra
        assert all(a.dtype == np.uint8 and a.shape == (p["sample"]["num_samples"], 3, 32, 32) for a in samples.values())
        fd = pd.read_csv(L.fd(model))
        assert len(fd) == len(samples) and np.isfinite(fd[["fd", "fd_low", "fd_high", "fd_heldout"]]).all().all()
    for model in ctx.guided_models():
        fakes = _arrays(L.fakes(model))
        n_fakes = sum(fake_split(p["guidance"]))  # DG's protocol: the held-out fakes on top of num_fake
        assert fakes["images"].shape == (n_fakes, 3, 32, 32) and fakes["images"].dtype == np.uint8
    for disc in ctx.discs:
        cond = p["models"][p["guidance"]["discriminators"][disc]["model"]]["conditional"]
        guided = {k: a for k, a in _arrays(L.guided_samples(disc)).items() if not k.startswith("grad_evals/")}
        assert set(guided) == {sample_key(s, r, seed) for s, r in guidance_settings(p, cond) for seed in p["sample"]["seeds"]}
        assert all(a.dtype == np.uint8 and a.shape[1:] == (3, 32, 32) for a in guided.values())
    assert json.loads(L.encoder_metrics.read_text())["source"] == p["guidance"]["adm_classifier"]

    # The paper's tables, those of FDs titled for what the numbers are (the stand-in features: not FID).
    for name in TABLE_NAMES:
        title = L.table(name, "md").read_text().split("\n")[0]
        assert L.table(name, "csv").exists() and ("STAND-IN" in title or name == "table3_curvature"), name
    t1 = pd.read_csv(L.table("table1_fd_vs_nfe"))
    rows = t1[~t1["model"].str.startswith("real")]
    assert set(rows["model"]) == set(p["models"]) and "paper_cifar10_fid" in t1
    assert len(rows) == len(p["models"]) * len(p["sample"]["steps"]) * len(p["sample"]["rho"]) * 3  # 2 seeds + mean
    per_seed = rows[rows["train_seed"].astype(str) != "mean"]
    assert (per_seed["seeds"] == 3).all()  # the multi-seed protocol: the mean over three sampling seeds
    t2 = pd.read_csv(L.table("table2_guidance"))
    assert {"EDM + DG", "AOT + AOT-DG", "AOT + DG"} <= set(t2["method"]) and set(t2["conditional"]) == {True, False}
    t3 = pd.read_csv(L.table("table3_curvature"))
    assert set(t3["model"]) >= set(p["models"])
    metrics = json.loads(L.metrics.read_text())
    assert "stand-in" in metrics["feature_network"] and not any(".fid_" in k or k.startswith("fid") for k in metrics)
    assert json.loads(L.fd_floor.read_text())["features"] == metrics["feature_network"]
    assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    for name in FIGURE_NAMES:
        assert L.figure(name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    # The paper's protocol (cifar10's, kept by the rehearsal): the headline is FD against the training statistics,
    # named in every FD table's title; each cell the minimum over three sampling seeds beside the mean; Table 2
    # holds the unconditional AOT + AOT-DG row at NFE 29; conditional DG boosts; DG's discriminator training.
    head = "fd: against the training set's statistics"
    assert f"## Headline: {head}; mean over 2 training seeds of each: min over 3 sampling seeds" in \
        L.table("table1_fd_vs_nfe", "md").read_text()
    for name in ("table1_fd_vs_nfe", "table2_guidance", "aot_vs_edm"):
        assert head in L.table(name, "md").read_text().split("\n")[0], name
    assert {"fd_min", "fd_heldout_min"} <= set(per_seed.columns) and per_seed["fd_min"].notna().all()
    assert (per_seed["fd_min"] <= per_seed["fd"] + 1e-12).all()
    aot_dg = t2[(t2["method"] == "AOT + AOT-DG") & (t2["nfe"] == 29)]
    assert set(aot_dg["conditional"]) == {True, False} and aot_dg["paper_cifar10_fid"].notna().all()
    assert (t2["boosting"] == t2["conditional"]).all() and {"fd_guided_min", "fd_unguided_min"} <= set(t2.columns)
    assert log.count("DG's boosting") == sum(p["models"][d["model"]]["conditional"]
                                             for d in p["guidance"]["discriminators"].values())
    assert "DG's protocol: 1 epochs of 200 real + 40 fake images = 30 steps" in log
    assert any(k.startswith("aot_vs_edm.") and ".fd_rho" in k for k in metrics)
    comparison = pd.read_csv(L.table("paper_comparison"))
    assert len(comparison) >= 10 and comparison["protocol_differs"].str.contains("features: a classifier's").all()
    # calibration: the stand-in pickles at their papers' settings, beside the published numbers
    calib = pd.read_csv(L.table("calibration"))
    assert list(calib["network"]) == ["edm_uncond", "aot_cond"]  # the two with a pickle named
    assert list(zip(calib["steps"], calib["rho"])) == [(18, 7.0), (15, 72.0)]
    assert list(calib["paper_fid"]) == [1.97, 1.73] and (calib["seeds"] == 3).all()
    assert (calib["fid_min"] <= calib["fid_mean"]).all() and not calib["within_tolerance"].any()
    assert "NOT the papers' protocol" in L.table("calibration", "md").read_text().split("\n")[0]

    # Nothing left to plan at either door.
    again = run(["snakemake", "-n", "all", "calibrate"], proj)
    assert "Nothing to be done" in again.stdout + again.stderr
    dry = run(["dvc", "repro", "--dry"], proj).stdout
    assert not re.findall(r"^> aot-diffusion", dry, re.M) and "Running stage" not in dry
