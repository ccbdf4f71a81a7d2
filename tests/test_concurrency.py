"""Nothing lost under concurrent use: one front door at a time (DVC's repository lock, which the Snakemake door
holds for its whole run), one composition rule for both doors, a failed or refused run that leaves params.yaml
and every result as they were, and a failure to record in dvc.lock that says why."""

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from aot_diffusion.frontdoors import DVC_LOCK
from test_pipeline import GIT, copy_repo, run

SMOKE = ["--config", "profile=smoke"]
pytestmark = pytest.mark.slow  # real runs of both doors (about two minutes together)


def state(proj: Path) -> dict:
    """sha256 of everything a door may touch: results/, figures/, dvc.lock, params.yaml."""
    files = [proj / "dvc.lock", proj / "params.yaml",
             *[f for d in ("results", "figures") for f in sorted((proj / d).rglob("*")) if f.is_file()]]
    return {str(f.relative_to(proj)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.exists()}


def _env(proj: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(proj / "src"), os.environ.get("PYTHONPATH")]))}


def _start(cmd, proj: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=proj, env=_env(proj), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # its own process group: paused as one


def _wait_for_lock(proj: Path, proc: subprocess.Popen, holder: str, timeout=120) -> None:
    lock = proj / DVC_LOCK
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        if lock.exists() and holder in lock.read_text() and _locked(lock):
            return
        time.sleep(0.2)
    raise AssertionError(f"{holder} never took {lock}")


def _locked(lock: Path) -> bool:
    import zc.lockfile

    try:
        zc.lockfile.SimpleLockFile(str(lock)).close()
        return False
    except zc.lockfile.LockError:
        return True


@pytest.fixture(scope="module")
def smoke_start(tmp_path_factory):
    """A copy of the repository whose smoke parameters are composed and checked (committed to git)."""
    proj = copy_repo(tmp_path_factory.mktemp("concurrency"))
    run(["snakemake", "--cores", "1", *SMOKE, "--", "check_params"], proj)
    run([*GIT, "add", "-A"], proj)
    run([*GIT, "commit", "-qm", "smoke parameters"], proj)
    return proj


def test_dvc_refuses_while_snakemake_runs_and_changes_nothing(smoke_start):
    """`dvc repro` and `dvc exp run -S` started while a Snakemake run holds the door refuse before they touch a
    file (the run is paused meanwhile, so any change would be theirs); the Snakemake run then finishes."""
    proj = smoke_start
    smk = _start(["snakemake", "--cores", "1", *SMOKE, "--", "prepare_data"], proj)
    try:
        _wait_for_lock(proj, smk, "snakemake")
        os.killpg(smk.pid, signal.SIGSTOP)
        before = state(proj)
        for cmd in (["dvc", "repro"], ["dvc", "exp", "run", "-S", "profile=smoke", "-S", "seed=3"]):
            out = run(cmd, proj, check=False)
            assert out.returncode != 0 and "Unable to acquire lock" in out.stdout + out.stderr, (cmd, out.stdout, out.stderr)
            assert state(proj) == before, cmd
        assert f"{smk.pid} snakemake" in (proj / DVC_LOCK).read_text()  # who holds it: pid and command
    finally:
        os.killpg(smk.pid, signal.SIGCONT)
    log = smk.communicate(timeout=300)[0]
    assert smk.returncode == 0, log[-3000:]
    assert "recorded" in log and "dvc commit" in log
    assert "up to date" in run(["dvc", "status", "check_params", "prepare_data"], proj).stdout


def test_snakemake_refuses_while_dvc_runs_naming_it(smoke_start):
    proj = smoke_start
    dvc = _start(["dvc", "repro", "feature_network"], proj)
    try:
        _wait_for_lock(proj, dvc, "", timeout=120)
        os.killpg(dvc.pid, signal.SIGSTOP)
        before = state(proj)
        for extra in ([], ["--config", "profile=smoke", "seed=4"]):
            out = run(["snakemake", "--cores", "1", *extra], proj, check=False)
            text = out.stdout + out.stderr
            assert out.returncode != 0 and f"refusing to start: process {dvc.pid} (`" in text and "dvc" in text, text[-2000:]
            assert state(proj) == before
    finally:
        os.killpg(dvc.pid, signal.SIGCONT)
    log = dvc.communicate(timeout=300)[0]
    assert dvc.returncode == 0, log[-3000:]


def test_refused_dvc_experiment_deletes_nothing(smoke_start, tmp_path):
    """check_params runs first and its outputs persist, so a value the schema refuses (or a device the machine
    lacks) stops `dvc exp run` with every result in place."""
    proj = smoke_start
    before = {k: v for k, v in state(proj).items() if k != "params.yaml"}
    for bad in ("train.pool_size=abc", "device=cuda"):
        out = run(["dvc", "exp", "run", "-S", "profile=smoke", "-S", bad, "check_params"], proj, check=False)
        assert out.returncode != 0 and "check-params: error: parameter" in out.stdout + out.stderr, out.stdout
        assert {k: v for k, v in state(proj).items() if k != "params.yaml"} == before, bad
    # an anchor in a profile: DVC's Hydra expands it; check_params reads conf/ with the strict loader
    profile = proj / "conf" / "profile" / "smoke.yaml"
    profile.write_text(profile.read_text().replace("device: cpu", "device: &dev cpu", 1))
    out = run(["dvc", "exp", "run", "-S", "profile=smoke", "check_params"], proj, check=False)
    assert out.returncode != 0 and "anchors and aliases are not allowed" in out.stdout + out.stderr, out.stdout
    assert {k: v for k, v in state(proj).items() if k != "params.yaml"} == before
    run(["git", "checkout", "--", "params.yaml", str(profile.relative_to(proj))], proj)


def _params_after(proj: Path, steps) -> dict:
    for cmd in steps:
        run(cmd, proj)
    return yaml.safe_load((proj / "params.yaml").read_text())


def test_both_doors_compose_the_same_way(smoke_start):
    """Each `--config` composes from conf/ + the profile + its own overrides, as `dvc exp run -S` does: an
    earlier command's override does not stay behind; naming no profile while params.yaml holds another is an
    error that says which to add."""
    proj = smoke_start
    smk = _params_after(proj, [["snakemake", "--cores", "1", "--config", "profile=smoke", f"guidance={{{k}: 3.0}}",
                                "--", "check_params"] for k in ("weight_uncond", "weight_cond")])
    dvc = _params_after(proj, [["dvc", "exp", "run", "-S", "profile=smoke", "-S", f"guidance.{k}=3.0", "check_params"]
                               for k in ("weight_uncond", "weight_cond")])
    assert smk == dvc and smk["guidance"]["weight_cond"] == 3.0 and smk["guidance"]["weight_uncond"] != 3.0
    out = run(["snakemake", "-n", "--config", "seed=2"], proj, check=False)
    assert out.returncode != 0 and "add profile=smoke to keep it" in out.stdout + out.stderr
    origin = run(["aot-diffusion", "params", "--show-origin"], proj).stdout
    assert any(line.split()[:2] == ["guidance.weight_cond", "override"] for line in origin.splitlines())
    assert any(line.split()[:2] == ["train.batch_size", "conf/profile/smoke.yaml"] for line in origin.splitlines())
    run(["git", "checkout", "--", "params.yaml", "dvc.lock"], proj)


def test_a_failed_run_leaves_params_yaml_as_it_was(smoke_start):
    proj = smoke_start
    before = (proj / "params.yaml").read_bytes()
    out = run(["snakemake", "--cores", "1", "--config", "profile=smoke", "device=cuda", "--", "check_params"], proj,
              check=False)
    assert out.returncode != 0 and "CUDA is not available" in out.stdout + out.stderr
    assert "params.yaml: restored to what it was before this run" in out.stdout + out.stderr
    assert (proj / "params.yaml").read_bytes() == before
