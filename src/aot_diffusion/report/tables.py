"""Table 1 (sample quality vs NFE, with the real-data floor and intervals), Table 2 (Discriminator Guidance),
Table 3 (curvature, truncation error), and results/<profile>/metrics.json, the headline numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import scipy.stats

from ..layout import sample_key
from ..metrics import fd as fdm
from ..sampling import num_function_evals
from ..utils import AtomicPath, atomic_write_text

# The AOT paper's CIFAR-10 FIDs (50k samples, EDM protocol); EDM rows from the EDM paper.
PAPER_FID = {
    ("edm", False, 7.0, 18): 1.97, ("edm", True, 7.0, 18): 1.79,
    ("aot", False, 7.0, 18): 1.95, ("aot", False, 90.0, 14): 1.88,
    ("aot", True, 7.0, 18): 1.79, ("aot", True, 72.0, 15): 1.73,
}
# DG paper (EDM + DG) and AOT paper (AOT + AOT-DG) CIFAR-10 FIDs; (method, conditional) -> (rho, steps, fid).
PAPER_DG_FID = {
    ("EDM + DG", False): (7.0, 18, 1.77), ("EDM + DG", True): (7.0, 18, 1.64),
    ("AOT + AOT-DG", False): (None, 15, 1.68), ("AOT + AOT-DG", True): (None, 15, 1.58),
}


def metric_name(p) -> str:
    """Inception FID only on cifar10; offline profiles report FD in the digits-classifier features."""
    return "fid" if p["data"]["dataset"] == "cifar10" else "fd"


def ci_label(p) -> str:
    """The configured interval level as the tables and figures print it (fd.ci_level 0.95 -> '95%')."""
    return f"{100 * p['fd']['ci_level']:g}%"


def ci_key(p) -> str:
    """...and as metrics.json names it (0.95 -> 'ci95', 0.975 -> 'ci97_5')."""
    return "ci" + f"{100 * p['fd']['ci_level']:g}".replace(".", "_")


def metric_label(p) -> str:
    return ("FID (Inception, clean-fid legacy_tensorflow)" if p["data"]["dataset"] == "cifar10"
            else "FD (digits-classifier features)")


def _kind(p, model):
    return "aot" if p["models"][model]["aot"] else "edm"


def _write(df: pd.DataFrame, L, name: str, title: str):
    with AtomicPath(L.table(name, "csv"), suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    atomic_write_text(L.table(name, "md"), f"# {title}\n\n" + df.to_markdown(index=False, floatfmt=".4g") + "\n")


def _summary(df: pd.DataFrame, level: float) -> pd.DataFrame:
    """Per (rho, steps): one sampling seed: its value and bootstrap interval; several: the mean over seeds
    with a Student-t interval over the seeds' values (never a mean beside one seed's interval)."""
    rows = []
    for (rho, steps), g in df.sort_values("seed").groupby(["rho", "steps"]):
        row = dict(rho=rho, steps=steps, nfe=g["nfe"].iloc[0], seeds=len(g), n=g["n"].iloc[0],
                   disc_grad_evals=g["disc_grad_evals"].iloc[0])
        if "nn_train_dist" in g:
            row["nn_train_dist"] = g["nn_train_dist"].mean()
        for m in [m for m in ("fd", "kid", "fd_heldout") if m in g]:
            if len(g) == 1:
                row.update({m: g[m].iloc[0], f"{m}_low": g[f"{m}_low"].iloc[0], f"{m}_high": g[f"{m}_high"].iloc[0]})
            else:
                mean, half = g[m].mean(), scipy.stats.t.ppf((1 + level) / 2, len(g) - 1) * g[m].std(ddof=1) / len(g) ** 0.5
                row.update({m: mean, f"{m}_low": mean - half, f"{m}_high": mean + half})
        rows.append(row)
    return pd.DataFrame(rows)


def table1(p, L, floor) -> pd.DataFrame:
    # The floor row: held-out real images against the training statistics (fd columns), and real training
    # images against the held-out statistics (fd_heldout columns), at the same N; nn_train_dist of held-out images.
    held = floor.get("heldout", {})
    rows = [dict(model="real (floor)", conditional=np.nan, aot=np.nan, rho=np.nan, steps=np.nan, nfe=np.nan,
                 n=floor["n"], fd=floor["fd"], fd_low=floor["low"], fd_high=floor["high"], kid=floor["kid"],
                 kid_low=floor["kid_low"], kid_high=floor["kid_high"], fd_heldout=held.get("fd", np.nan),
                 fd_heldout_low=held.get("low", np.nan), fd_heldout_high=held.get("high", np.nan),
                 nn_train_dist=floor.get("nn_train_dist", np.nan))]
    for model, spec in p["models"].items():
        for _, r in _summary(pd.read_csv(L.fd(model)), p["fd"]["ci_level"]).iterrows():
            paper = PAPER_FID.get((_kind(p, model), spec["conditional"], float(r["rho"]), int(r["steps"])), np.nan)
            rows.append(dict(model=model, conditional=spec["conditional"], aot=spec["aot"], **r.drop("disc_grad_evals"),
                             paper_cifar10_fid=paper))
    return pd.DataFrame(rows)


def paired_differences(p, L) -> pd.DataFrame:
    """EDM minus AOT at every setting, from the same latents (first sampling seed), with a paired bootstrap."""
    ref = np.load(L.fd_reference)
    stats, f, rows = (ref["mu"], ref["sigma"]), p["fd"], []
    for cond in (False, True):
        edm = [m for m, s in p["models"].items() if s["conditional"] == cond and not s["aot"]]
        aot = [m for m, s in p["models"].items() if s["conditional"] == cond and s["aot"]]
        if not edm or not aot:
            continue
        fe, fa = np.load(L.features(edm[0])), np.load(L.features(aot[0]))
        seed = p["sample"]["seeds"][0]
        for rho in p["sample"]["rho"]:
            for steps in p["sample"]["steps"]:
                key = sample_key(steps, rho, seed)
                diff, low, high = fdm.paired_diff_ci(fe[key], fa[key], stats, n_boot=f["bootstrap"], seed=p["seed"],
                                                     level=f["ci_level"])
                rows.append(dict(pair="cond" if cond else "uncond", edm=edm[0], aot=aot[0], rho=rho, steps=steps,
                                 nfe=num_function_evals(steps), diff=diff, low=low, high=high,
                                 outside_noise=bool(low > 0 or high < 0)))
    return pd.DataFrame(rows)


def table2(p, L) -> pd.DataFrame:
    g = p["guidance"]
    settings = {(float(r), int(s)) for r in g["rho"] for s in g["steps_list"]}
    ref = np.load(L.fd_reference)
    stats, seed = (ref["mu"], ref["sigma"]), p["sample"]["seeds"][0]
    rows = []
    for disc, dspec in g["discriminators"].items():
        model = dspec["model"]
        kind, cond = _kind(p, model).upper(), p["models"][model]["conditional"]
        method = f"{kind} + {'AOT-DG' if dspec['aot'] else 'DG'}"
        held = json.loads(L.discriminator_metrics(disc).read_text())["heldout"]
        plain, guided = _summary(pd.read_csv(L.fd(model)), p["fd"]["ci_level"]), _summary(pd.read_csv(L.guided_fd(disc)), p["fd"]["ci_level"])
        fp, fg = np.load(L.features(model)), np.load(L.guided_features(disc))
        for _, r in guided.iterrows():
            if (float(r["rho"]), int(r["steps"])) not in settings:
                continue
            u = plain[(plain["rho"] == r["rho"]) & (plain["steps"] == r["steps"])].iloc[0]
            key = sample_key(r["steps"], r["rho"], seed)
            diff, low, high = fdm.paired_diff_ci(fp[key], fg[key], stats, n_boot=p["fd"]["bootstrap"], seed=p["seed"],
                                                 level=p["fd"]["ci_level"])
            paper = PAPER_DG_FID.get((method, cond))
            match = paper is not None and paper[1] == int(r["steps"]) and paper[0] in (None, float(r["rho"]))
            rows.append(dict(method=method, conditional=cond, discriminator=disc, rho=r["rho"], steps=int(r["steps"]),
                             nfe=int(r["nfe"]), disc_grad_evals=int(r["disc_grad_evals"]), fd_unguided=u["fd"],
                             fd_guided=r["fd"], gain=diff, gain_low=low, gain_high=high,
                             outside_noise=bool(low > 0 or high < 0), disc_heldout_accuracy=held["accuracy"],
                             **{f"acc_sigma_{b}": v["accuracy"] for b, v in held["bands"].items()},
                             paper_cifar10_fid=paper[2] if match else np.nan))
    return pd.DataFrame(rows)


def table3(p, L) -> pd.DataFrame:
    rows = []
    for model, spec in p["models"].items():
        m = json.loads(L.curvature_metrics(model).read_text())
        row = dict(model=model, conditional=spec["conditional"], aot=spec["aot"], curvature_mean=m["curvature_mean"])
        row.update({f"trunc_err_rho{t['rho']:g}_nfe{t['nfe']}": t["error"] for t in m["truncation"]})
        rows.append(row)
    return pd.DataFrame(rows)


def write_tables(p, L, log=print):
    floor = json.loads(L.fd_floor.read_text())
    name, label = metric_name(p), metric_label(p)
    t1, diffs, t2, t3 = table1(p, L, floor), paired_differences(p, L), table2(p, L), table3(p, L)
    n = int(floor["n"])
    _write(t1, L, "table1_fd_vs_nfe", f"Table 1: {label} vs NFE ({p['profile']} profile, {n} samples per setting; "
           f"{name}: against the training statistics, first row: N held-out real images (the floor); "
           f"{name}_heldout: against the held-out images' statistics (a model can't win it by memorising), first row: "
           f"N real training images; nn_train_dist: mean pixel distance to the nearest training image (first row: "
           f"held-out real images'); intervals: {ci_label(p)} bootstrap "
           f"(one sampling seed) or, with several (column seeds), the mean over seeds with its {ci_label(p)} t-interval; "
           f"paper column: CIFAR-10 FIDs of the AOT paper)")
    _write(t2, L, "table2_guidance", f"Table 2: Discriminator Guidance ({p['profile']} profile; gain = unguided "
           f"minus guided {name.upper()} on the same latents (the first sampling seed's) with its {ci_label(p)} "
           f"interval; outside_noise: the interval "
           "excludes 0; disc_grad_evals: discriminator gradients per sampler run on top of the NFE)")
    _write(t3, L, "table3_curvature", f"Table 3: ODE curvature and truncation error ({p['profile']} profile)")
    with AtomicPath(L.fd_curves, suffix=".csv") as tmp:  # for `dvc plots diff`
        t1[t1["rho"].notna()][["model", "rho", "nfe", "fd"]].to_csv(tmp, index=False)
    # Headline numbers for `dvc exp show`: rho 7 (EDM's default) settings, the floor, differences, curvature.
    # Intervals as {low, high}: `dvc exp show` drops list-valued metrics.
    metrics = {f"{name}_floor": floor["fd"], f"{name}_floor_ci": dict(low=floor["low"], high=floor["high"])}
    if "heldout" in floor:
        h = floor["heldout"]
        metrics.update({f"{name}_heldout_floor": h["fd"], f"{name}_heldout_floor_ci": dict(low=h["low"], high=h["high"]),
                         "heldout_images.nn_train_dist": floor["nn_train_dist"]})
    if L.feature_network_metrics.exists():
        metrics.update(json.loads(L.feature_network_metrics.read_text()))
    rho0 = p["sample"]["rho"][0]
    for _, r in t1[t1["rho"] == rho0].iterrows():
        suffix = f"rho{r['rho']:g}_nfe{int(r['nfe'])}"
        metrics[f"{r['model']}.{name}_{suffix}"] = float(r["fd"])
        metrics[f"{r['model']}.{name}_{suffix}_ci"] = dict(low=float(r["fd_low"]), high=float(r["fd_high"]))
        metrics[f"{r['model']}.kid_{suffix}"] = float(r["kid"])
        if "fd_heldout" in r and not pd.isna(r["fd_heldout"]):
            metrics[f"{r['model']}.{name}_heldout_{suffix}"] = float(r["fd_heldout"])
            metrics[f"{r['model']}.{name}_heldout_{suffix}_ci"] = dict(low=float(r["fd_heldout_low"]),
                                                                       high=float(r["fd_heldout_high"]))
            metrics[f"{r['model']}.nn_train_dist_{suffix}"] = float(r["nn_train_dist"])
    for _, r in diffs[diffs["rho"] == rho0].iterrows():
        metrics[f"aot_vs_edm.{r['pair']}.rho{r['rho']:g}_nfe{int(r['nfe'])}"] = dict(
            diff=float(r["diff"]), **{ci_key(p): dict(low=float(r["low"]), high=float(r["high"]))})
    for _, r in t3.iterrows():
        metrics[f"{r['model']}.curvature_mean"] = float(r["curvature_mean"])
    for disc in p["guidance"]["discriminators"]:
        held = json.loads(L.discriminator_metrics(disc).read_text())["heldout"]
        metrics[f"{disc}.heldout_accuracy"] = held["accuracy"]
        metrics[f"{disc}.heldout_accuracy_by_sigma"] = {b: v["accuracy"] for b, v in held["bands"].items()}
    atomic_write_text(L.metrics, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    _write(diffs, L, "aot_vs_edm", f"EDM minus AOT {label} on the same latents (the first sampling seed's; "
           f"{p['profile']} profile, "
           f"{n} samples; {ci_label(p)} paired bootstrap; outside_noise: the interval excludes 0)")
    log(f"wrote {L.results / 'tables'} and {L.metrics}")
    return t1, t2, t3
