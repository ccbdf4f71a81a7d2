"""The pipeline: one stage table drives both front doors (Snakemake rules, generated dvc.yaml); the smoke
profile runs end to end in a temporary copy of the repository, with its outputs and shared state checked."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from aot_diffusion.dag import POOL_STUDY_DVC, dvc_yaml, pool_study_dvc_yaml
from aot_diffusion.layout import FIGURE_NAMES, Layout
from aot_diffusion.params import compose

ROOT = Path(__file__).resolve().parents[1]


def copy_repo(dst: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("results/", "figures/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    run(["git", "init", "-q"], dst)
    run(["git", "config", "user.email", "test@example.invalid"], dst)  # DVC experiments commit too
    run(["git", "config", "user.name", "pipeline test"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dst)
    return dst


def run(cmd, cwd, check=True, timeout=1200):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def test_dvc_yaml_is_generated_from_the_stage_table():
    p = compose(root=ROOT)
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(p)
    assert (ROOT / POOL_STUDY_DVC).read_text() == pool_study_dvc_yaml(p)


def snakemake_commands(cwd, *config, target=()):
    out = run(["snakemake", "-n", "-F", "-p", *target, "--config", *config], cwd).stdout
    return sorted(re.findall(r"^Shell command: (aot-diffusion [^\n]*)$", out, re.M))


def dvc_commands(cwd, *targets):
    out = run(["dvc", "repro", "--dry", "-f", *targets], cwd).stdout
    return sorted(re.findall(r"^> (aot-diffusion [^\n]*)$", out, re.M))


@pytest.mark.parametrize("profile", ["digits", "smoke", "cifar10"])
def test_both_front_doors_plan_the_same_commands(tmp_path, profile):
    proj = copy_repo(tmp_path)
    run(["aot-diffusion", "params", "--profile", profile], proj)
    smk, dvc = snakemake_commands(proj, f"profile={profile}"), dvc_commands(proj)
    assert smk and smk == dvc
    assert len(smk) == 45 and not any("--variant" in c for c in smk)  # the pool-size study is not in `all`


def test_pool_study_is_its_own_target_at_both_front_doors(tmp_path):
    """Not part of `all` / `dvc repro`; its own target plans the same commands at both doors (data and FD
    reference from the main DAG, then train / sample / fd / curvature per variant and the report)."""
    proj = copy_repo(tmp_path)
    variants = compose(root=ROOT)["pool_study"]["variants"]
    smk = snakemake_commands(proj, "profile=digits", target=["pool_study"])
    assert smk == dvc_commands(proj, str(POOL_STUDY_DVC))
    assert len(smk) == 3 + 4 * len(variants) + 1 and "aot-diffusion pool-study" in smk
    assert all(f"aot-diffusion train --variant {v}" in smk for v in variants)


def test_front_doors_refuse_to_run_at_once(tmp_path):
    """Snakemake does not start while DVC holds its lock; a stage run by DVC stops while Snakemake runs."""
    import os

    proj = copy_repo(tmp_path)
    rwlock = proj / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    rwlock.write_text(json.dumps({"read": {}, "write": {"dvc.yaml": {"pid": os.getpid(), "cmd": "dvc repro"}}}))
    out = run(["snakemake", "--cores", "1", "check_params"], proj, check=False)
    assert out.returncode != 0 and "refusing to start: `dvc repro`" in out.stdout + out.stderr
    assert not (proj / "results").exists()
    rwlock.unlink()
    locks = proj / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("")
    env = dict(os.environ, DVC_STAGE="check_params")  # what DVC sets for the commands of its stages
    out = subprocess.run(["aot-diffusion", "check-params"], cwd=proj, capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "refusing to run under DVC: Snakemake is running" in out.stdout + out.stderr
    assert not (proj / "results").exists()


def test_a_stage_run_by_dvc_drops_snakemakes_records_of_its_outputs(tmp_path, monkeypatch):
    import base64

    from aot_diffusion.frontdoors import forget_snakemake_records

    p = compose("smoke", root=ROOT)
    L = Layout("smoke")
    meta = tmp_path / ".snakemake" / "metadata"
    meta.mkdir(parents=True)
    mine = [L.fd("edm_uncond"), L.features("edm_uncond"), L.pool_study.fd("pool128")]
    other = L.fd("aot_uncond")
    for path in [*mine, other]:
        (meta / base64.urlsafe_b64encode(str(path).encode()).decode()).write_text("{}")
    monkeypatch.setenv("DVC_STAGE", "fd@edm_uncond")
    assert len(forget_snakemake_records(p, tmp_path)) == 2
    monkeypatch.setenv("DVC_STAGE", "workflow/pool_size/dvc.yaml:pool_fd@pool128")
    assert len(forget_snakemake_records(p, tmp_path)) == 1
    assert [f.name for f in meta.iterdir()] == [base64.urlsafe_b64encode(str(other).encode()).decode()]
    monkeypatch.delenv("DVC_STAGE")  # run by Snakemake or by hand: records stay
    assert forget_snakemake_records(p, tmp_path) == []


def test_typo_in_params_stops_both_front_doors_naming_it(tmp_path):
    proj = copy_repo(tmp_path)
    text = (proj / "params.yaml").read_text().replace("  pool_size: 512", "  pool_sise: 512", 1)
    (proj / "params.yaml").write_text(text)
    out = run(["snakemake", "-n"], proj, check=False)
    assert out.returncode != 0 and "pool_sise" in out.stdout + out.stderr
    out = run(["dvc", "repro", "--dry"], proj, check=False)
    assert out.returncode != 0 and "train.pool_size" in out.stdout + out.stderr
    assert not (proj / "results").exists()


def check_outputs(proj: Path, p):
    L = Layout("smoke", proj)
    t1 = pd.read_csv(L.table("table1_fd_vs_nfe"))
    floor = t1[t1["model"].str.startswith("real")]
    assert len(floor) == 1 and floor["fd"].iloc[0] > 0
    rows = t1[~t1["model"].str.startswith("real")]
    assert set(rows["model"]) == set(p["models"]) and len(rows) == len(p["models"]) * 4  # 2 steps x 2 rho
    assert ((rows["fd_low"] <= rows["fd"]) & (rows["fd"] <= rows["fd_high"])).all()
    t2 = pd.read_csv(L.table("table2_guidance"))
    assert {"EDM + DG", "AOT + AOT-DG", "AOT + DG"} <= set(t2["method"])
    assert (t2["disc_grad_evals"] > 0).all() and t2["outside_noise"].isin([True, False]).all()
    metrics = json.loads(L.metrics.read_text())
    assert "fd_floor" in metrics and "edm_uncond.fd_rho7_nfe3" in metrics and "aot_vs_edm.uncond.rho7_nfe3" in metrics
    assert not any(k.startswith("fid") or ".fid_" in k for k in metrics)  # offline: FD, never FID
    for disc in p["guidance"]["discriminators"]:
        assert set(metrics[f"{disc}.heldout_accuracy_by_sigma"]) == {"<0.1", "0.1-1", "1-10", ">10"}
    for name in FIGURE_NAMES:
        png = L.figure(name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name


def planned_jobs(out: str) -> dict:
    table = re.search(r"Job stats:\n(.*?)\n\n", out, re.S)
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table.group(1), re.M)} if table else {}


@pytest.mark.slow
def test_smoke_profile_end_to_end_and_shared_state(tmp_path):
    proj = copy_repo(tmp_path)  # a DVC repository already (.dvc/config, with hydra.enabled, is tracked)
    assert "enabled = true" in (proj / ".dvc" / "config").read_text()
    out = run(["snakemake", "--cores", "2", "--config", "profile=smoke", "train={pool_size: 32}"], proj)
    p = yaml.safe_load((proj / "params.yaml").read_text())
    assert p["profile"] == "smoke" and p["train"]["pool_size"] == 32  # the override reached params.yaml...
    assert "[train aot_uncond] aot=True conditional=False steps=6 batch=32 pool=32" in out.stdout + out.stderr
    check_outputs(proj, p)
    # The pool-size study, its own target on top of the main run's data and FD reference.
    out = run(["snakemake", "--cores", "2", "pool_study"], proj)
    assert "[train pool_study pool8192] aot=True conditional=False steps=6 batch=32 pool=8192" in out.stdout + out.stderr
    study = pd.read_csv(Layout("smoke", proj).pool_study.study_table())
    assert list(study["variant"]) == list(p["pool_study"]["variants"])
    assert study[[c for c in study.columns if c.startswith("fd_nfe")]].notna().all().all()
    assert Layout("smoke", proj).pool_study.study_figure.read_bytes()[:4] == b"\x89PNG"
    assert "up to date" in run(["dvc", "status"], proj).stdout  # both Snakemake runs are recorded in dvc.lock
    again = run(["snakemake", "-n"], proj)
    assert "Nothing to be done" in again.stdout + again.stderr
    # A guidance weight reruns only the guided runs of the unconditional models, and the report.
    out = run(["snakemake", "-n", "--config", "guidance={weight_uncond: 3.0}"], proj).stdout
    assert planned_jobs(out) == {"check_params": 1, "guided_sample": 3, "guided_fd": 3, "tables": 1, "figures": 1,
                                 "all": 1, "total": 10}
    # DVC experiments keep their own metrics: an experiment with another confidence level (reruns only the
    # scoring stages and the report) beside the committed Snakemake run (the baseline row of `dvc exp show`).
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run([*git, "add", "-A"], proj)
    run([*git, "commit", "-qm", "smoke run"], proj)
    run(["dvc", "exp", "run", "-S", "profile=smoke", "-S", "train.pool_size=32", "-S", "fd.ci_level=0.8",
         "-n", "narrow"], proj)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], proj).stdout)
    rows, params = {}, {}
    for commit in shown:
        if commit.get("rev") != "workspace":
            rows["base"] = commit["data"]["metrics"]["results/smoke/metrics.json"]["data"]
            params["base"] = commit["data"]["params"]["params.yaml"]["data"]
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                rows[exp.get("name") or data.get("name")] = data["metrics"]["results/smoke/metrics.json"]["data"]
                params[exp.get("name") or data.get("name")] = data["params"]["params.yaml"]["data"]
    assert {"base", "narrow"} <= set(rows)
    for name in ("base", "narrow"):  # composed by Hydra: the override beats the smoke profile's pool of 64
        assert params[name]["profile"] == "smoke" and params[name]["train"]["pool_size"] == 32
    assert params["narrow"]["fd"]["ci_level"] == 0.8 and params["base"]["fd"]["ci_level"] == 0.95
    width = {name: rows[name]["edm_uncond.fd_rho7_nfe3_ci"]["high"] - rows[name]["edm_uncond.fd_rho7_nfe3_ci"]["low"]
             for name in ("base", "narrow")}
    assert width["narrow"] < width["base"]
    assert rows["narrow"]["edm_uncond.fd_rho7_nfe3"] == rows["base"]["edm_uncond.fd_rho7_nfe3"]
    # DVC reran the scoring stages with another ci_level: Snakemake's records of them were dropped, so it
    # judges them by time and plans nothing (instead of rerunning them for its stale parameters).
    again = run(["snakemake", "-n"], proj)
    assert "Nothing to be done" in again.stdout + again.stderr
    # Profiles keep their own outputs; the report lists tables and figures.
    assert not (proj / "results" / "digits").exists()
    run(["snakemake", "--report", "report.html"], proj)
    html = (proj / "report.html").read_text(errors="replace")
    assert "table1_fd_vs_nfe" in html and "fd_vs_nfe" in html
