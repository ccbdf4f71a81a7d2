"""Snakemake and DVC run the same stages on the same files: keep them from running at once, and let each
see what the other did (a finished Snakemake run is recorded in dvc.lock)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from .params import ParamError

__all__ = ["check_dag_shape", "refuse_if_dvc_running", "refuse_if_snakemake_running", "record_in_dvc",
           "forget_snakemake_records"]


def check_dag_shape(p, root: Path | str = ".") -> None:
    """dvc.yaml is generated for one set of models and discriminators; an override that changes them would be
    ignored by DVC, so it is an error for both front doors."""
    path = Path(root) / "dvc.yaml"
    if not path.exists():
        return
    stages = yaml.safe_load(path.read_text())["stages"]
    models, discs = stages["train"]["foreach"], list(stages["train_discriminator"]["foreach"])
    if list(p["models"]) != models or list(p["guidance"]["discriminators"]) != discs:
        raise ParamError(f"parameters 'models' / 'guidance.discriminators' ({list(p['models'])}, "
                         f"{list(p['guidance']['discriminators'])}) differ from the DAG in dvc.yaml ({models}, {discs}); "
                         "edit conf/config.yaml and regenerate it: aot-diffusion dvc-yaml")


def _dvc_lock_held(root: Path) -> bool:
    lock = root / ".dvc" / "tmp" / "rwlock"
    if not lock.exists():
        return False
    try:
        info = yaml.safe_load(lock.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    for entry in [*(info.get("write") or {}).values(), *[x for v in (info.get("read") or {}).values() for x in v]]:
        pid = entry.get("pid") if isinstance(entry, dict) else None
        if pid and pid != os.getpid():
            try:
                os.kill(pid, 0)
                return True
            except OSError:
                continue
    return False


def refuse_if_dvc_running(root: Path | str = ".") -> None:
    if _dvc_lock_held(Path(root)):
        raise SystemExit("refusing to start: `dvc repro` / `dvc exp run` is running in this directory "
                         "(both front doors write the same outputs); wait for it to finish")


def refuse_if_snakemake_running(root: Path | str = ".") -> None:
    """Called by every stage run under DVC: Snakemake holds .snakemake/locks while it runs."""
    locks = Path(root) / ".snakemake" / "locks"
    if os.environ.get("DVC_STAGE") and locks.is_dir() and any(locks.iterdir()):
        raise SystemExit("refusing to run under DVC: Snakemake is running in this directory (.snakemake/locks); "
                         "wait for it, or run `snakemake --unlock` if it was killed")


def forget_snakemake_records(p, root: Path | str = ".") -> list:
    """Called by every stage run under DVC: drop Snakemake's records of the outputs this stage rewrites.

    Snakemake keeps, per output, the parameters it last ran the job with (.snakemake/metadata/<urlsafe
    base64 of the path>, its file persistence). When DVC reruns a stage with other parameters, that record
    is stale and Snakemake would rerun the job although its outputs match params.yaml; without a record
    Snakemake judges the outputs by modification time, so after `dvc repro` `snakemake -n` plans nothing.
    Returns the records removed."""
    import base64

    from .dag import Context, keys_of, stage
    from .layout import Layout

    name = os.environ.get("DVC_STAGE", "").rpartition(":")[2]  # "stage@key", or "file:stage@key"
    meta = Path(root) / ".snakemake" / "metadata"
    if not name or not meta.is_dir():
        return []
    st_name, _, key = name.partition("@")
    try:
        st = stage(st_name)
    except KeyError:
        return []
    if key and key not in keys_of(st, Context(p)):
        return []
    removed = []
    for path in st.outs(Layout(p["profile"]), key or None):
        record = meta / base64.urlsafe_b64encode(str(path).encode()).decode()
        if len(record.name) < 255 and record.is_file():  # longer names are split into folders: none of ours
            record.unlink()
            removed.append(record)
    return removed


def record_in_dvc(root: Path | str = ".") -> None:
    """After a successful Snakemake run, record the finished stages in dvc.lock (`dvc commit`), so that
    `dvc status` agrees with Snakemake. Only inside a DVC repository."""
    from .dag import dvc_commit_targets

    root = Path(root)
    if not (root / ".dvc").is_dir() or shutil.which("dvc") is None:
        return
    targets, finished = dvc_commit_targets(root)
    if not targets:
        return
    out = subprocess.run(["dvc", "commit", "--force", "--quiet", *targets], cwd=root, capture_output=True, text=True)
    if out.returncode:
        print(f"dvc commit failed (dvc status will show the stages as changed):\n{out.stderr[-2000:]}")
    else:
        print(f"recorded {finished} finished stages in dvc.lock (dvc commit)")
