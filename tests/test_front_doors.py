"""Both front doors plan the same jobs from one stage table: generated dvc.yaml, the same commands for every
profile and for the pool-size study, one run at a time, a typo stopped at both, the scheduling order. (The smoke
run end to end, shared by its tests, is tests/test_pipeline.py; these run on the other test worker.)"""

import subprocess

import pytest

from aot_diffusion.dag import POOL_STUDY_DVC, STAGES, Plan, keys_of
from aot_diffusion.dvcfile import dvc_yaml, pool_study_dvc_yaml
from aot_diffusion.params import compose, load_params
from test_pipeline import ROOT, copy_repo, dvc_commands, run, snakemake_commands


def test_dvc_yaml_is_generated_from_the_stage_table(tmp_path):
    p = compose(root=ROOT)
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(p)
    # The study's pipeline file is written when a study is asked for, not kept: DVC collects every dvc.yaml, so
    # a bare `dvc status` (or `dvc plots show`) would list each stage of a study that never ran.
    assert not (ROOT / POOL_STUDY_DVC).exists() or (ROOT / POOL_STUDY_DVC).read_text() == pool_study_dvc_yaml(p)
    proj = copy_repo(tmp_path)
    run(["aot-diffusion", "dvc-yaml"], proj)
    assert not (proj / POOL_STUDY_DVC).exists()
    run(["aot-diffusion", "dvc-yaml", "--pool-study"], proj)
    assert (proj / POOL_STUDY_DVC).read_text() == pool_study_dvc_yaml(p)


@pytest.mark.parametrize("profile", ["digits", "smoke", "cifar10"])
def test_both_front_doors_plan_the_same_commands(tmp_path, profile):
    proj = copy_repo(tmp_path)
    run(["aot-diffusion", "params", "--profile", profile], proj)
    classifier = load_params(proj / "params.yaml")["guidance"]["adm_classifier"]
    if classifier:  # a file a stage reads through a parameter is an input: Snakemake plans only with it there
        (proj / classifier).parent.mkdir(parents=True, exist_ok=True)
        (proj / classifier).write_bytes(b"a stand-in for DG's classifier file")
    smk, dvc = snakemake_commands(proj, f"profile={profile}"), dvc_commands(proj)
    assert smk and smk == dvc
    # one command per job of the stage table (two training seeds: 8 trained models in every profile); the
    # pool-size study is not in `all`
    p = load_params(proj / "params.yaml")
    plan = Plan(p)
    assert len(smk) == sum(len(keys_of(st, plan.ctx)) for st in STAGES)
    # counted from the parameters, not typed: one training job per model and training seed
    trains = [c for c in smk if " train " in f" {c} " and "--variant" not in c]
    assert len(trains) == len(p["models"]) * len(p["train"]["seeds"]), trains[:3]
    assert not any("--variant" in c for c in smk)


def test_pool_study_is_its_own_target_at_both_front_doors(tmp_path):
    """Not part of `all` / `dvc repro`; its own target plans the same commands at both doors (data and FD
    reference from the main DAG, then train / sample / fd / curvature per variant and the report)."""
    proj = copy_repo(tmp_path)
    run(["aot-diffusion", "dvc-yaml", "--pool-study"], proj)
    variants = compose(root=ROOT)["pool_study"]["variants"]
    smk = snakemake_commands(proj, "profile=digits", target=["pool_study"])
    assert smk == dvc_commands(proj, str(POOL_STUDY_DVC))
    assert len(smk) == 3 + 1 + 4 * len(variants) + 1 and "aot-diffusion pool-study" in smk
    assert "aot-diffusion pool-variants" in smk  # checks the names before any command holds one
    assert all(f"aot-diffusion train --variant '{v}'" in smk for v in variants)


def test_front_doors_refuse_to_run_at_once(tmp_path):
    """Snakemake does not start while DVC holds its repository lock (it names the holder); a stage run by DVC
    stops while Snakemake runs. (Both ways round with real runs: tests/test_concurrency.py.)"""
    import os

    import zc.lockfile

    from aot_diffusion.frontdoors import DVC_LOCK

    proj = copy_repo(tmp_path)
    (proj / DVC_LOCK).parent.mkdir(parents=True, exist_ok=True)
    held = zc.lockfile.LockFile(str(proj / DVC_LOCK))  # as DVC takes it: its pid only
    try:
        out = run(["snakemake", "--cores", "1", "check_params"], proj, check=False)
    finally:
        held.close()
    assert out.returncode != 0 and f"refusing to start: process {os.getpid()} (`" in out.stdout + out.stderr
    assert not (proj / "results").exists()
    locks = proj / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("")
    env = dict(os.environ, DVC_STAGE="check_params")  # what DVC sets for the commands of its stages
    out = subprocess.run(["aot-diffusion", "check-params"], cwd=proj, capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "refusing to run under DVC: Snakemake is running" in out.stdout + out.stderr
    assert not (proj / "results").exists()


def test_typo_in_params_stops_both_front_doors_naming_it(tmp_path):
    proj = copy_repo(tmp_path)
    text = (proj / "params.yaml").read_text().replace("  pool_size: 512", "  pool_sise: 512", 1)
    (proj / "params.yaml").write_text(text)
    out = run(["snakemake", "-n"], proj, check=False)
    assert out.returncode != 0 and "pool_sise" in out.stdout + out.stderr
    out = run(["dvc", "repro", "--dry"], proj, check=False)
    assert out.returncode != 0 and "train.pool_size" in out.stdout + out.stderr
    assert not (proj / "results").exists()


def test_snakemake_starts_the_long_chains_first():
    """On few cores the ready job with the most work behind it goes first (dag.Plan.priorities): the guided
    models' first-seed trainings before the second seed's, DG's chain and the hybrid samplers before the plain
    sampling, the report last; every rule carries its priority."""
    plan = Plan(compose("digits"))
    pr = plan.priorities()
    assert pr["train@aot_uncond_s0"] > pr["train@aot_uncond_s1"] > pr["sample@aot_uncond_s1"] > pr["tables"]
    assert pr["fake_samples@aot_uncond_s0"] > pr["sample@aot_uncond_s0"] and pr["hybrid"] > pr["sample@edm_cond_s0"]
    assert min(pr.values()) == pr["figures"] == 1
    text = (ROOT / "workflow" / "rules" / "stages.smk").read_text()
    assert "priority: PRIORITY[dag.job_id(st, key)]" in text


@pytest.mark.parametrize("profile", ["digits", "smoke", "cifar10"])
def test_each_job_has_the_same_inputs_at_both_doors(tmp_path, profile):
    """For every job of the main DAG and the pool-size study, the files the Snakemake rule waits for are the
    DVC stage's dependencies as DVC itself resolves them (foreach and all), so a Snakemake run can always be
    recorded in dvc.lock. DVC also lists the code (Snakemake sees it through the records), a plugin folder where
    Snakemake has its files, and the study's variant folder; a file named by a parameter is Snakemake's only."""
    import os

    from dvc.repo import Repo

    from aot_diffusion.dag import POOL_STUDY_STAGES, Context, job_id
    from aot_diffusion.layout import Layout
    from aot_diffusion.plugins import PLUGIN_DIR

    proj = copy_repo(tmp_path)
    run(["aot-diffusion", "params", "--profile", profile], proj)
    run(["aot-diffusion", "dvc-yaml", "--pool-study"], proj)
    p = load_params(proj / "params.yaml")
    ctx, L = Context(p), Layout(profile)
    with Repo(str(proj)) as repo:
        dvc = {st.name: {os.path.relpath(d.fs_path, proj) for d in st.deps if type(d).__name__ != "ParamsDependency"}
               for st in repo.index.stages}  # (a parameter dependency is DVC's reading of params.yaml)

    def covered(path, by):
        return any(path == b or path.startswith(b + "/") for b in by)

    jobs = [(st, key) for st in [*STAGES, *POOL_STUDY_STAGES] for key in keys_of(st, ctx)]
    assert set(dvc) == {job_id(st, key) for st, key in jobs}
    for st, key in jobs:
        named = {str(ctx.p_value(n.format(key=key))) for n in st.param_files if ctx.p_value(n.format(key=key))}
        smk = {str(path) for path in st.deps(L, ctx, key)} - named
        data = {path for path in dvc[job_id(st, key)] if not path.startswith("src/")}
        assert all(covered(path, data) for path in smk if not path.startswith("src/")), (job_id(st, key), smk, data)
        folders = {path for path in data if path.startswith(str(PLUGIN_DIR) + "/")}  # its files: those named
        assert all(covered(path, smk) or any(s.startswith(path + "/") for s in smk) for path in data - folders), \
            (job_id(st, key), smk, data)
