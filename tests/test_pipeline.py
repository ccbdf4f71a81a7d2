"""The pipeline: one stage table drives both front doors (Snakemake rules, generated dvc.yaml); the smoke
profile runs end to end in a temporary copy of the repository, with its outputs and shared state checked."""

import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from aot_diffusion.dag import POOL_STUDY_DVC, POOL_STUDY_STAGES, STAGES, Plan, job_id, keys_of, stage
from aot_diffusion.layout import FIGURE_NAMES, Layout
from aot_diffusion.params import load_params

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
    # a copy of the project runs its own code (its src/ before the installed package), so editing it there
    # is an edit of what its jobs run
    env = dict(os.environ)
    if (Path(cwd) / "src" / "aot_diffusion").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(cwd) / "src"), env.get("PYTHONPATH")]))
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def snakemake_commands(cwd, *config, target=()):
    out = run(["snakemake", "-n", "-F", "-p", *target, "--config", *config], cwd).stdout
    # each rule's command, without what every rule adds (its output copied to its log: `2>&1 | tee <log>`)
    found = re.findall(r"^Shell command: (aot-diffusion [^\n]*?) 2>&1 \| tee logs/[\w/@.']+$", out, re.M)
    assert len(found) == out.count("Shell command: aot-diffusion "), "a command is not `<command> 2>&1 | tee <log>`"
    return sorted(found)


def dvc_commands(cwd, *targets):
    out = run(["dvc", "repro", "--dry", "-f", *targets], cwd).stdout
    return sorted(re.findall(r"^> (aot-diffusion [^\n]*)$", out, re.M))


def check_outputs(proj: Path, p):
    L = Layout("smoke", proj)
    t1 = pd.read_csv(L.table("table1_fd_vs_nfe"))
    floor = t1[t1["model"].str.startswith("real")]
    assert len(floor) == 1 and floor["fd"].iloc[0] > 0
    rows = t1[~t1["model"].str.startswith("real")]
    # per trained model and setting (2 steps x 2 rho), and the mean over the training seeds where there are several
    several = len(p["train"]["seeds"]) > 1
    assert set(rows["model"]) == set(p["models"]) and len(rows) == len(p["models"]) * 4 * (len(p["train"]["seeds"]) + several)
    seeds = set(rows["train_seed"].map(lambda v: v if v == "mean" else str(int(float(v)))))
    assert seeds == {*map(str, p["train"]["seeds"]), *(["mean"] if several else [])}
    assert ((rows["fd_low"] <= rows["fd"]) & (rows["fd"] <= rows["fd_high"])).all()
    t2 = pd.read_csv(L.table("table2_guidance"))
    assert {"EDM + DG", "AOT + AOT-DG", "AOT + DG"} <= set(t2["method"])
    assert (t2["disc_grad_evals"] > 0).all() and t2["outside_noise"].isin([True, False]).all()
    metrics = json.loads(L.metrics.read_text())
    assert "floor.fd" in metrics and "edm_uncond.nn_train_dist_rho7_nfe5" in metrics
    assert {"aot_vs_edm.uncond.fd_heldout_rho90_nfe5", "aot_vs_edm.cond.fd_heldout_rho7_nfe3"} <= set(metrics)
    across = f"hierarchical bootstrap over {len(p['train']['seeds'])} training seeds" if several else "bootstrap"
    assert f"EDM minus AOT: {across}" in metrics["intervals"] and "two-sample" in metrics["intervals"]
    # DG at every setting where it is evaluated (the paper's own among them), with the learning curves
    assert {(int(r.steps), float(r.rho)) for r in t2[~t2["conditional"]].itertuples()} == {(2, 7.0), (3, 7.0), (3, 90.0)}
    assert all(pd.read_csv(L.discriminator_curve(d))["val_bce"].notna().all() for d in p["guidance"]["discriminators"])
    hybrid = pd.read_csv(L.table("hybrid_switch"))
    assert set(hybrid["switch_sigma"].astype(str)) == {"pure", "2"} and hybrid["fd_heldout"].notna().all()
    assert "dg_edm_uncond.gain_fd_heldout_rho90_nfe5" in metrics  # the paper's setting
    assert not any(k.startswith("fid") or ".fid_" in k for k in metrics)  # offline: FD, never FID
    # Headline against held-out statistics, with its own floor, and the memorisation measure beside the real one.
    assert rows["fd_heldout"].notna().all() and floor["fd_heldout"].notna().all()
    assert ((rows["fd_heldout_low"] <= rows["fd_heldout"]) & (rows["fd_heldout"] <= rows["fd_heldout_high"])).all()
    assert {"floor.fd_heldout", "floor.nn_train_dist", "edm_uncond.nn_train_dist_rho7_nfe5"} <= set(metrics)
    for name in FIGURE_NAMES:
        png = L.figure(name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name


def planned_jobs(out: str) -> dict:
    """Snakemake's job stats per stage (its rules are named as DVC names the jobs: stage@key)."""
    table = re.search(r"Job stats:\n(.*?)\n\n", out, re.S)
    counts = {}
    for m in re.finditer(r"^([\w@]+)\s+(\d+)$", table.group(1) if table else "", re.M):
        name = m.group(1).partition("@")[0]
        counts[name] = counts.get(name, 0) + int(m.group(2))
    return counts


GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
BOTH = ("dvc.yaml", str(POOL_STUDY_DVC))  # DVC's targets for the main DAG and the pool-size study


PLUGINS = Path(__file__).parent / "fixtures" / "plugins"
TOY_PLUGINS = {"pairings": "toy_sorted", "metrics": "toy_brightness"}


def add_toy_plugins(proj: Path) -> None:
    """What docs/extending.md tells a researcher to do: a plugin file each, named in the profile, and study
    variants that pair with the toy pairing and with the Sinkhorn plugin of plugins/ (its option `reg`)."""
    for kind, name in TOY_PLUGINS.items():
        shutil.copy(PLUGINS / kind / f"{name}.py", proj / "plugins" / kind / f"{name}.py")
    with open(proj / "conf" / "profile" / "smoke.yaml", "a") as fh:
        fh.write("plugins: {pairings: [toy_sorted, sinkhorn], metrics: [toy_brightness]}\n"
                 "pool_study: {variants: {toy32: {pairing: toy_sorted, pool_size: 32},\n"
                 "                        sinkhorn32: {pairing: sinkhorn, pool_size: 32, pairing_options: {reg: 0.05}}}}\n")


SMOKE_POOL = 32  # the fixture's override; every later door step composes params from conf/ and repeats it


LARGEST_POOL = "    pool8192: {pairing: assignment, pool_size: 8192}\n"


def smaller_smoke_dag(proj: Path) -> None:
    """The shared smoke run trains each model once and the study has no 8192 pool (suite budget: its exact
    assignment alone costs half a minute): train.seeds [0] and the variant removed in the copy's conf/ (the DAG's
    shape, so dvc.yaml is regenerated, as a researcher would). Several training seeds and their intervals are
    the rehearsal's subject (tests/test_rehearsal.py) and tests/test_report.py's; pools up to 8192 the
    pairing benchmark's (benchmarks/pairing.py)."""
    for conf in (proj / "conf" / "config.yaml", proj / "conf" / "profile" / "smoke.yaml"):
        text = conf.read_text()
        head, sep, rest = text.partition("\ntrain:\n")
        assert sep and "  seeds: [0, 1]" in rest, conf
        text = head + sep + rest.replace("  seeds: [0, 1]", "  seeds: [0]", 1)
        conf.write_text(text.replace(LARGEST_POOL, "") if conf.name == "config.yaml" else text)
    assert LARGEST_POOL not in (proj / "conf" / "config.yaml").read_text()
    run(["aot-diffusion", "dvc-yaml"], proj)


@pytest.fixture(scope="module")
def smoke_tree(tmp_path_factory):
    """One smoke run shared by the end-to-end tests of this module (they run in file order): the default
    target with an override, then the pool-size study, committed to git."""
    proj = copy_repo(tmp_path_factory.mktemp("smoke"))  # a DVC repository already (.dvc/config: hydra.enabled)
    assert "enabled = true" in (proj / ".dvc" / "config").read_text()
    add_toy_plugins(proj)
    smaller_smoke_dag(proj)
    out = run(["snakemake", "--cores", "2", "--config", *_overrides({"train.pool_size": SMOKE_POOL})[0]], proj)
    assert "up to date" in run(["dvc", "status"], proj).stdout  # a bare status: nothing of a study not asked for
    study = run(["snakemake", "--cores", "2", "pool_study"], proj)
    assert f"{POOL_STUDY_DVC}: written (the pool-size study ran)" in study.stdout + study.stderr
    run([*GIT, "add", "-A"], proj)
    run([*GIT, "commit", "-qm", "smoke run"], proj)
    return proj, out.stdout + out.stderr, study.stdout + study.stderr


@pytest.mark.slow
def test_smoke_profile_end_to_end(smoke_tree):
    """Every stage ran under its declared-parameters view (an undeclared read would have failed the run)."""
    proj, log, study_log = smoke_tree
    p = yaml.safe_load((proj / "params.yaml").read_text())
    assert p["profile"] == "smoke" and p["train"]["pool_size"] == SMOKE_POOL  # the override reached params.yaml...
    assert p["train"]["seeds"] == [0] and "pool8192" not in p["pool_study"]["variants"]  # smaller_smoke_dag
    assert "[train aot_uncond_s0] pairing=assignment conditional=False steps=6 batch=32 pool=32" in log  # ...the stage
    check_outputs(proj, p)
    assert "[train pool_study pool2048] pairing=assignment conditional=False steps=6 batch=32 pool=2048" in study_log
    study = pd.read_csv(Layout("smoke", proj).pool_study.study_table())
    assert list(study["variant"]) == list(p["pool_study"]["variants"])
    assert study[[c for c in study.columns if c.startswith("fd_nfe")]].notna().all().all()
    assert Layout("smoke", proj).pool_study.study_figure.read_bytes()[:4] == b"\x89PNG"
    # Every job left its parameter record, with the values it read.
    plan = Plan(p, proj)
    for st in STAGES + POOL_STUDY_STAGES:
        for key in keys_of(st, plan.ctx):
            assert plan.is_current(st, key), job_id(st, key)
    record = json.loads((proj / plan.record_path(stage("train"), "aot_uncond_s0")).read_text())
    assert record["params"]["train.pool_size"] == 32 and record["params"]["models.aot_uncond"]["pairing"] == "assignment"
    assert "up to date" in run(["dvc", "status", *BOTH], proj).stdout  # both Snakemake runs are in dvc.lock
    assert "Nothing to be done" in snakemake_plan(proj)
    # Only what reads a parameter reruns: a guidance weight -> the unconditional guided runs and the report;
    # the sampler's sigma_max -> everything that samples, the DG fakes and discriminators among them.
    # (each --config composes from conf/, as `dvc exp run -S` does: the baseline's own override is repeated)
    # (the counts from the parameters: the discriminators that guide an unconditional model, the guided models)
    uncond = sum(not p["models"][d["model"]]["conditional"] for d in p["guidance"]["discriminators"].values())
    assert planned_jobs(snakemake_plan(proj, *_overrides({"train.pool_size": SMOKE_POOL,
                                                          "guidance.weight_uncond": 3.0})[0])) == {
        "check_params": 1, "guided_sample": uncond, "guided_fd": uncond, "tables": 1, "figures": 1, "all": 1,
        "total": 4 + 2 * uncond}
    planned = planned_jobs(snakemake_plan(proj, *_overrides({"train.pool_size": SMOKE_POOL, "sample.sigma_max": 60.0})[0]))
    assert planned["fake_samples"] == len(plan.ctx.guided_models()) and "train" not in planned
    assert planned["train_discriminator"] == len(plan.ctx.discs)


@pytest.mark.slow
def test_a_plugin_pairing_and_metric_run_through_the_smoke_run(smoke_tree):
    """Two plugin files, two lines of config: the toy pairing is trained, sampled and scored in the pool-size
    study; the toy metric has its floor, its column in Table 1 and the study, and its keys in metrics.json.
    Editing a plugin reruns what imports it, and only that."""
    proj, log, study_log = smoke_tree
    p = load_params(proj / "params.yaml")
    L = Layout("smoke", proj)
    assert "[train pool_study toy32] pairing=toy_sorted conditional=False steps=6 batch=32 pool=32" in study_log
    assert "[train pool_study sinkhorn32] pairing=sinkhorn reg=0.05 conditional=False" in study_log  # its option
    study = pd.read_csv(L.pool_study.study_table())
    toy = study[study["variant"] == "toy32"].iloc[0]
    assert toy["pairing"] == "toy_sorted" and np.isfinite(toy[["fd_nfe3", "gain_nfe3", "curvature_mean"]].astype(float)).all()
    sinkhorn = study[study["variant"] == "sinkhorn32"].iloc[0]
    assert sinkhorn["pairing"] == "sinkhorn" and np.isfinite(sinkhorn[["fd_nfe3", "curvature_mean"]].astype(float)).all()
    assert toy["toy_brightness_nfe3_low"] <= toy["toy_brightness_nfe3"] <= toy["toy_brightness_nfe3_high"]
    record = json.loads((proj / Plan(p, proj).record_path(stage("pool_train"), "toy32")).read_text())
    assert record["params"]["pool_study.variants.toy32"]["pairing"] == "toy_sorted"
    assert list(record["plugins"]) == ["plugins/pairings/toy_sorted.py"]  # its own pairing only
    # the toy metric: floor row, every model's rows, metrics.json
    t1 = pd.read_csv(L.table("table1_fd_vs_nfe"))
    assert t1["toy_brightness"].notna().all() and ((t1["toy_brightness_low"] <= t1["toy_brightness"])
                                                   & (t1["toy_brightness"] <= t1["toy_brightness_high"])).all()
    floor = t1[t1["model"].str.startswith("real")].iloc[0]
    assert abs(floor["toy_brightness"]) < 0.1  # held-out digits are about as bright as the training digits
    metrics = json.loads(L.metrics.read_text())
    assert {"value", "interval"} == set(metrics["floor.toy_brightness"])
    assert {"value", "interval"} == set(metrics["aot_cond.toy_brightness_rho7_nfe5"])
    assert "edm_uncond.toy_brightness_rho7_nfe5" in metrics
    assert "toy_brightness" in pd.read_csv(L.hybrid_fd).columns and "toy_brightness" in pd.read_csv(L.guided_fd(
        next(iter(p["guidance"]["discriminators"])))).columns  # every caller scores through one registry
    # an edit reruns what uses the file: a metric plugin rescoring, a pairing plugin retraining its one user
    for kind, name in TOY_PLUGINS.items():
        with edited(proj, f"plugins/{kind}/{name}.py", "EDITED = 1\n"):
            planned = planned_jobs(snakemake_plan(proj, targets=("all", "pool_study")))
            stale = dvc_changed(proj)
        if kind == "metrics":
            assert {"fd_reference", "fd", "guided_fd", "hybrid", "tables", "pool_fd", "pool_study"} <= set(planned)
            assert not {"train", "pool_train", "sample", "train_discriminator"} & set(planned), planned
        else:  # the variant that pairs with it (from step 0: no checkpoint outlives a finished training)
            assert {k: planned.get(k) for k in ("pool_train", "pool_sample", "pool_fd", "pool_curvature")} == dict.fromkeys(
                ("pool_train", "pool_sample", "pool_fd", "pool_curvature"), 1) and "train" not in planned, planned
            assert not list((proj / "results" / "smoke").rglob("checkpoint*.pt"))
            assert "pool_train@toy32" in stale and not any(j.startswith("train@") for j in stale), stale
    assert "Nothing to be done" in snakemake_plan(proj, targets=("all", "pool_study"))  # the original content again


SAMPLING, FIGURES = "src/aot_diffusion/sampling.py", "src/aot_diffusion/report/figures.py"
NEVER_SAMPLES = {"prepare_data", "feature_network", "fd_reference", "train", "train_encoder", "pool_train"}


@pytest.mark.slow
def test_a_code_edit_reruns_what_runs_that_code_at_both_doors(smoke_tree):
    """What reruns when (README): a sampler edit reruns sampling and all downstream and no training, a figure
    edit the figures only, a docstring nothing at the Snakemake door; DVC names the edited file."""
    proj = smoke_tree[0]
    with edited(proj, SAMPLING, "\n_EDITED = 1\n"):
        planned = planned_jobs(snakemake_plan(proj, targets=("all", "pool_study")))
        stale = dvc_changed(proj)
        status = run(["aot-diffusion", "status"], proj).stdout
    assert {"sample", "fake_samples", "train_discriminator", "guided_sample", "curvature", "hybrid", "fd", "tables",
            "figures", "pool_sample", "pool_study"} <= set(planned) and not NEVER_SAMPLES & set(planned), planned
    assert any(re.fullmatch(r"modified:\s+src/aot_diffusion/sampling.py", line) for line in stale["sample@edm_uncond_s0"])
    assert not any(j.split("@")[0] in NEVER_SAMPLES for j in stale), stale
    assert re.search(r"^sample@edm_uncond_s0\s+stale\s+code src/aot_diffusion/sampling.py$", status, re.M), status
    assert re.search(r"^tables\s+stale\s+.*upstream ", status, re.M) and not re.search(r"^train@", status, re.M)
    with edited(proj, FIGURES, "\n_EDITED = 1\n"):
        assert planned_jobs(snakemake_plan(proj)) == {"figures": 1, "all": 1, "total": 2}
        assert set(dvc_changed(proj)) == {"figures", "pool_study"}  # the study's report draws with it too
    with edited(proj, SAMPLING, docstring=True):  # not code: no digest changes (DVC hashes the file: below)
        assert "Nothing to be done" in snakemake_plan(proj, targets=("all", "pool_study"))


@pytest.mark.slow
def test_code_edits_rerun_through_either_door_and_the_other_agrees(smoke_tree):
    """Both orders on the cheapest stages (the figures, and the study's report, which draws with the same
    module): DVC reruns them after an edit (a docstring edit too: DVC hashes
    files; the figures come out byte-identical, so nothing downstream moves) and Snakemake then has nothing to do;
    Snakemake reruns them after a code edit and dvc status then agrees."""
    proj = smoke_tree[0]
    lock = (proj / "dvc.lock").read_text()
    figures = {f: f.read_bytes() for f in (proj / "figures" / "smoke").glob("*.*")}
    with edited(proj, FIGURES, docstring=True):
        out = run(["dvc", "repro", *BOTH], proj)
        assert _ran(out.stdout + out.stderr) == {"figures", "pool_study"}
        assert "Nothing to be done" in snakemake_plan(proj)
        assert {f: f.read_bytes() for f in figures} == figures  # same code: the same bytes
    with edited(proj, FIGURES, "\n_EDITED = 1\n"):
        out = run(["snakemake", "--cores", "2", "all", "pool_study"], proj)
        assert _ran(out.stdout + out.stderr) == {"figures", "pool_study"}
        assert "up to date" in run(["dvc", "status", *BOTH], proj).stdout
    run(["snakemake", "--cores", "2", "all", "pool_study"], proj)  # the original code (the figures' bytes again)
    assert "up to date" in run(["dvc", "status", *BOTH], proj).stdout
    assert {f: f.read_bytes() for f in figures} == figures


@pytest.mark.slow
def test_a_forced_retrain_after_a_loss_edit_is_a_new_network_and_reruns_are_byte_identical(smoke_tree):
    """The checkpoint of a finished training is gone, and one of other code is never resumed: a forced retrain
    after a loss.py edit trains afresh into another network; back on the original code a forced retrain (and a
    forced report) gives the committed bytes again, so dvc.lock does not move."""
    proj = smoke_tree[0]
    L, job = Layout("smoke", proj), "train@edm_uncond_s0"
    network, lock = L.network("edm_uncond_s0").read_bytes(), (proj / "dvc.lock").read_text()
    force = ["snakemake", "--cores", "2", "--forcerun", job, "--until", job]
    with edited(proj, "src/aot_diffusion/loss.py", "\n_EDITED = 1\n"):  # a new digest, the same loss
        first = run(force, proj).stdout
    with edited(proj, "src/aot_diffusion/loss.py") as path:
        path.write_text(path.read_text().replace("return loss_weight(", "return 1.5 * loss_weight(", 1))  # other numbers
        changed = run(force, proj)
        assert "resumed" not in first + changed.stdout and "step 6/6" in changed.stdout
        assert L.network("edm_uncond_s0").read_bytes() != network
    run(["snakemake", "--cores", "2", "--forcerun", job, "figures", "tables"], proj)
    assert L.network("edm_uncond_s0").read_bytes() == network
    assert (proj / "dvc.lock").read_text() == lock  # every output of the reruns hashed as before
    assert "up to date" in run(["dvc", "status", *BOTH], proj).stdout


@pytest.mark.slow
def test_a_hand_edited_output_stops_the_run_until_rebuilt_and_is_never_recorded(smoke_tree):
    proj = smoke_tree[0]
    samples = Layout("smoke", proj).samples("edm_uncond_s0")
    lock, original = (proj / "dvc.lock").read_text(), samples.read_bytes()
    arrays = dict(np.load(samples))
    key = next(iter(arrays))
    arrays[key] = np.zeros_like(arrays[key])
    with open(samples, "wb") as fh:  # in place, as an editor would
        np.savez(fh, **arrays)
    assert re.search(r"^sample@edm_uncond_s0\s+stale\s+hand edit results/smoke/samples/edm_uncond_s0.npz$",
                     run(["aot-diffusion", "status"], proj).stdout, re.M)
    for cmd in (["snakemake", "-n"], ["snakemake", "--cores", "2"]):
        out = run(cmd, proj, check=False)
        assert out.returncode and "results/smoke/samples/edm_uncond_s0.npz (job sample@edm_uncond_s0)" in out.stderr
        assert "--forcerun sample@edm_uncond_s0" in out.stderr and (proj / "dvc.lock").read_text() == lock
    assert "modified:           results/smoke/samples/edm_uncond_s0.npz" in run(["dvc", "status"], proj).stdout
    out = run(["snakemake", "--cores", "2", "--forcerun", "sample@edm_uncond_s0"], proj)
    ran = _ran(out.stdout + out.stderr)
    assert "sample@edm_uncond_s0" in ran and not any(j.startswith("train") for j in ran), ran
    assert samples.read_bytes() == original  # rebuilt, to the same bytes
    assert (proj / "dvc.lock").read_text() == lock and "up to date" in run(["dvc", "status", *BOTH], proj).stdout


@pytest.mark.slow
def test_a_changed_environment_is_said_first_and_reruns_nothing(smoke_tree):
    proj = smoke_tree[0]
    plan = Plan(load_params(proj / "params.yaml"), proj)
    path = proj / plan.record_path(stage("sample"), "edm_uncond_s0")
    original = path.read_text()
    record = json.loads(original)
    record["environment"]["torch"] = "1.0.0"
    path.write_text(json.dumps(record))
    try:
        out = snakemake_plan(proj)
        assert "Nothing to be done" in out and re.search(r"environment: 1 current result.*torch 1.0.0 -> ", out), out
        assert re.search(r"^sample@edm_uncond_s0\s+current\s+environment torch 1.0.0 -> ",
                         run(["aot-diffusion", "status"], proj).stdout, re.M)
    finally:
        path.write_text(original)


@contextlib.contextmanager
def edited(proj, rel, text="", docstring=False):
    """``rel`` with ``text`` appended (``docstring``: its first docstring reworded) while the block runs."""
    path = proj / rel
    original = path.read_text()
    path.write_text(original.replace('"""', '"""Reworded. ', 1) if docstring else original + text)
    try:
        yield path
    finally:
        path.write_text(original)


def dvc_changed(proj) -> dict:
    """`dvc status` of both pipeline files: {job: the lines DVC printed under it}."""
    out, jobs, job = run(["dvc", "status", *BOTH], proj).stdout, {}, None
    for line in out.splitlines():
        if re.match(r"^[\w@./:-]+:$", line):
            job = line[:-1].rpartition(":")[2] if ".yaml:" in line else line[:-1]
            jobs[job] = []
        elif job and line.strip():
            jobs[job].append(line.strip())
    return jobs


def snakemake_plan(proj, *config, targets=("all",)):
    out = run(["snakemake", "-n", *targets, *(("--config", *config) if config else ())], proj)
    return out.stdout + out.stderr


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _overrides(changes: dict) -> tuple[list, list]:
    """The same overrides as Snakemake --config and DVC -S arguments (full set, composed from conf/)."""
    smk, dvc = ["profile=smoke"], ["-S", "profile=smoke"]
    tree: dict = {}
    for key, value in changes.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        dvc += ["-S", f"{key}={_flow(value)}"]
    smk += [f"{k}={_flow(v)}" for k, v in tree.items()]
    return smk, dvc


def _ran(out: str) -> set:
    """Jobs a door ran: Snakemake's `rule X:` lines, DVC's `Running stage 'X'` (or, for parameters it ran
    before, its run cache: `Stage 'X' is cached - skipping run, checking out outputs`)."""
    jobs = set(re.findall(r"^(?:local)?rule ([\w@]+):$", out, re.M)) - {"all"}
    names = re.findall(r"^(?:Running stage '([^']+)'|Stage '([^']+)' is cached - skipping run)", out, re.M)
    jobs |= {(a or b).rpartition(":")[2] for a, b in names}
    return jobs


def _changed_jobs(before: dict, after: dict) -> set:
    """What the stage table says must rerun: the jobs whose record digest changed (or that are new)."""
    old, new = Plan(before), Plan(after)
    old_digests = {job_id(st, k): old.digest(st, k) for st in STAGES + POOL_STUDY_STAGES for k in keys_of(st, old.ctx)}
    return {job_id(st, k) for st in STAGES + POOL_STUDY_STAGES for k in keys_of(st, new.ctx)
            if old_digests.get(job_id(st, k)) != new.digest(st, k)}


def _door_step(proj, door: str, changes: dict, name: str | None = None) -> set:
    """Run one door with these overrides (on top of the smoke profile); check that it reran exactly the jobs
    whose declared parameters (or those upstream) changed, that every job's record is the current parameters'
    (the records name a digest of them) and that then neither door has anything to do. Returns what ran."""
    before = load_params(proj / "params.yaml")
    changes = {"train.pool_size": SMOKE_POOL} | changes  # both doors recompose from conf/: keep the baseline's
    smk, dvc = _overrides(changes)
    if door == "snakemake":
        out = run(["snakemake", "--cores", "2", "all", "pool_study", "--config", *smk], proj)
        if name:  # Snakemake's run is in dvc.lock (its final `dvc commit`): DVC can keep it as an experiment
            saved = run(["dvc", "exp", "save", "-n", name], proj)
            assert f"saved as: {name}" in saved.stdout + saved.stderr, saved.stderr[-2000:]
    else:
        out = run(["dvc", "exp", "run", *BOTH, *dvc, "-n", name], proj)
        assert "WARNING" not in out.stdout + out.stderr, out.stderr[-2000:]  # e.g. no "No file hash info" flood
    after = load_params(proj / "params.yaml")
    for key, value in changes.items():
        node = after
        for part in key.split("."):
            node = node[part]
        assert node == value, (door, key)
    expected = _changed_jobs(before, after)
    ran = _ran(out.stdout + out.stderr)
    assert ran == expected, f"{door}: missing {sorted(expected - ran)}, extra {sorted(ran - expected)}"
    plan = Plan(after, proj)
    assert all(plan.is_current(st, k) for st in STAGES + POOL_STUDY_STAGES for k in keys_of(st, plan.ctx)), door
    assert "Nothing to be done" in snakemake_plan(proj, targets=("all", "pool_study")), door
    assert "up to date" in run(["dvc", "status", *BOTH], proj).stdout, door
    return ran


# Against the committed baseline (the shared smoke run, by Snakemake), in this order: a pairing plugin's option
# (the Sinkhorn study variant's `reg`, so that one training reruns) by `dvc exp run -S`, then the sampler's rho
# grid (new headline keys) by Snakemake on both cores with that option set again on its command line, kept with
# `dvc exp save` (DVC runs stages one at a time: suite budget; a third experiment, a guidance weight, is in
# benchmarks/exp_show_columns.py). Snakemake, after DVC, retrains the variant and reruns what it feeds.
SINKHORN_REG = "pool_study.variants.sinkhorn32.pairing_options.reg"
EXPERIMENTS = {"sinkhorn": ("dvc exp run", {SINKHORN_REG: 0.1}),
               "rho": ("snakemake", {"sample.rho": [7, 72], SINKHORN_REG: 0.2})}


def _terminal_columns(csv_text: str) -> list:
    """The columns `dvc exp show` prints in a terminal: its CSV's, with Experiment/rev/typ/parent as one."""
    return [c for c in next(csv.reader(io.StringIO(csv_text))) if c not in ("rev", "typ", "parent")]


def exp_show_columns(proj, *flags) -> list:
    return _terminal_columns(run(["dvc", "exp", "show", "--csv", *flags], proj).stdout)


def compare_columns(proj) -> list:
    """The README's comparison recipe, `make compare` (dvc exp show --only-changed --drop ... --keep ...)."""
    return _terminal_columns(run(["make", "-s", "compare", "ARGS=--csv"], proj).stdout)


def compare_lines(proj) -> list:
    return run(["make", "-s", "compare"], proj).stdout.splitlines()


@pytest.mark.slow
def test_parameter_changes_are_seen_whichever_door_ran_last(smoke_tree):
    """Snakemake (the baseline), a `dvc exp run`, then Snakemake saved with `dvc exp save`: two experiments,
    each one parameter away from the baseline, run one after another, so that each door follows the other.
    Each reruns exactly the jobs whose declared parameters (or those upstream) changed, their records carry the
    new values, and then neither door has anything to do (`dvc exp apply` then Snakemake: the next test). The
    experiments fit a screen in `make compare` (<= 40 columns, 200 characters)."""
    proj, _, _ = smoke_tree
    run([*GIT, "add", "-A"], proj)  # the smoke run is committed already (the fixture): the baseline
    run([*GIT, "commit", "-qm", "baseline of the experiments", "--allow-empty"], proj)
    ran = {name: _door_step(proj, door, one, name) for name, (door, one) in EXPERIMENTS.items()}
    assert "pool_train@sinkhorn32" in ran["sinkhorn"] and not any(job.startswith(("train", "sample", "pool_train@pool"))
                                                                  for job in ran["sinkhorn"])
    assert {"pool_train@sinkhorn32", "pool_study", "sample@edm_cond_s0", "tables"} <= ran["rho"]
    assert not any(job.startswith(("train", "pool_train@pool512", "prepare_data")) for job in ran["rho"])
    plan = Plan(load_params(proj / "params.yaml"), proj)  # the records of what reran carry the new values
    rec = json.loads((proj / plan.record_path(stage("sample"), "edm_cond_s0")).read_text())
    assert rec["params"]["sample.rho"] == [7, 72]
    shown, everything = compare_columns(proj), exp_show_columns(proj, "--only-changed")
    assert len(shown) <= 40, shown
    lines = compare_lines(proj)  # transposed: a row per parameter or metric, readable in 200 characters
    assert max(map(len, lines)) <= 200 and len(lines) == len(shown) - 1  # header, a row per column
    assert any(line.startswith("sample.rho ") and "[7, 72]" in line for line in lines)
    assert {SINKHORN_REG, "sample.rho",
            "aot_vs_edm.cond.fd_heldout_rho72_nfe5.diff", "aot_vs_edm.cond.fd_heldout_rho72_nfe5.interval",
            "floor.fd_heldout.value"} <= set(shown)
    # what the recipe leaves out is only what DVC always lists: each changed dependency's hash
    assert all(c.startswith("results/") or c == "params.yaml" for c in set(everything) - set(shown))


@pytest.mark.slow
def test_dvc_experiments_and_apply_keep_both_doors_consistent(smoke_tree):
    """The experiments are in `dvc exp show` with their parameters; `dvc exp apply` brings back its outputs and
    records, keeps training checkpoints, and Snakemake then plans nothing."""
    proj, _, _ = smoke_tree
    shown = json.loads(run(["dvc", "exp", "show", "--json"], proj).stdout)
    exps = {(exp.get("name") or rev["data"].get("name")): rev["data"]
            for commit in shown for exp in commit.get("experiments") or [] for rev in exp["revs"]}
    assert set(EXPERIMENTS) <= set(exps)
    data = exps["rho"]
    assert data["params"]["params.yaml"]["data"]["sample"]["rho"] == [7, 72]
    assert "aot_vs_edm.uncond.fd_heldout_rho72_nfe3" in data["metrics"]["results/smoke/metrics.json"]["data"]
    assert exps["sinkhorn"]["params"]["params.yaml"]["data"]["pool_study"]["variants"]["sinkhorn32"][
        "pairing_options"] == {"reg": 0.1}
    rec = json.loads((proj / Plan(load_params(proj / "params.yaml"), proj).record_path(stage("pool_train"), "sinkhorn32"))
                     .read_text())
    assert rec["params"]["pool_study.variants.sinkhorn32"]["pairing_options"] == {"reg": 0.2}  # Snakemake's, last
    checkpoints = Layout("smoke", proj).checkpoints("edm_uncond_s0")
    assert any(checkpoints.iterdir())
    out = run(["dvc", "exp", "apply", "sinkhorn"], proj)  # the workspace held "rho", Snakemake's run
    assert "failed" not in (out.stdout + out.stderr).lower()
    applied = load_params(proj / "params.yaml")
    assert applied["pool_study"]["variants"]["sinkhorn32"]["pairing_options"] == {"reg": 0.1}
    assert applied["sample"]["rho"] == [7, 90]
    assert any(checkpoints.iterdir())  # not DVC's: left alone
    assert "Nothing to be done" in snakemake_plan(proj, targets=("all", "pool_study"))
    # Profiles keep their own outputs; the report lists tables and figures.
    assert not (proj / "results" / "digits").exists()
    run(["snakemake", "--report", "report.html"], proj)
    html = (proj / "report.html").read_text(errors="replace")
    assert "table1_fd_vs_nfe" in html and "fd_vs_nfe" in html
    # a table and a figure of one stem are two entries, told apart by their `kind` label
    assert "hybrid_switch.html" in html and "hybrid_switch.png" in html and '"kind"' in html


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_dvc_plots_render_offline_in_headless_chromium(smoke_tree, tmp_path):
    """`dvc plots show` fills the offline template (Vega inlined): no script from a CDN, and a browser with no
    network draws every chart: one line per model in the FD curves, the loss curves' lines."""
    if BROWSER is None:
        if os.environ.get("AOT_REQUIRE_BROWSER"):  # .ci/run installs Chromium and sets this
            pytest.fail("no headless Chromium found, and AOT_REQUIRE_BROWSER is set")
        pytest.skip("no headless Chromium (apt-get install chromium; .ci/run does)")
    proj, _, _ = smoke_tree
    run(["aot-diffusion", "offline-plots"], proj)
    run(["dvc", "plots", "show", "-o", str(tmp_path)], proj)
    page = (tmp_path / "index.html").read_text()
    assert "<script src" not in page and "cdn.jsdelivr" not in page
    charts = page.count("vegaEmbed('#")
    assert charts >= 1 + len(Plan(load_params(proj / "params.yaml")).ctx.models)  # FD curves, a loss curve per model
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                          "--host-resolver-rules=MAP * ~NOTFOUND", "--dump-dom", (tmp_path / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=300).stdout
    drawn = re.findall(r'<svg[^>]* class="marks"', dom)
    lines = re.findall(r'class="mark-line role-mark[^"]*"[^>]*>(.*?)</g>', dom, re.S)
    assert len(drawn) == charts, f"{len(drawn)} of {charts} charts drawn offline"
    assert sum(len(re.findall(r'<path[^>]* d="M[-\d.]+,[-\d.]+L', g)) for g in lines) >= charts  # real lines
    # the headline FD curves: one line per model (a column each), not one zigzag through all of them
    chunk = dom.split('id="results_smoke_tables_fd_curves_csv"')[1].split("<div id=")[0]
    lines = re.findall(r'field: (\w+)" role="graphics-symbol" aria-roledescription="line mark" d="M[^"]*L', chunk)
    assert set(lines) == set(load_params(proj / "params.yaml")["models"])


@pytest.mark.slow
def test_unknown_key_stops_dvc_even_when_every_stage_is_cached(smoke_tree):
    """`+key` gets a typo past Hydra; check_params depends on the whole params.yaml, so it runs and stops it."""
    proj, _, _ = smoke_tree
    out = run(["dvc", "exp", "run", "-S", "profile=smoke", "-S", "+guidance.weight_uncnd=1.0", "-n", "typo"], proj,
              check=False)
    assert out.returncode != 0 and "guidance.weight_uncnd" in out.stdout + out.stderr
    shown = run(["dvc", "exp", "show", "--json"], proj).stdout
    assert '"typo"' not in shown
