"""How wide `dvc exp show` is: the README's comparison recipe on the smoke profile, measured.

In a clean clone of this repository: a committed baseline run of the smoke profile, then three DVC experiments
that each change one parameter (the training pool, the sampler's rho grid, an unconditional guidance weight);
then counts the columns a terminal shows (the CSV's, with Experiment/rev/typ/parent as one) of the full
`dvc exp show`, of `--only-changed`, and of the README's recipe (`aot-diffusion compare --csv`: dependency
hashes dropped, the held-out floor kept), and the width of `aot-diffusion compare`'s transposed table.
Writes results/bench/exp_show_columns.json. About 12 minutes on a 2-core CPU.

    python benchmarks/exp_show_columns.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = {  # name -> the one parameter it changes (DVC -S syntax, composed with profile=smoke)
    "pool": "train.pool_size=32",  # smoke's is 64
    "rho": "sample.rho=[7,72]",
    "weight": "guidance.weight_uncond=3.0",
}


def sh(cmd, cwd, both=False, **kw):
    env = {**os.environ, "PYTHONPATH": str(Path(cwd) / "src")}  # the clone's package, not an installed one
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, **kw)
    if out.returncode:
        raise SystemExit(f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr if both else out.stdout


def columns(csv_text: str) -> list:
    return [c for c in next(csv.reader(io.StringIO(csv_text))) if c not in ("rev", "typ", "parent")]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # every command this script waited for
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="exp_show_"))
    work.mkdir(parents=True, exist_ok=True)
    proj = work / "repo"
    sh(["git", "clone", "-q", str(ROOT), str(proj)], work)
    git = ["git", "-c", "user.email=bench@example.invalid", "-c", "user.name=bench"]
    t0 = time.perf_counter()
    print("baseline: snakemake --config profile=smoke", flush=True)
    sh(["snakemake", "--cores", "2", "--config", "profile=smoke"], proj)
    sh(["aot-diffusion", "offline-plots"], proj)
    sh([*git, "add", "-A"], proj)
    sh([*git, "commit", "-qm", "smoke baseline"], proj)
    warnings = {}
    for name, change in EXPERIMENTS.items():
        print(f"experiment {name}: -S {change}", flush=True)
        log = sh(["dvc", "exp", "run", "-S", "profile=smoke", "-S", change, "-n", name], proj, both=True)
        warnings[name] = sum(line.startswith("WARNING") for line in log.splitlines())
    status_lines = len(sh(["dvc", "status"], proj).splitlines())
    exp_show = ["dvc", "exp", "show", "--csv"]
    full, changed = columns(sh(exp_show, proj)), columns(sh([*exp_show, "--only-changed"], proj))
    recipe = columns(sh(["aot-diffusion", "compare", "--csv"], proj))
    table = sh(["aot-diffusion", "compare"], proj).splitlines()
    result = dict(experiments=EXPERIMENTS, all_columns=len(full), only_changed_columns=len(changed),
                  only_changed_dependency_columns=len([c for c in changed if c not in recipe]),
                  compare_columns=len(recipe), compare=recipe, compare_table_width=max(map(len, table)),
                  compare_table_rows=len(table) - 1, exp_run_warning_lines=warnings,
                  bare_dvc_status_lines=status_lines, seconds_wall=round(time.perf_counter() - t0, 1),
                  cpu_seconds_children=round(_children_cpu(), 1), cpu_count=os.cpu_count())
    out = ROOT / "results" / "bench" / "exp_show_columns.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"dvc exp show: {len(full)} columns, --only-changed {len(changed)}, aot-diffusion compare --csv "
          f"{len(recipe)} (a {result['compare_table_width']}-character table); wrote {out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
