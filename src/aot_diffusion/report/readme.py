"""The result tables of the README and its docs pages, generated from a run's files (``aot-diffusion readme``).

Each page of :data:`PAGES` holds blocks between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``; each is
written from the files a run wrote (docs/results/ holds the default run's copy), so the page shows
what the run measured, not what someone typed. ``--check`` fails when a block differs from what the files give
(a test runs it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml

__all__ = ["BLOCKS", "PAGES", "render", "update_pages", "update_readme"]

_BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def _params(results: Path) -> dict:
    return yaml.safe_load((results / "params.yaml").read_text())


def _stat(p) -> str:
    return "fd_heldout" if p["fd"]["headline"] == "heldout" else "fd"


def _nfes(p) -> list[int]:
    return [2 * s - 1 for s in p["sample"]["steps"]]


def _cell(v, lo, hi, signed=False, star=False) -> str:
    f = "{:+.1f}" if signed else "{:.1f}"
    text = f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"
    return text + (" *" if star else "")


def headline_seeds(results: Path) -> str:
    """Table 1's headline statistic at the first rho: per model, each training seed and their mean."""
    p, t1 = _params(results), pd.read_csv(results / "table1_fd_vs_nfe.csv")
    stat, rho = _stat(p), float(p["sample"]["rho"][0])
    rows = t1[(t1["rho"] == rho)]
    lines = ["| model | seed | " + " | ".join(f"NFE {n}" for n in _nfes(p)) + " |",
             "|:--|:--|" + ":--|" * len(_nfes(p))]
    for model in p["models"]:
        for seed in [*map(str, p["train"]["seeds"]), "mean"]:
            r = rows[(rows["model"] == model) & (rows["train_seed"].astype(str) == seed)].set_index("nfe")
            cells = [_cell(r.loc[n, stat], r.loc[n, f"{stat}_low"], r.loc[n, f"{stat}_high"]) for n in _nfes(p)]
            lines.append(f"| {model} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def aot_vs_edm(results: Path) -> str:
    """EDM minus AOT per training seed and their mean; `*` where the interval excludes 0."""
    p, d = _params(results), pd.read_csv(results / "aot_vs_edm.csv")
    rho = float(p["sample"]["rho"][0])
    d = d[d["rho"] == rho]
    lines = ["| pair | seed | " + " | ".join(f"NFE {n}" for n in _nfes(p)) + " |",
             "|:--|:--|" + ":--|" * len(_nfes(p))]
    for pair in dict.fromkeys(d["pair"]):
        for seed in [*map(str, p["train"]["seeds"]), "mean"]:
            r = d[(d["pair"] == pair) & (d["train_seed"].astype(str) == seed)].set_index("nfe")
            cells = [_cell(r.loc[n, "diff"], r.loc[n, "low"], r.loc[n, "high"], signed=True,
                           star=bool(r.loc[n, "outside_noise"])) for n in _nfes(p)]
            lines.append(f"| {pair} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def aot_vs_edm_seeds(results: Path) -> str:
    """EDM minus AOT from the K-seed run (`make seeds`; seeds4/RUN.md names its commit, command and cost),
    then, per pair, where the across-seed (hierarchical) interval puts AOT: better, worse, or inside the noise."""
    many = results / "seeds4"
    p, d = _params(many), pd.read_csv(many / "aot_vs_edm.csv")
    rho = float(p["sample"]["rho"][0])
    mean = d[(d["rho"] == rho) & (d["train_seed"].astype(str) == "mean")]
    lines = [aot_vs_edm(many).rstrip("\n"), ""]
    for pair in dict.fromkeys(mean["pair"]):
        r = mean[mean["pair"] == pair].sort_values("nfe")
        verdicts = {"better": [], "worse": [], "noise": []}
        for n, out, v in zip(r["nfe"], r["outside_noise"], r["diff"]):
            verdicts["noise" if not out else "better" if v > 0 else "worse"].append(f"NFE {n}")
        better, worse, noise = verdicts["better"], verdicts["worse"], verdicts["noise"]
        lines.append(f"- {pair}, over {len(p['train']['seeds'])} training seeds: AOT better at "
                     f"{', '.join(better) or 'no NFE'}; worse at {', '.join(worse) or 'no NFE'}; inside the noise at "
                     f"{', '.join(noise) or 'no NFE'}.")
    return "\n".join(lines) + "\n"


def curvature(results: Path) -> str:
    p, t3 = _params(results), pd.read_csv(results / "table3_curvature.csv")
    seeds = [str(s) for s in p["train"]["seeds"]]
    rho = float(p["sample"]["rho"][0])
    nfes = [2 * s - 1 for s in p["curvature"]["coarse_steps"]]
    lines = ["| model | seed | curvature | " + " | ".join(f"trunc. err. NFE {n}" for n in nfes) + " |",
             "|:--|:--|--:|" + "--:|" * len(nfes)]
    for model in p["models"]:
        r = t3[t3["model"] == model]
        r = r.set_index(r["train_seed"].astype(str))
        fmt = lambda col, spec: " / ".join(format(r.loc[s, col], spec) for s in seeds)  # noqa: E731
        cells = [fmt("curvature_mean", ".4f")] + [fmt(f"trunc_err_rho{rho:g}_nfe{n}", ".3g") for n in nfes]
        lines.append(f"| {model} | {' / '.join(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def hybrid(results: Path) -> str:
    """The unconditional hybrid samplers' headline FD (held-out statistics) beside the pure models."""
    p, h = _params(results), pd.read_csv(results / "hybrid_switch.csv")
    h = h[h["pair"] == "uncond"]
    switches = [f"{s:g}" for s in p["hybrid"]["switch_sigmas"]]

    def value(nfe, above, switch):
        rows = h[(h["nfe"] == nfe) & h["above"].str.startswith(above) & (h["switch_sigma"].astype(str) == switch)]
        return f"{rows['fd_heldout'].iloc[0]:.1f}"

    cols = (["pure EDM"] + [f"AOT > {s} > EDM" for s in switches] + [f"EDM > {s} > AOT" for s in switches]
            + ["pure AOT"])
    lines = ["| unconditional | " + " | ".join(cols) + " |", "|:--|" + "--:|" * len(cols)]
    for steps in p["hybrid"]["steps"]:
        nfe = 2 * steps - 1
        cells = ([value(nfe, "edm", "pure")] + [value(nfe, "aot", s) for s in switches]
                 + [value(nfe, "edm", s) for s in switches] + [value(nfe, "aot", "pure")])
        lines.append(f"| NFE {nfe} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def guidance(results: Path) -> str:
    """Table 2 at the standard and the paper's setting per discriminator."""
    p, t2 = _params(results), pd.read_csv(results / "table2_guidance.csv")
    std = (int(p["guidance"]["sample_steps"][0]), float(p["guidance"]["rho"][0]))
    lines = ["| method | disc. | window | test acc. (sigma < 0.1) | NFE 35, rho 7: unguided -> guided, gain | "
             "paper setting: unguided -> guided, gain |", "|:--|:--|:--|:--|:--|:--|"]

    def cell(r):
        gain = _cell(r["gain"], r["gain_low"], r["gain_high"], signed=True)
        gain = f"**{gain}**" if r["outside_noise"] else gain
        return f"{r['fd_unguided']:.1f} -> {r['fd_guided']:.1f}, {gain}"

    for disc in p["guidance"]["discriminators"]:
        rows = t2[t2["discriminator"] == disc]
        first = rows.iloc[0]
        at = rows[(rows["steps"] == std[0]) & (rows["rho"] == std[1])].iloc[0]
        other = rows[~((rows["steps"] == std[0]) & (rows["rho"] == std[1]))]
        paper = (f"NFE {int(other.iloc[0]['nfe'])}, rho {other.iloc[0]['rho']:g}: " + cell(other.iloc[0])
                 if len(other) else "")
        lines.append(f"| {first['method']} | {disc} | {first['sigma_window']} | {first['disc_test_accuracy']:.3f} "
                     f"({first['acc_sigma_<0.1']:.3f}) | {cell(at)} | {paper} |")
    return "\n".join(lines) + "\n"


def pool_study(results: Path) -> str:
    """The pool-size study's table as its run wrote it (docs/results/pool_size_study.md names that run)."""
    lines = (results / "pool_size_study.md").read_text().split("\n")
    return "\n".join(line for line in lines if line.startswith("|")) + "\n"


def default_job_cost(results: Path) -> str:
    """Where the default job's CPU goes, before and after the speed work, per stage kind (bench_default_job.json:
    benchmarks/default_job.py, each entry a fresh clone of the commit it names, run on the machine it names)."""
    import json

    runs = json.loads((results / "bench_default_job.json").read_text())
    labels = [label for label in ("before", "after") if label in runs] or list(runs)
    kinds = sorted({k for label in labels for k in runs[label]["per_kind"]},
                   key=lambda k: -max(runs[label]["per_kind"].get(k, {}).get("cpu_work", 0) for label in labels))

    def cpu(label, kind):
        k = runs[label]["per_kind"].get(kind)
        return f"{k['jobs']} | {k['cpu_work']:.0f} + {k['cpu_startup']:.0f}" if k else "0 | -"

    head = " | ".join(f"{label} ({runs[label]['commit']}): jobs | CPU-s work + start-up" for label in labels)
    lines = [f"| stage kind | {head} |", "|:--|" + "--:|--:|" * len(labels)]
    lines += [f"| {kind} | " + " | ".join(cpu(label, kind) for label in labels) + " |" for kind in kinds]
    rest = " | ".join(f" | {runs[label]['cpu_s'] - runs[label]['cpu_jobs']:.0f}" for label in labels)
    lines.append(f"| Snakemake, shells, interpreter exits, dvc commit | {rest} |")
    total = " | ".join(f"{runs[label]['jobs']} | **{runs[label]['cpu_s']:.0f} CPU-s, {runs[label]['wall_s'] / 60:.1f} min "
                       f"wall**" for label in labels)
    lines.append(f"| **default job** | {total} |")
    machines = sorted({f"{runs[label]['machine']['cpu']}, {runs[label]['cores']} cores" for label in labels})
    seeds = len(_params(results)["train"]["seeds"])
    notes = []
    for label in labels:
        r = runs[label]
        per_seed = sum(r["per_kind"][k]["cpu_work"] + r["per_kind"][k]["cpu_startup"]
                       for k in PER_TRAINING_SEED if k in r["per_kind"]) / seeds
        path = " -> ".join(f"{step['job']} ({step['wall_s']:.0f} s, waited {step['waited_s']:.0f})"
                           for step in r["critical_path"])
        notes.append(f"- {label}: each training seed costs {per_seed:.0f} CPU-s ({', '.join(PER_TRAINING_SEED)} of "
                     f"every model, 1/{seeds} of them); critical path {path}; a core idle for the last "
                     f"{r['tail']['seconds']:.0f} s ({', '.join(r['tail']['jobs'])}).")
    for label in [label for label in runs if label not in labels]:
        r = runs[label]
        notes.append(f"- {label.replace('_', ' ')} ({r['commit']}): {r['cpu_s']:.0f} CPU-s, {r['wall_s'] / 60:.1f} min "
                     f"wall, Snakemake and the rest {r['cpu_s'] - r['cpu_jobs']:.0f} CPU-s.")
    return "\n".join(lines) + f"\n\nMachine: {'; '.join(machines)}.\n\n" + "\n".join(notes) + "\n"


def default_job_time(results: Path) -> str:
    """The default job's last measured cost (bench_default_job.json's `latest` entry, else its last)."""
    import json

    runs = json.loads((results / "bench_default_job.json").read_text())
    label = "latest" if "latest" in runs else list(runs)[-1]
    r = runs[label]
    return (f"{r['jobs']} jobs, **{r['cpu_s']:.0f} CPU-seconds, {r['wall_s'] / 60:.1f} min wall** on "
            f"{r['machine']['cpu']} ({r['cores']} cores), commit {r['commit']}; per stage: "
            f"[docs/benchmarks.md](docs/benchmarks.md).\n")


def gpu_check(results: Path) -> str:
    """One GPU's numbers from benchmarks/gpu_check.py (bench_gpu_check.json names the card, commits and setup)."""
    import json

    g = json.loads((results / "bench_gpu_check.json").read_text())
    t, reh = g["train"], g["rehearsal"]
    rows = [("EDM, unconditional", t["no_aot_uncond"], None), ("AOT, unconditional, pool 512", t["aot_uncond_pool512"],
            t["ratio_pool512"]), ("EDM, conditional", t["no_aot_cond"], None),
            ("AOT, conditional, pool 2048 (class-wise)", t["aot_cond_pool2048"], t["ratio_pool2048"])]
    lines = [f"Measured on one {g['device']} (torch {g['torch']}), full-size NCSN++, batch {g['batch']} per GPU, "
             f"median over {g['steps']} steps:", "",
             "| training | img/s | s/step | AOT / EDM step time | peak GiB | pairing ms per pool (background) |",
             "|:--|--:|--:|--:|--:|--:|"]
    for name, r, ratio in rows:
        lines.append(f"| {name} | {r['img_per_s']:.0f} | {r['sec_per_step']:.3f} | "
                     f"{'-' if ratio is None else f'{ratio:.3f}'} | {r['peak_mem_gib']:.1f} | "
                     f"{r['pair_ms_per_pool']:.1f} |")
    evals = g["sampling_27nfe_img_per_s"] * 27
    lines += ["", f"Pairing alone (cost on the GPU, lap on the CPU): {g['pairing']['pool512_ms']:.1f} ms at pool 512, "
              f"{g['pairing']['pool2048_ms']:.1f} ms at pool 2048. Sampling at 27 NFE: "
              f"{g['sampling_27nfe_img_per_s']:.0f} img/s ({evals:.0f} network evaluations/s). The rehearsal DAG with "
              f"`device=cuda`: {'passed' if reh['ok'] else 'FAILED'} in {reh['wall_s']:.0f} s ({reh['ranks']} rank, "
              f"{reh['metrics_keys']} metrics).", "", f"Runs: {g['runs']['bench']}; {g['runs']['rehearsal']}. "
              f"Environment: {g['runs']['environment']}."]
    return "\n".join(lines) + "\n"


# The stages that run once per trained model: what one more training seed adds to the default job.
PER_TRAINING_SEED = ("train", "sample", "fd", "curvature")


BLOCKS = {"headline_seeds": headline_seeds, "aot_vs_edm": aot_vs_edm, "curvature": curvature, "hybrid": hybrid,
          "guidance": guidance, "pool_study": pool_study, "default_job_cost": default_job_cost,
          "gpu_check": gpu_check, "default_job_time": default_job_time, "aot_vs_edm_seeds": aot_vs_edm_seeds}


def render(results: Path) -> dict[str, str]:
    return {name: fn(Path(results)) for name, fn in BLOCKS.items()}


# The pages that hold generated blocks: the README and the docs pages it links.
PAGES = ("README.md", "docs/results.md", "docs/benchmarks.md", "docs/cifar10.md")


def update_pages(root: Path, results: Path, check: bool = False) -> list[str]:
    """:func:`update_readme` over every page of :data:`PAGES`; returns "page: block" for each that differed."""
    blocks = render(results)
    stale = [f"{page}: {name}" for page in PAGES
             for name in update_readme(Path(root) / page, results, check=check, blocks=blocks)]
    shown = "".join((Path(root) / page).read_text() for page in PAGES)
    return stale + [f"{name} (on no page)" for name in blocks if f"<!-- generated: {name} -->" not in shown]


def update_readme(readme: Path, results: Path, check: bool = False, blocks: dict | None = None) -> list[str]:
    """Fill a page's generated blocks from ``results``; with ``check`` only list the blocks that differ."""
    text, blocks = Path(readme).read_text(), blocks if blocks is not None else render(results)
    stale = [m["name"] for m in _BLOCK.finditer(text) if m["name"] in blocks and m["body"] != blocks[m["name"]]]
    if check:
        return stale
    new = _BLOCK.sub(lambda m: m.group(1) + blocks.get(m["name"], m["body"]) + m.group(4), text)
    if new != text:
        Path(readme).write_text(new)
    return stale
