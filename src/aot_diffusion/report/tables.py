"""Table 1 (FID vs NFE, paper's CIFAR-10 values beside ours) and Table 3 (curvature, truncation error)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..utils import atomic_path, atomic_write_text

# The AOT paper's CIFAR-10 FIDs (50k samples, EDM protocol); EDM rows from the EDM paper.
PAPER_FID = {
    ("edm", False, 7.0, 18): 1.97, ("edm", True, 7.0, 18): 1.79,
    ("aot", False, 7.0, 18): 1.95, ("aot", False, 90.0, 14): 1.88,
    ("aot", True, 7.0, 18): 1.79, ("aot", True, 72.0, 15): 1.73,
}


def _kind(params, model):
    return "aot" if params["models"][model]["aot"] else "edm"


def _write(df: pd.DataFrame, stem: Path, title: str):
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    atomic_write_text(stem.with_suffix(".md"), f"# {title}\n\n" + df.to_markdown(index=False, floatfmt=".4g") + "\n")


def table1(params, fid_dir: Path) -> pd.DataFrame:
    rows = []
    for model, spec in params["models"].items():
        df = pd.read_csv(fid_dir / f"{model}.csv")
        for (rho, steps), g in df.groupby(["rho", "steps"]):
            paper = PAPER_FID.get((_kind(params, model), spec["conditional"], float(rho), int(steps)))
            rows.append(dict(model=model, conditional=spec["conditional"], aot=spec["aot"], rho=rho, steps=int(steps),
                             nfe=int(g["nfe"].iloc[0]), fid_min=g["fid"].min(), fid_mean=g["fid"].mean(),
                             fid_std=g["fid"].std(ddof=1) if len(g) > 1 else 0.0, seeds=len(g),
                             paper_cifar10_fid=paper if paper is not None else np.nan))
    return pd.DataFrame(rows).sort_values(["conditional", "rho", "steps", "aot"]).reset_index(drop=True)


def table3(params, curvature_dir: Path) -> pd.DataFrame:
    rows = []
    for model, spec in params["models"].items():
        m = json.loads((curvature_dir / f"{model}.json").read_text())
        row = dict(model=model, conditional=spec["conditional"], aot=spec["aot"], curvature_mean=m["curvature_mean"])
        row.update({k: v for k, v in m.items() if k.startswith("trunc_err")})
        rows.append(row)
    return pd.DataFrame(rows)


# DG paper (EDM + DG) and AOT paper (AOT + AOT-DG) CIFAR-10 FIDs; (kind, conditional) -> (rho, steps, fid).
PAPER_DG_FID = {
    ("edm", False): (7.0, 18, 1.97), ("edm", True): (7.0, 18, 1.79),
    ("edm+dg", False): (7.0, 18, 1.77), ("edm+dg", True): (7.0, 18, 1.64),
    ("aot", False): (7.0, 18, 1.95), ("aot", True): (7.0, 18, 1.79),
    ("aot+aot-dg", False): (None, 15, 1.68), ("aot+aot-dg", True): (None, 15, 1.58),
}


def table2(params, fid_dir: Path, dg_dir: Path) -> pd.DataFrame:
    g = params["guidance"]
    settings = {(float(r), int(s)) for r in g["rho"] for s in g["steps_list"]}
    rows = []

    def add(label, kind, conditional, df, disc=""):
        acc = np.nan
        if disc:
            acc = json.loads((dg_dir / "discriminators" / f"{disc}.json").read_text())["heldout_accuracy"]
        for (rho, steps), grp in df.groupby(["rho", "steps"]):
            if (float(rho), int(steps)) not in settings:
                continue
            paper = PAPER_DG_FID.get((kind, conditional))
            match = paper is not None and paper[1] == int(steps) and paper[0] in (None, float(rho))
            rows.append(dict(method=label, conditional=conditional, discriminator=disc or "-", rho=rho,
                             steps=int(steps), nfe=int(grp["nfe"].iloc[0]),
                             disc_grad_evals=int(grp["disc_grad_evals"].iloc[0]) if "disc_grad_evals" in grp else 0,
                             fid_min=grp["fid"].min(), fid_mean=grp["fid"].mean(),
                             fid_std=grp["fid"].std(ddof=1) if len(grp) > 1 else 0.0,
                             disc_heldout_accuracy=acc, paper_cifar10_fid=paper[2] if match else np.nan))

    for model, spec in params["models"].items():
        kind = _kind(params, model)
        add(kind.upper(), kind, spec["conditional"], pd.read_csv(fid_dir / f"{model}.csv"))
    for disc, dspec in g["discriminators"].items():
        mspec = params["models"][dspec["model"]]
        kind = _kind(params, dspec["model"])
        label = f"{kind.upper()} + {'AOT-DG' if dspec['aot'] else 'DG'}"
        add(label, f"{kind}+{'aot-dg' if dspec['aot'] else 'dg'}", mspec["conditional"],
            pd.read_csv(dg_dir / "fid" / f"{disc}.csv"), disc)
    return pd.DataFrame(rows).sort_values(["conditional", "rho", "steps", "method"]).reset_index(drop=True)


def write_tables(params, *, fid_dir, curvature_dir, dg_dir, out_dir, metrics_path, classifier_metrics, log=print):
    out_dir.mkdir(parents=True, exist_ok=True)
    t1, t3 = table1(params, fid_dir), table3(params, curvature_dir)
    t2 = table2(params, fid_dir, dg_dir)
    _write(t2, out_dir / "table2_guidance",
           f"Table 2: Discriminator Guidance ({params['profile']} profile; disc_grad_evals: discriminator "
           "gradient evaluations per run, on top of the NFE; paper column: CIFAR-10)")
    _write(t1, out_dir / "table1_fid_vs_nfe",
           f"Table 1: FID vs NFE ({params['profile']} profile; paper column: CIFAR-10 values of the AOT paper)")
    _write(t3, out_dir / "table3_curvature",
           f"Table 3: ODE curvature and truncation error ({params['profile']} profile)")
    # Flat metrics for `dvc metrics show` / `dvc exp show`.
    metrics = json.loads(Path(classifier_metrics).read_text())
    best = t1.loc[t1.groupby("model")["fid_min"].idxmin()]
    for _, r in best.iterrows():
        metrics[f"{r['model']}.best_fid"] = float(r["fid_min"])
        metrics[f"{r['model']}.best_fid_nfe"] = int(r["nfe"])
    for _, r in t1.iterrows():
        metrics[f"{r['model']}.fid_rho{r['rho']:g}_nfe{r['nfe']}"] = float(r["fid_min"])
    for _, r in t3.iterrows():
        for k, v in r.items():
            if k == "curvature_mean" or k.startswith("trunc_err"):
                metrics[f"{r['model']}.{k}"] = float(v)
    for _, r in t2[t2["discriminator"] != "-"].iterrows():
        metrics[f"{r['discriminator']}.fid_rho{r['rho']:g}_nfe{r['nfe']}"] = float(r["fid_min"])
        metrics[f"{r['discriminator']}.heldout_accuracy"] = float(r["disc_heldout_accuracy"])
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log(f"[tables] wrote {out_dir}/table{{1,2,3}}_*.{{csv,md}} and {metrics_path}")
    return t1, t2, t3
