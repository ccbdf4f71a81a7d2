"""Where the default job's time goes: a fresh clone of one commit runs `snakemake --cores N` (the default
profile), and each job's timing file (logs/<profile>/timing/<job>.json, written by the CLI: its wall span and its
CPU-seconds, split into start-up and the stage's work) is summed per stage kind; the rest of the CPU is Snakemake,
its shells and `dvc commit`. The critical path is walked back from the last job to finish, through the input that
finished last, with the seconds each job waited for a free core.

    python benchmarks/default_job.py --label after                # HEAD
    python benchmarks/default_job.py --rev b7235f1 --label before
    python benchmarks/default_job.py --summarise /path/to/run --label x   # a run that is already there

Each label is one entry of results/bench/default_job.json (other labels are kept); a table is printed. CPU
seconds are the measure to compare across machines (wall time differs up to 2.5x); the JSON records the CPU model
and the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "bench" / "default_job.json"


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def upstream_map(root: Path, env: dict) -> dict:
    """{job: [jobs it reads from]} of the run's own parameters, from the clone's own stage table."""
    code = ("import json; from aot_diffusion import dag; from aot_diffusion.params import load_params; "
            "plan = dag.Plan(load_params('params.yaml')); "
            "print(json.dumps({dag.job_id(*j): [dag.job_id(*u) for u in plan.upstream(*j)] "
            "for j in plan.jobs() if j[0] in dag.STAGES}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def critical_path(jobs: dict, ups: dict) -> list:
    """From the last job to finish back through the input that finished last; per step the seconds between
    that input's end and the job's start (waiting for a core, or Snakemake's scheduling)."""
    path, job = [], max(jobs, key=lambda j: jobs[j]["end"])
    while job:
        before = [u for u in ups.get(job, []) if u in jobs]
        last = max(before, key=lambda u: jobs[u]["end"]) if before else None
        waited = jobs[job]["start"] - (jobs[last]["end"] if last else min(j["start"] for j in jobs.values()))
        path.append({"job": job, "wall_s": round(jobs[job]["end"] - jobs[job]["start"], 1),
                     "waited_s": round(max(waited, 0.0), 1)})
        job = last
    return path[::-1]


def single_core_tail(jobs: dict, cores: int) -> dict:
    """The stretch before the end during which fewer jobs ran than there are cores, and what ran in it."""
    end = max(j["end"] for j in jobs.values())
    events = sorted({t for j in jobs.values() for t in (j["start"], j["end"])})
    start = end
    for t0, t1 in reversed(list(zip(events, events[1:]))):
        running = [n for n, j in jobs.items() if j["start"] <= t0 and j["end"] >= t1]
        if len(running) >= cores:
            break
        start = t0
    return {"seconds": round(end - start, 1),
            "jobs": sorted(n for n, j in jobs.items() if j["end"] > start)}


def summarise(root: Path, profile: str, env: dict, cores: int) -> dict:
    timing = root / "logs" / profile / "timing"
    jobs = {f.stem: json.loads(f.read_text()) for f in sorted(timing.glob("*.json"))}
    if not jobs:
        raise SystemExit(f"no timing files in {timing}: did the run finish?")
    kinds: dict = {}
    for name, j in jobs.items():
        k = kinds.setdefault(name.split("@")[0], {"jobs": 0, "cpu_startup": 0.0, "cpu_work": 0.0, "wall": 0.0})
        k["jobs"] += 1
        k["cpu_startup"] += j["cpu_startup"]
        k["cpu_work"] += j["cpu_work"]
        k["wall"] += j["end"] - j["start"]
    kinds = {n: {key: round(v, 1) for key, v in k.items()} for n, k in sorted(kinds.items())}
    ups = upstream_map(root, env)
    return {"jobs": len(jobs), "per_kind": kinds,
            "cpu_jobs": round(sum(j["cpu"] for j in jobs.values()), 1),
            "cpu_startup": round(sum(j["cpu_startup"] for j in jobs.values()), 1),
            "span_jobs_s": round(max(j["end"] for j in jobs.values()) - min(j["start"] for j in jobs.values()), 1),
            "critical_path": critical_path(jobs, ups), "tail": single_core_tail(jobs, cores)}


def run_fresh_clone(rev: str, cores: int, keep: bool) -> tuple[Path, dict, dict]:
    root = Path(tempfile.mkdtemp(prefix="aot-default-job-"))
    subprocess.run(["git", "clone", "-q", str(REPO), str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "checkout", "-q", rev], check=True)
    # the clone's package, not the editable install, through a launcher of its own (an older commit's CLI may
    # have another entry point than the installed console script names)
    bin_dir = root / ".bench-bin"
    bin_dir.mkdir()
    launcher = bin_dir / "aot-diffusion"
    launcher.write_text(f"#!{sys.executable}\nimport sys\nfrom aot_diffusion import cli\n"
                        "sys.exit((getattr(cli, 'entry', None) or cli.main)())\n")
    launcher.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(root / "src"), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    load0, cpu0, t0 = os.getloadavg(), children_cpu(), time.perf_counter()
    with open(root / "snakemake.out", "w") as log:
        done = subprocess.run(["snakemake", "--cores", str(cores)], cwd=root, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if done.returncode:
        raise SystemExit(f"snakemake failed ({done.returncode}): {root / 'snakemake.out'}")
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    run = {"commit": commit, "cores": cores, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
           "loadavg_start": load0, "loadavg_end": os.getloadavg(), "clone": str(root) if keep else None}
    return root, env, run


def table(entry: dict) -> str:
    rows = ["| stage kind | jobs | CPU-s start-up | CPU-s work | wall-s (sum) |", "|---|---:|---:|---:|---:|"]
    for name, k in entry["per_kind"].items():
        rows.append(f"| {name} | {k['jobs']} | {k['cpu_startup']:.1f} | {k['cpu_work']:.1f} | {k['wall']:.1f} |")
    rows.append(f"| **jobs** | {entry['jobs']} | {entry['cpu_startup']:.1f} | "
                f"{entry['cpu_jobs'] - entry['cpu_startup']:.1f} | |")
    if "cpu_s" in entry:
        rows.append(f"| Snakemake, shells, dvc commit | | {entry['cpu_s'] - entry['cpu_jobs']:.1f} | | |")
        rows.append(f"| **default job** | | {entry['cpu_s']:.1f} CPU-s | | {entry['wall_s']:.1f} s wall |")
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", default="HEAD", help="the commit to clone and run (default HEAD)")
    ap.add_argument("--label", required=True, help="the entry of the JSON to write (e.g. before, after)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--profile", default="digits")
    ap.add_argument("--summarise", type=Path, default=None, help="a finished run's folder: summarise only")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its results and logs)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.summarise:
        root, run = args.summarise.resolve(), {"summarised": str(args.summarise)}
        env = dict(os.environ, PYTHONPATH=str(root / "src"))
    else:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", args.rev], capture_output=True, text=True,
                             check=True).stdout.strip()
        root, env, run = run_fresh_clone(rev, args.cores, args.keep)
    entry = {**run, "machine": {"cpu": cpu_model(), "cores_online": os.cpu_count()},
             **summarise(root, args.profile, env, args.cores)}
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.label] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(entry))
    print("critical path: " + " -> ".join(f"{s['job']} ({s['wall_s']:.0f} s, waited {s['waited_s']:.0f})"
                                          for s in entry["critical_path"]))
    print(f"tail with a core idle: {entry['tail']['seconds']} s ({', '.join(entry['tail']['jobs'])})")
    print(f"wrote {args.out} [{args.label}]")


if __name__ == "__main__":
    main()
