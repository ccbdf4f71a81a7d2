"""How wide `dvc exp show` is: the README's comparison recipe on the smoke profile, measured.

In a clean clone of this repository: a committed baseline run of the smoke profile, then three DVC experiments
that each change one parameter (a training pool, the sampler's rho grid, an unconditional guidance weight);
then counts the columns of `dvc exp show --only-changed --csv` (what a terminal would show) and of the full
table. Writes results/bench/exp_show_columns.json. About 10 minutes on a 2-core CPU.

    python benchmarks/exp_show_columns.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = {  # name -> the one parameter it changes (DVC -S syntax, composed with profile=smoke)
    "pool": "train.pool_size=64",
    "rho": "sample.rho=[7,72]",
    "weight": "guidance.weight_uncond=3.0",
}


def sh(cmd, cwd, **kw):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)
    if out.returncode:
        raise SystemExit(f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def columns(proj, *flags) -> list:
    text = sh(["dvc", "exp", "show", "--csv", *flags], proj)
    return next(csv.reader(io.StringIO(text)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="exp_show_"))
    proj = work / "repo"
    sh(["git", "clone", "-q", str(ROOT), str(proj)], work)
    git = ["git", "-c", "user.email=bench@example.invalid", "-c", "user.name=bench"]
    t0 = time.perf_counter()
    print("baseline: snakemake --config profile=smoke", flush=True)
    sh(["snakemake", "--cores", "2", "--config", "profile=smoke"], proj)
    sh(["aot-diffusion", "offline-plots"], proj)
    sh([*git, "add", "-A"], proj)
    sh([*git, "commit", "-qm", "smoke baseline"], proj)
    for name, change in EXPERIMENTS.items():
        print(f"experiment {name}: -S {change}", flush=True)
        sh(["dvc", "exp", "run", "-S", "profile=smoke", "-S", change, "-n", name], proj)
    changed, full = columns(proj, "--only-changed"), columns(proj)
    result = dict(experiments=EXPERIMENTS, only_changed_columns=len(changed), all_columns=len(full),
                  only_changed=changed, seconds=round(time.perf_counter() - t0, 1))
    out = ROOT / "results" / "bench" / "exp_show_columns.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"dvc exp show --only-changed: {len(changed)} columns (all: {len(full)}); wrote {out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
