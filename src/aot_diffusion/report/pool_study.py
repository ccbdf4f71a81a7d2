"""The pool-size study's report: what a larger AOT pool buys, beside no pairing and nearest-of-k selection.

One row per variant (pool_study.variants): FD at every NFE with its interval and the paired difference to the
no-pairing baseline on the same latents (positive: the variant is better), curvature and truncation error,
and the mean image-noise distance of the training pairs. The tracked outputs (table csv/md/html, metrics and
figure) hold no wall-clock value, so two identical runs write the same bytes.

The cost (pairing time per pool, median training step time and its ratio to the no-pairing variant) is
wall-clock: it goes to the untracked ``Layout.study_cost`` (logs/<profile>/pool_size_cost.csv), from the
variants' timing logs (``Layout.timing_log``, written by the train stage) where they exist; a variant without
one is left out of it with a log line. The variants train as separate jobs (side by side under
`snakemake --cores all`), so the step-time ratio carries this machine's noise: benchmarks/pairing.py measures
the interleaved ratio.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..safe_pickle import safe_np_load
from ..layout import sample_key
from ..metrics import fd as fdm
from ..metrics.scores import METRICS
from ..utils import AtomicPath, atomic_write_text
from .tables import reference_features, _summary, ci_label, html_table, metric_label, metric_name, read_floor


def _baseline(p) -> str | None:
    """The variant without pairing: the reference of the paired differences and the step-time ratio."""
    return next((n for n, v in p["pool_study"]["variants"].items() if v["pairing"] == "none"), None)


def _training(L, variant) -> dict:
    log = pd.read_csv(L.loss_log(variant))
    paired = log[log["paired_distance"].notna()]  # windows in which at least one pool started
    return dict(paired_distance=float(paired["paired_distance"].mean()),
                random_distance=float(paired["random_distance"].mean()))


def cost_table(p, L, log=print) -> pd.DataFrame:
    """Wall-clock cost per variant, from its timing log (untracked): mean pairing ms per pool over the windows in
    which a pool started (as the loss log marks them), median step ms, and the ratio to the no-pairing variant's.
    A variant without a timing log (trained before timing logs, or elsewhere) is left out with a log line."""
    base, batch_size, rows = _baseline(p), p["train"]["batch_size"], []
    for name, v in p["pool_study"]["variants"].items():
        path = L.timing_log(name)
        if not path.exists():
            log(f"no timing log {path}: variant {name} left out of {L.study_cost}")
            continue
        t = pd.read_csv(path).merge(pd.read_csv(L.loss_log(name))[["step", "paired_distance"]], on="step")
        paired = t[t["paired_distance"].notna()]
        rows.append(dict(variant=name, pairing=v["pairing"], pool_size=v["pool_size"],
                         pair_ms=float(paired["pair_ms"].mean()),
                         step_ms=float(t["sec_per_kimg"].median() * batch_size)))
    df = pd.DataFrame(rows, columns=["variant", "pairing", "pool_size", "pair_ms", "step_ms"])
    if base is not None and (df["variant"] == base).any():
        df["step_ratio"] = df["step_ms"] / float(df.loc[df["variant"] == base, "step_ms"].iloc[0])
    return df


def study_table(p, L) -> pd.DataFrame:
    ref = safe_np_load(L.fd_reference)
    stats, f, seed = (ref["mu"], ref["sigma"]), p["fd"], p["sample"]["seeds"][0]
    base = _baseline(p)
    base_feats = safe_np_load(L.features(base)) if base else None
    rows = []
    for name, v in p["pool_study"]["variants"].items():
        row = dict(variant=name, pairing=v["pairing"], pool_size=v["pool_size"],
                   knn_k=p["train"]["knn_k"] if v["pairing"] == "knn" else np.nan)
        feats = safe_np_load(L.features(name))
        for _, r in _summary(pd.read_csv(L.fd(name)), p["fd"]["ci_level"]).iterrows():
            nfe = int(r["nfe"])
            for m in [m for m in METRICS if m in r]:  # every metric's record, as fd_nfe3, fd_nfe3_low, ...
                row.update({f"{m}_nfe{nfe}{end}": r[f"{m}{end}"] for end in ("", "_low", "_high") if f"{m}{end}" in r})
            if base is not None and name != base:
                key = sample_key(r["steps"], r["rho"], seed)
                diff, low, high = fdm.paired_diff_ci(base_feats[key], feats[key], stats, n_boot=f["bootstrap"],
                                                     seed=p["seed"], level=f["ci_level"],
                                                     ref_features=reference_features(p, ref, heldout=False))
                row.update({f"gain_nfe{nfe}": diff, f"gain_nfe{nfe}_low": low, f"gain_nfe{nfe}_high": high})
        curv = json.loads(L.curvature_metrics(name).read_text())
        row["curvature_mean"] = curv["curvature_mean"]
        row.update({f"trunc_err_nfe{t['nfe']}": t["error"] for t in curv["truncation"]})
        row.update(_training(L, name))
        rows.append(row)
    return pd.DataFrame(rows)


def _markdown(p, df: pd.DataFrame, floor: dict, cost_path: str) -> str:
    nfes = sorted(int(c[6:]) for c in df.columns if c.startswith("fd_nfe") and c[6:].isdigit())
    name = metric_name(p).upper()
    head = ["variant", "pairing", "pool"] + [f"{name} NFE {n} [{ci_label(p)} CI]" for n in nfes]
    head += [f"gain NFE {nfes[0]} [{ci_label(p)} CI]", "curvature", "paired dist"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = [r["variant"], r["pairing"] + (f" (k={int(r['knn_k'])})" if r["pairing"] == "knn" else ""),
                 str(int(r["pool_size"]))]
        cells += [f"{r[f'fd_nfe{n}']:.2f} [{r[f'fd_nfe{n}_low']:.2f}, {r[f'fd_nfe{n}_high']:.2f}]" for n in nfes]
        g = f"gain_nfe{nfes[0]}"
        cells.append(f"{r[g]:+.2f} [{r[g + '_low']:+.2f}, {r[g + '_high']:+.2f}]" if g in r and pd.notna(r[g])
                     else "baseline")
        cells += [f"{r['curvature_mean']:.4f}", f"{r['paired_distance']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    fd = floor["metrics"]["fd"]
    return (f"# Pool-size study: {metric_label(p)} ({p['profile']} profile, rho {p['pool_study']['rho']:g}, "
            f"{int(floor['n'])} samples per setting)\n\n"
            f"Real held-out floor at the same N: {fd.value:.2f} [{fd.low:.2f}, {fd.high:.2f}]. "
            f"gain: FD of the no-pairing baseline minus the variant's, same latents, {ci_label(p)} paired bootstrap "
            f"(positive: the variant is better; an interval that holds 0 is inside the noise). paired dist: mean "
            f"|x - n| of the training pairs (random pairs: {df['random_distance'].mean():.2f}). Pairing and step "
            f"times are wall-clock, so not here: they are in the untracked {cost_path} (from each variant's timing "
            f"log; separate jobs, not interleaved).\n\n" + "\n".join(lines) + "\n")


def _pool_axis(ax, sizes):
    """Log-scaled pool sizes, labelled at the sizes studied."""
    ax.set(xscale="log", xlabel="pool size")
    ax.set_xticks(sizes, [str(int(x)) for x in sizes])
    ax.minorticks_off()


def study_figure(p, df: pd.DataFrame, floor: dict, path):
    """Every pairing of the study: a curve over pool size where it was run at several sizes, else a level line."""
    from .figures import _figure, _save

    nfes = sorted(int(c[6:]) for c in df.columns if c.startswith("fd_nfe") and c[6:].isdigit())
    curves = {name: g.sort_values("pool_size") for name, g in df.groupby("pairing", sort=False)
              if g["pool_size"].nunique() > 1}
    levels = df[~df["pairing"].isin(list(curves))]
    sizes = sorted({int(x) for g in curves.values() for x in g["pool_size"]} or {int(x) for x in df["pool_size"]})
    markers, dashes = dict(zip(curves, "os^vD")), ("--", "-.", ":", (0, (5, 1)))
    fig, axes = _figure(2, w=4.0, h=3.8)
    ax = axes[0][0]
    for i, nfe in enumerate(nfes):
        color = f"C{i}"
        for name, g in curves.items():
            col = f"fd_nfe{nfe}"
            ax.errorbar(g["pool_size"], g[col], fmt=f"{markers[name]}-", ms=3, color=color, capsize=2,
                        yerr=[g[col] - g[f"{col}_low"], g[f"{col}_high"] - g[col]], label=f"{name}, NFE {nfe}")
        for (_, r), ls in zip(levels.iterrows(), dashes):
            ax.axhline(r[f"fd_nfe{nfe}"], color=color, ls=ls, lw=1,
                       label=f"{r['variant']} ({r['pairing']})" if i == 0 else None)
    ax.axhline(floor["metrics"]["fd"].value, color="k", ls=":", lw=1, label=f"real held-out floor (N={int(floor['n'])})")
    ax.set(yscale="log", ylabel=metric_label(p), title="sample quality")
    _pool_axis(ax, sizes)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)  # below: the data fill the axes
    ax = axes[0][1]
    for name, g in curves.items():
        ax.plot(g["pool_size"], g["paired_distance"], f"{markers[name]}-", label=f"{name} pairs")
    for (_, r), ls in zip(levels.iterrows(), dashes):
        ax.axhline(r["paired_distance"], color="gray", ls=ls, lw=1, label=f"{r['variant']} ({r['pairing']})")
    ax.set(ylabel="mean |x - n| of training pairs", title="pairing distance")
    _pool_axis(ax, sizes)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    # no cost panel: pairing and step times are wall-clock (Layout.study_cost, untracked), and a tracked figure
    # must be the same bytes for two identical runs
    fig.suptitle(f"Pool-size study ({p['profile']} profile, unconditional, rho {p['pool_study']['rho']:g}, "
                 f"{ci_label(p)} bootstrap intervals)", fontsize=9)
    _save(fig, path)


def write_pool_study(p, L, log=print):
    """``p``: the parameters the study reads; ``L``: Layout(...).pool_study."""
    floor = read_floor(L)
    df = study_table(p, L)
    with AtomicPath(L.study_table("csv"), suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    atomic_write_text(L.study_table("md"), _markdown(p, df, floor, L.study_cost.relative_to(L.root).as_posix()))
    atomic_write_text(L.study_table("html"), html_table(df, f"Pool-size study ({p['profile']} profile): every column "
                                                            f"of {L.study_table('csv').name}"))
    study_figure(p, df, floor, L.study_figure)
    name = metric_name(p)
    metrics = {f"{r['variant']}.{name}_nfe{c[6:]}": float(r[c]) for _, r in df.iterrows()
               for c in df.columns if c.startswith("fd_nfe") and c[6:].isdigit()}
    atomic_write_text(L.study_metrics, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log(f"wrote {L.study_table('md')}, {L.study_figure} and {L.study_metrics}")
    cost = cost_table(p, L, log=log)  # wall-clock: untracked, beside the job logs
    with AtomicPath(L.study_cost, suffix=".csv") as tmp:
        cost.to_csv(tmp, index=False)
    log(f"wrote {L.study_cost} (wall-clock cost of {len(cost)} of {len(df)} variants; untracked)")
    return df
