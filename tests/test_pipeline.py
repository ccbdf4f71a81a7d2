"""The pipeline: Snakefile and dvc.yaml describe the same DAG, and the smoke profile runs end to end
through both front doors in a temporary copy of the repository, with its outputs checked."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ["fid_vs_nfe", "rho_steps_heatmap", "curvature_vs_sigma", "truncation_vs_nfe", "guidance_fid_vs_nfe", "samples_low_nfe",
           "samples_high_nfe", "loss_curves", "teaser_denoiser_strip"]


def copy_repo(dst: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    run(["git", "init", "-q"], dst)  # DVC works inside a Git repository
    return dst


def run(cmd, cwd, check=True, timeout=900):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def _norm_cmd(cmd: str) -> str:
    return re.sub(r"--threads \d+", "--threads N", " ".join(cmd.split()))


def snakemake_jobs(cwd, profile="smoke"):
    out = run(["snakemake", "-n", "-F", "-p", "--config", f"profile={profile}"], cwd).stdout
    jobs = {}
    for block in re.split(r"\n(?=\[.*\]\nrule )", out):
        m = re.search(r"^rule (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue
        wc = re.search(r"wildcards: \w+=(\w+)", block)
        name = m.group(1) + (f"@{wc.group(1)}" if wc else "")
        inputs = re.search(r"input: (.*)", block)
        jobs[name] = dict(
            cmd=_norm_cmd(re.search(r"Shell command: (.*)", block).group(1)),
            deps=set(inputs.group(1).split(", ")) if inputs else set(),
            outs=set(re.search(r"output: (.*)", block).group(1).split(", ")),
        )
    return jobs


def dvc_stages(cwd, profile="smoke"):
    from dvc.repo import Repo

    params = cwd / "params.yaml"
    p = yaml.safe_load(params.read_text())
    p["profile"] = profile
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    stages = {}
    with Repo(str(cwd)) as repo:
        for st in repo.index.stages:
            if not getattr(st, "cmd", None):
                continue
            rel = lambda o: str(Path(o.fs_path).relative_to(cwd))
            stages[st.name] = dict(cmd=_norm_cmd(st.cmd), deps={rel(d) for d in st.deps} - {"params.yaml"}, outs={rel(o) for o in st.outs})
    return stages


def test_snakefile_and_dvc_yaml_describe_the_same_dag(tmp_path):
    proj = copy_repo(tmp_path)
    smk, dvc = snakemake_jobs(proj), dvc_stages(proj)
    assert set(smk) == set(dvc), f"stages differ: {set(smk) ^ set(dvc)}"
    for name in smk:
        assert smk[name]["cmd"] == dvc[name]["cmd"], name
        assert smk[name]["outs"] == dvc[name]["outs"], name
        # dvc may depend on a directory holding the Snakemake inputs.
        expanded = {d for d in smk[name]["deps"] if not any(d.startswith(x + "/") for x in dvc[name]["deps"])}
        covered = {x for x in dvc[name]["deps"] if any(d.startswith(x + "/") for d in smk[name]["deps"])}
        assert expanded | covered == dvc[name]["deps"], name
    kinds = {n.split("@")[0] for n in smk}
    assert kinds >= {"prepare_data", "train_classifier", "train", "sample", "fid", "curvature", "fake_samples",
                     "train_discriminator", "guided_sample", "guided_fid", "tables", "figures"}


def check_outputs(proj: Path, params_models):
    t1 = pd.read_csv(proj / "results/tables/table1_fid_vs_nfe.csv")
    assert set(t1["model"]) == set(params_models)
    assert len(t1) == len(params_models) * 4  # smoke: 2 steps x 2 rho
    assert t1[["fid_min", "fid_mean", "fid_std"]].notna().all().all()
    assert (t1["fid_min"] > 0).all() and (t1["fid_min"] <= t1["fid_mean"] + 1e-12).all()
    assert (t1["seeds"] == 3).all()
    t3 = pd.read_csv(proj / "results/tables/table3_curvature.csv")
    assert set(t3["model"]) == set(params_models)
    trunc = [c for c in t3.columns if c.startswith("trunc_err")]
    assert trunc and t3[["curvature_mean", *trunc]].notna().all().all()
    assert ((t3["curvature_mean"] >= 0) & (t3["curvature_mean"] <= 2)).all()
    assert "| model" in (proj / "results/tables/table1_fid_vs_nfe.md").read_text()
    t2 = pd.read_csv(proj / "results/tables/table2_guidance.csv")
    methods = set(t2["method"])
    assert {"EDM", "EDM + DG", "AOT", "AOT + AOT-DG", "AOT + DG"} <= methods
    assert t2["fid_min"].notna().all() and (t2["fid_min"] > 0).all()
    guided = t2[t2["discriminator"] != "-"]
    assert (guided["disc_grad_evals"] > 0).all() and guided["disc_heldout_accuracy"].between(0, 1).all()
    metrics = json.loads((proj / "results/metrics.json").read_text())
    assert 0 <= metrics["classifier_test_accuracy"] <= 1
    for name in FIGURES:
        png = (proj / "figures" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name


@pytest.mark.slow
def test_smoke_profile_through_snakemake(tmp_path):
    proj = copy_repo(tmp_path)
    run(["snakemake", "--cores", "2", "--config", "profile=smoke"], proj)
    check_outputs(proj, yaml.safe_load((proj / "params.yaml").read_text())["models"])
    again = run(["snakemake", "--cores", "2", "--config", "profile=smoke", "-n"], proj)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_smoke_profile_through_dvc_repro(tmp_path):
    proj = copy_repo(tmp_path)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    p["profile"] = "smoke"
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run(["dvc", "repro"], proj)
    check_outputs(proj, p["models"])
    again = run(["dvc", "repro"], proj)
    assert "Running stage" not in again.stdout
    status = run(["dvc", "status"], proj).stdout
    assert "changed" not in status


@pytest.mark.parametrize("edit,match", [
    (("profile", "nonesuch"), "profile"),
    (("sample.steps", [1, 4]), "sample.steps"),
    (("train.pool_size", 16), "train.pool_size"),
    (("train.total_steps", "many"), "train.total_steps"),
])
def test_bad_parameters_stop_before_any_stage(tmp_path, edit, match):
    proj = copy_repo(tmp_path)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    key, value = edit
    node = p
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    node[last] = value
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = run(["snakemake", "--cores", "1", "-n"], proj, check=False)
    assert out.returncode != 0
    assert match in out.stdout + out.stderr
    assert not (proj / "results").exists()


def test_missing_parameter_is_named(tmp_path):
    proj = copy_repo(tmp_path)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    del p["sample"]["rho"]
    (proj / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = run(["aot-diffusion", "check-params"], proj, check=False)
    assert out.returncode == 2 and "sample.rho" in out.stderr
