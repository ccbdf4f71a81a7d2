"""Snakemake and DVC run the same stages on the same files: keep them (and two Snakemake runs with other
parameters) from running at once, and let each see what the other did: both judge a stage by its parameter
record (dag.Plan), and a finished Snakemake run is also recorded in dvc.lock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .params import ParamError

__all__ = ["check_dag_shape", "report_environment", "refuse_hand_edits", "refuse_if_snakemake_running", "record_in_dvc",
           "acquire_run_lock", "release_run_lock", "check_run_lock",
           "take_door_lock", "release_door_lock", "write_run_params", "restore_run_params"]


def check_dag_shape(p, root: Path | str = ".") -> None:
    """dvc.yaml is generated for one set of models and discriminators; an override that changes them would be
    ignored by DVC, so it is an error for both front doors."""
    path = Path(root) / "dvc.yaml"
    if not path.exists():
        return
    stages = yaml.safe_load(path.read_text())["stages"]
    from .params import model_instances

    models, discs = list(stages["train"]["foreach"]), list(stages["train_discriminator"]["foreach"])
    if list(model_instances(p)) != models or list(p["guidance"]["discriminators"]) != discs:
        raise ParamError(f"parameters 'models' x 'train.seeds' / 'guidance.discriminators' ({list(model_instances(p))}, "
                         f"{list(p['guidance']['discriminators'])}) differ from the DAG in dvc.yaml ({models}, {discs}); "
                         "edit conf/config.yaml and regenerate it: aot-diffusion dvc-yaml")
    from .dag import Context

    ctx = Context(p)
    for model, item in stages["train"]["foreach"].items():
        if item.get("pairing_code") != ctx.pairing_code(model):
            raise ParamError(f"model {model} now trains with the code in {ctx.pairing_code(model)}, while dvc.yaml names "
                             f"{item.get('pairing_code')} as its dependency: set the pairing in conf/ and regenerate "
                             "dvc.yaml (aot-diffusion dvc-yaml), so that DVC sees edits of that file")


def refuse_hand_edits(plan, argv, file=sys.stderr) -> None:
    """Stop, naming the files, when an output of a finished job is no longer what the job wrote (a hand edit,
    another tool); go on when each such job is forced to run again (``--forcerun <job>`` or ``--forceall``),
    which rebuilds the file. Snakemake can't be told to rerun a job from here, and a job whose outputs are all
    there would otherwise keep the edited bytes (and dvc commit would record them)."""
    from .dag import job_id

    forced_all = any(a in ("-F", "--forceall") for a in argv)
    left = []
    for st, key, changed in plan.hand_edits():
        job = job_id(st, key)
        if forced_all or job in argv:
            print(f"hand edit: {', '.join(changed)}: not what job {job} wrote; it runs again (forced)", file=file)
        else:
            left.append((job, changed))
    if left:
        lines = "\n".join(f"  {', '.join(changed)} (job {job})" for job, changed in left)
        jobs = " ".join(job for job, _ in left)
        raise SystemExit(f"refusing to run: these outputs are not what their jobs wrote (edited by hand, or by "
                         f"another tool):\n{lines}\nrebuild them: snakemake --cores all --forcerun {jobs}\n"
                         f"or restore them: dvc checkout --force {' '.join(f for _, changed in left for f in changed)}")


def report_environment(plan, file=sys.stderr) -> list:
    """Say, before anything runs, when the current results were made with other software or on another device
    than this run has ("results were made with torch X on cpu; this run has torch Y on cuda"). They rerun only
    when asked (--forceall, dvc repro -f): the numbers move in the last digits, not the conclusions."""
    from .dag import job_id

    lines = {}
    for st, key in plan.jobs():
        if changes := plan.environment_changes(st, key):
            lines.setdefault("; ".join(changes), []).append(job_id(st, key))
    for change, jobs in lines.items():
        print(f"environment: {len(jobs)} current result(s) (e.g. {jobs[0]}) were made with other software or "
              f"hardware than this run has: {change}", file=file)
    return list(lines)


# DVC's own repository lock: `dvc repro`, `dvc exp run`, `dvc checkout` and `dvc commit` take it before they
# touch anything (before DVC removes a stage's outputs or recomposes params.yaml). The Snakemake door holds it for
# its whole run, so the other door refuses before it changes a byte; a killed run's lock goes with its process.
DVC_LOCK = Path(".dvc") / "tmp" / "lock"
_DOOR: dict = {}  # this process's hold on DVC_LOCK, and params.yaml as it was before this run wrote it


def _holder(path: Path) -> str:
    """Who holds the lock file: its pid and command (DVC writes its pid only; the command is then read from
    /proc)."""
    try:
        pid, _, command = path.read_text().strip().partition(" ")
    except OSError:
        return "another process"
    if not command:
        try:
            command = Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError):
            command = "a DVC command"
    return f"process {pid} (`{command}`)"


def take_door_lock(root: Path | str = ".") -> None:
    """Hold DVC's repository lock for this Snakemake run (first thing in its onstart), writing this run's pid
    and command into it; refuse to start, naming the holder, while DVC or another Snakemake run holds it."""
    import logging

    import zc.lockfile

    root = Path(root)
    if not (root / ".dvc").is_dir() or "lock" in _DOOR:
        return
    path = root / DVC_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    command = "snakemake " + " ".join(sys.argv[1:])
    quiet = logging.getLogger("zc.lockfile")
    quiet.disabled = True  # it logs a traceback for a held lock; the refusal below says it in one line
    try:
        _DOOR["lock"] = zc.lockfile.LockFile(str(path), content_template="{pid} " + command.replace("{", "{{")
                                             .replace("}", "}}"))
    except zc.lockfile.LockError:
        raise SystemExit(f"refusing to start: {_holder(path)} is running in this checkout (it holds {path}); both "
                         "front doors write the same outputs and params.yaml: wait for it, or run from another "
                         "checkout") from None
    finally:
        quiet.disabled = False


def release_door_lock() -> None:
    if lock := _DOOR.pop("lock", None):
        lock.close()


def write_run_params(p, root: Path | str = ".") -> None:
    """params.yaml as this run composed it (--config), keeping what was there, so that a failed run can put
    it back (restore_run_params)."""
    from .params import PARAMS_FILE, write_params

    path = Path(root) / PARAMS_FILE
    before = path.read_bytes() if path.exists() else None
    if write_params(p, path):
        _DOOR["params"] = (path, before)
        print("params.yaml: written with the --config overrides (the run's effective parameters)")


def restore_run_params() -> None:
    """A failed run leaves params.yaml as it was before it (the outputs and records of the jobs that finished
    stay: a rerun with the same --config reuses them)."""
    from .utils import AtomicPath

    if entry := _DOOR.pop("params", None):
        path, before = entry
        if before is None:
            path.unlink(missing_ok=True)
        else:
            with AtomicPath(path) as tmp:
                tmp.write_bytes(before)
        print(f"{path}: restored to what it was before this run (the run failed)")


def refuse_if_snakemake_running(root: Path | str = ".") -> None:
    """Called by every stage run under DVC: Snakemake holds .snakemake/locks while it runs."""
    locks = Path(root) / ".snakemake" / "locks"
    if os.environ.get("DVC_STAGE") and locks.is_dir() and any(locks.iterdir()):
        raise SystemExit("refusing to run under DVC: Snakemake is running in this directory (.snakemake/locks); "
                         "wait for it, or run `snakemake --unlock` if it was killed")


RUNS_DIR = Path(".snakemake") / "aot-diffusion-runs"  # one file per running Snakemake run: its parameters


def _live_runs(root: Path) -> list:
    runs = []
    for entry in sorted((root / RUNS_DIR).glob("*.json")):
        try:
            info = json.loads(entry.read_text())
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            entry.unlink(missing_ok=True)  # a finished or killed run
            continue
        if info["pid"] != os.getpid():
            runs.append(info)
    return runs


def _other_run(p, root: Path) -> dict | None:
    """A live Snakemake run in this checkout whose parameters differ from ``p``."""
    from .params import digest

    mine = digest(dict(p))
    return next((info for info in _live_runs(root) if info["params"] != mine), None)


def acquire_run_lock(p, root: Path | str = ".") -> None:
    """A Snakemake run holds its parameters for its whole duration: a second run in the same checkout with
    other parameters refuses to start (it would rewrite params.yaml under the first one's jobs)."""
    from .params import digest

    root = Path(root)
    if info := _other_run(p, root):
        raise SystemExit(f"refusing to start: Snakemake run {info['pid']} (`{info['argv']}`) is running in this "
                         "checkout with other parameters; wait for it, or run from another checkout")
    mine = digest(dict(p))
    path = root / RUNS_DIR / f"{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "params": mine, "argv": " ".join(sys.argv)}))


def release_run_lock(root: Path | str = ".") -> None:
    (Path(root) / RUNS_DIR / f"{os.getpid()}.json").unlink(missing_ok=True)


def check_run_lock(p, root: Path | str = ".") -> None:
    """Called by every stage: params.yaml must still hold the parameters of any Snakemake run going on here."""
    if info := _other_run(p, Path(root)):
        raise SystemExit(f"refusing to run: params.yaml changed while Snakemake run {info['pid']} "
                         f"(`{info['argv']}`) is running in this checkout with other parameters")


def record_in_dvc(root: Path | str = ".") -> None:
    """After a successful Snakemake run, record the finished stages in dvc.lock (`dvc commit`), so that
    `dvc status` agrees with Snakemake. Only inside a DVC repository."""
    from .dag import POOL_STUDY_DVC
    from .dvcfile import dvc_commit_targets, write_pool_study_dvc_yaml

    root = Path(root)
    if not (root / ".dvc").is_dir() or shutil.which("dvc") is None:
        return
    targets, finished = dvc_commit_targets(root)
    if not targets:
        return
    if any(t.startswith(str(POOL_STUDY_DVC)) for t in targets) and not (root / POOL_STUDY_DVC).exists():
        from .params import load_params

        print(f"{write_pool_study_dvc_yaml(load_params(root / 'params.yaml'), root)}: written (the pool-size study ran)")
    out = subprocess.run(["dvc", "commit", "--force", *targets], cwd=root, capture_output=True, text=True)
    if out.returncode:
        reason = (out.stderr.strip() or out.stdout.strip() or f"exit status {out.returncode}, no message")[-2000:]
        print(f"dvc commit failed (dvc status will show the stages as changed): {reason}")
    else:
        print(f"recorded {finished} finished stages in dvc.lock (dvc commit)")
