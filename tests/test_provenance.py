"""One truth about what was computed: stages read only what they declare, parameter records name what
they read, strict parameter files, one run's parameters at a time, and no name or path reaching a shell."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from aot_diffusion import dag
from aot_diffusion.frontdoors import RUNS_DIR, acquire_run_lock, check_run_lock
from aot_diffusion.params import (ParamError, StageParams, UndeclaredParam, compose, load_params, model_instances,
                                  validate)

from test_pipeline import ROOT, copy_repo, run

P = compose("smoke", root=ROOT)


# ---------------------------------------------------------------------------------------------- views

def test_a_stage_reads_only_what_it_declares():
    view = StageParams(P, ["seed", "sample.sigma_min", "guidance"], "fake_samples@edm_uncond_s0")
    assert view["seed"] == P["seed"] and view["sample"]["sigma_min"] == P["sample"]["sigma_min"]
    assert view["guidance"]["num_fake"] == P["guidance"]["num_fake"]  # inside a declared section
    assert view["profile"] == "smoke"  # the output folder: every stage may read it
    with pytest.raises(UndeclaredParam, match=r"'fake_samples@edm_uncond_s0' read parameter 'sample.sigma_max'"):
        view["sample"]["sigma_max"]
    with pytest.raises(UndeclaredParam, match="'train'"):
        view["train"]
    assert list(view["sample"]) == ["sigma_min"]  # iteration shows only what is declared
    with pytest.raises(TypeError):
        view["seed"] = 3  # read-only
    view["guidance"]["sample_steps"].append(99)  # a copy: the parameters themselves don't change
    assert 99 not in P["guidance"]["sample_steps"]


# What each stage asks the stage table's context for (stages/*.py through Run): decided once, there.
_FACTS = {"train": lambda c, k: c.trained(k), "pool_train": lambda c, k: c.trained(k, variant=True),
          "train_discriminator": lambda c, k: (c.discriminator(k), c.guidance_choice(k, "epochs")),
          "guided_sample": lambda c, k: (c.discriminator(k), c.guidance_choice(k, "weight"),
                                         c.guidance_choice(k, "boosting"), c.sample_grid(dag.stage("guided_sample"), k)),
          "sample": lambda c, k: c.sample_grid(dag.stage("sample"), k),
          "pool_sample": lambda c, k: c.sample_grid(dag.stage("pool_sample"), k)}


@pytest.mark.parametrize("profile", ["smoke", "digits", "cifar10"])
def test_what_a_job_runs_comes_from_the_parameters_it_declares(profile):
    """The context's per-job facts, computed through the job's declared view (StageParams raises on anything
    else), equal the ones from the whole parameter set: both front doors rerun a job when one of them changes.
    (The first training seed's model is a path of the job's inputs, not a parameter: it comes from the plan.)"""
    p = compose(profile, root=ROOT)
    plan = dag.Plan(p)
    checked = 0
    for st, key in plan.jobs():
        if st.name not in _FACTS:
            continue
        view = dag.Context.__new__(dag.Context)
        view.__dict__.update(plan.ctx.__dict__, p=StageParams(p, plan.declared(st, key), dag.job_id(st, key)))
        view.first = plan.ctx.first
        assert _FACTS[st.name](view, key) == _FACTS[st.name](plan.ctx, key), dag.job_id(st, key)
        checked += 1
    assert checked >= len(plan.ctx.models) + len(plan.ctx.discs) * 2 + len(plan.ctx.variants)


def test_an_undeclared_fact_is_caught():
    """The check above bites: a stage table entry that leaves out what its facts read fails it."""
    plan = dag.Plan(P)
    view = dag.Context.__new__(dag.Context)
    declared = [n for n in plan.declared(dag.stage("guided_sample"), "dg_edm_uncond") if not n.startswith("guidance.weight")]
    view.__dict__.update(plan.ctx.__dict__, p=StageParams(P, declared, "guided_sample@dg_edm_uncond"))
    view.first = plan.ctx.first
    with pytest.raises(UndeclaredParam, match="guidance.weight_uncond"):
        _FACTS["guided_sample"](view, "dg_edm_uncond")


def test_every_declared_parameter_exists_for_every_profile():
    """A declared name that is not in the parameters would be a silent no-op for DVC and the records."""
    for profile in ("digits", "smoke", "cifar10"):
        plan = dag.Plan(compose(profile, root=ROOT))
        for st in dag.ALL_STAGES:
            for key in dag.keys_of(st, plan.ctx):
                plan.record(st, key)  # select() raises KeyError on a missing name


def test_records_chain_the_parameters_upstream():
    """A change reruns its readers and everything after them (their digests change), nothing else."""
    before, after = dag.Plan(P), dag.Plan(validate(dict(P, sample=dict(P["sample"], sigma_max=60.0))))
    changed = {dag.job_id(st, k) for st in dag.STAGES for k in dag.keys_of(st, before.ctx)
               if before.digest(st, k) != after.digest(st, k)}
    models, discs = list(model_instances(P)), list(P["guidance"]["discriminators"])
    firsts = [f"{m}_s{P['train']['seeds'][0]}" for m in P["models"]]
    assert changed == {"check_params", "hybrid", "tables", "figures",
                       *[f"{s}@{m}" for s in ("sample", "fd", "curvature") for m in models],
                       *[f"fake_samples@{m}" for m in firsts],
                       *[f"{s}@{d}" for s in ("train_discriminator", "guided_sample", "guided_fd") for d in discs]}
    st = dag.stage("fd")
    assert before.record(st, "edm_uncond_s1")["upstream"]["sample@edm_uncond_s1"] == \
        before.digest(dag.stage("sample"), "edm_uncond_s1")


def test_training_seeds_multiply_the_trained_models_and_adding_one_reruns_none_of_the_others():
    """train.seeds [0, 1] (smoke): every model is trained, sampled and scored per seed; adding seed 2 adds its
    jobs and changes only the report's digests (and check_params), not those of seeds 0 and 1."""
    before = dag.Plan(P)
    after = dag.Plan(validate(dict(P, train=dict(P["train"], seeds=[0, 1, 2]))))
    assert before.ctx.models == [f"{m}_s{s}" for m in P["models"] for s in (0, 1)]
    jobs = lambda plan: {dag.job_id(st, k): plan.digest(st, k) for st in dag.STAGES for k in dag.keys_of(st, plan.ctx)}
    old, new = jobs(before), jobs(after)
    assert set(new) - set(old) == {f"{s}@{m}_s2" for s in ("train", "sample", "fd", "curvature") for m in P["models"]}
    assert {j for j in old if old[j] != new[j]} == {"check_params", "tables", "figures"}
    with pytest.raises(ParamError, match="may not end in _s<digits>"):
        validate(dict(P, models={**P["models"], "edm_s3": {"pairing": "none", "conditional": False}}))


# ---------------------------------------------------------------------------------------------- YAML

@pytest.mark.parametrize("text, what", [
    ("seed: 0\nseed: 1\n", "duplicate key 'seed'"),
    ("a: &x [1, 2]\nb: *x\n", "anchors and aliases"),
    ("a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\n", "anchors and aliases"),
])
def test_parameter_files_refuse_duplicates_and_aliases_naming_the_line(tmp_path, text, what):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamError, match=what) as info:
        load_params(path)
    assert str(path) in str(info.value) and "line" in str(info.value)


def test_duplicate_key_in_params_yaml_stops_snakemake(tmp_path):
    proj = copy_repo(tmp_path)
    (proj / "params.yaml").write_text((proj / "params.yaml").read_text() + "seed: 5\n")
    out = run(["snakemake", "-n"], proj, check=False)
    assert out.returncode != 0 and "duplicate key 'seed'" in out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------- names

@pytest.mark.parametrize("name", ["a`touch X`b", "x$(touch X)", "; touch X", "a'b", "Upper", "1abc", "a-b", "a b"])
def test_names_are_plain_identifiers(name):
    p = yaml.safe_load(yaml.safe_dump(P))
    p["pool_study"]["variants"][name] = {"pairing": "none", "pool_size": 32}
    with pytest.raises(ParamError, match="not allowed"):
        validate(p)
    with pytest.raises(ParamError):
        dag.quote_name(name)


def test_payloads_create_nothing_through_either_door(tmp_path):
    """A hostile variant name through Snakemake's --config and through params.yaml under DVC, and a hostile
    released_pickle path through Snakemake: no command runs them."""
    proj = copy_repo(tmp_path)
    run(["aot-diffusion", "params", "--profile", "smoke"], proj)
    run(["aot-diffusion", "dvc-yaml", "--pool-study"], proj)
    marker = proj / "PWNED"
    for name in ("a`touch PWNED`b", "a'$(touch PWNED)'b", "; touch PWNED"):
        config = "pool_study={variants: {%s: {pairing: none, pool_size: 32}}}" % json.dumps(name)
        out = run(["snakemake", "--cores", "1", "pool_study", "--config", "profile=smoke", config], proj, check=False)
        assert out.returncode != 0 and "not allowed" in out.stdout + out.stderr
        # DVC reads the variants from params.yaml when it runs (foreach); written here past the composer.
        p = yaml.safe_load((proj / "params.yaml").read_text())
        p["pool_study"]["variants"] = {name: {"pairing": "none", "pool_size": 32}}
        (proj / "params.yaml").write_text(yaml.safe_dump(p))
        out = run(["dvc", "repro", str(dag.POOL_STUDY_DVC)], proj, check=False)
        assert out.returncode != 0
        assert not marker.exists(), name
        run(["aot-diffusion", "params", "--profile", "smoke"], proj)
    # The released pickle's path is a parameter the stage reads, never part of a command.
    evil = proj / "x$(touch PWNED).pkl"
    evil.write_bytes(b"not a pickle")
    out = run(["snakemake", "--cores", "1", "-p", "released_sample", "--config", "profile=smoke", f"released_pickle={evil.name}"],
              proj, check=False)
    assert "aot-diffusion sample --released" in out.stdout + out.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- one run at a time

def test_a_second_run_with_other_parameters_refuses(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / RUNS_DIR / f"{other.pid}.json"
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"pid": other.pid, "params": "0123456789abcdef", "argv": "snakemake --config x"}))
        with pytest.raises(SystemExit, match=f"Snakemake run {other.pid}"):
            acquire_run_lock(P, tmp_path)
        with pytest.raises(SystemExit, match="params.yaml changed while Snakemake run"):
            check_run_lock(P, tmp_path)
    finally:
        other.kill()
        other.wait()
    acquire_run_lock(P, tmp_path)  # its owner is gone: the stale lock is dropped
    check_run_lock(P, tmp_path)
    assert [f.name for f in (tmp_path / RUNS_DIR).iterdir()] == [f"{os.getpid()}.json"]


def test_snakemake_refuses_while_another_run_holds_other_parameters(tmp_path):
    proj = copy_repo(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = proj / RUNS_DIR / f"{other.pid}.json"
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"pid": other.pid, "params": "0123456789abcdef", "argv": "snakemake (first)"}))
        out = run(["snakemake", "--cores", "1", "check_params", "--config", "seed=5"], proj, check=False)
        assert out.returncode != 0 and "snakemake (first)" in out.stdout + out.stderr
        assert yaml.safe_load((proj / "params.yaml").read_text())["seed"] == 0  # not rewritten
    finally:
        other.kill()
        other.wait()


def test_the_cli_is_built_from_the_stage_table():
    from aot_diffusion.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {st.cli for st in dag.ALL_STAGES} | {"params", "dvc-yaml", "grid", "rehearsal-inputs", "offline-plots", "compare", "status", "plan", "readme", "dag"}
    for st in dag.ALL_STAGES:  # every stage's command parses to that very stage
        key = "pool128" if st.over == "variant" else "dg_edm_uncond" if st.over == "disc" else "edm_uncond_s0"
        cmd = dag.command(st, key if st.over in dag.KEYED else None).split()[1:]
        args = build_parser().parse_args([a.strip("'") for a in cmd])
        from aot_diffusion.cli import _chosen

        assert dag.find_stage(args.command, _chosen(args)[0]) is st


def test_an_undeclared_read_stops_the_stage_through_the_cli(tmp_path, monkeypatch, capsys):
    from aot_diffusion import cli
    from aot_diffusion.params import write_params
    from aot_diffusion.stages import data as data_stages

    write_params(P, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data_stages, "prepare_data", lambda run: run.params["train"]["lr"])  # prepare_data: seed, data
    with pytest.raises(SystemExit) as info:
        cli.main(["prepare-data"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "stage 'prepare_data' read parameter 'train'" in err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.json"))  # no record


# ------------------------------------------------------------------------- code, inputs and outputs (provenance.py)

def test_only_code_changes_a_normalized_digest():
    from aot_diffusion.provenance import normalized_digest

    src = 'def f(x):\n    """Doc."""\n    return x + 1  # one\n'
    same = ['def f(x):\n    """Other doc."""\n    return x + 1\n', "# a comment\ndef f( x ):\n\n    return (x + 1)\n"]
    other = ['def f(x):\n    return x + 2\n', 'def f(x):\n    """Doc."""\n    return x + 1\nY = 0\n']
    assert all(normalized_digest(s) == normalized_digest(src) for s in same)
    assert all(normalized_digest(s) != normalized_digest(src) for s in other)


def test_a_jobs_code_is_its_import_closure_read_from_the_source():
    from aot_diffusion.provenance import code_files, code_of

    train, sample, figures = (set(code_files(st.run)) for st in map(dag.stage, ("train", "sample", "figures")))
    assert {"src/aot_diffusion/training.py", "src/aot_diffusion/loss.py", "src/aot_diffusion/aot.py"} <= train
    assert "src/aot_diffusion/sampling.py" not in train and "src/aot_diffusion/sampling.py" in sample
    assert "src/aot_diffusion/report/figures.py" in figures and not any("report/" in f for f in train | sample)
    assert not {"src/aot_diffusion/dag.py", "src/aot_diffusion/cli.py"} & (train | sample | figures)
    # one stage module, several functions: each job counts only its own function and the helpers it reaches
    assert code_of("evaluate:fd")[1]["src/aot_diffusion/stages/evaluate.py:fd"] != \
        code_of("evaluate:curvature")[1]["src/aot_diffusion/stages/evaluate.py:curvature"]
    assert "src/aot_diffusion/metrics/curvature.py" not in code_files("evaluate:fd")


def test_a_file_named_by_a_parameter_is_an_input_of_its_job(tmp_path):
    p = compose("rehearsal", root=ROOT)
    classifier = tmp_path / p["guidance"]["adm_classifier"]
    classifier.parent.mkdir(parents=True)
    classifier.write_bytes(b"one classifier")
    st = dag.stage("train_encoder")
    before = dag.Plan(p, tmp_path)
    digests = before.digest(st, None), before.digest(dag.stage("prepare_data"), None)
    assert before.record(st, None)["inputs"]["guidance.adm_classifier"]["path"] == p["guidance"]["adm_classifier"]
    assert p["guidance"]["adm_classifier"] in map(str, st.deps(before.L, before.ctx, None))
    classifier.write_bytes(b"another classifier")
    after = dag.Plan(p, tmp_path)
    assert digests[0] != after.digest(st, None) and digests[1] == after.digest(dag.stage("prepare_data"), None)


def test_a_record_holds_its_outputs_and_a_hand_edit_is_found(tmp_path):
    p = compose("smoke", root=ROOT)
    plan, st = dag.Plan(p, tmp_path), dag.stage("prepare_data")
    for path in st.outs(plan.L, plan.ctx, None):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"written by the job")
    record = json.loads(plan.write_record(st, None, {"torch": "x"}).read_text())
    assert set(record["outputs"]) == set(map(str, st.outs(plan.L, plan.ctx, None)))
    assert {"digest", "code", "command", "environment", "outputs"} <= set(record)
    assert plan.is_current(st, None) and plan.hand_edits() == []
    edited = tmp_path / plan.L.dataset
    edited.write_bytes(b"written by hand!!!")  # same size
    assert plan.hand_edited(st, None) == [str(plan.L.dataset)] and not plan.is_current(st, None)
