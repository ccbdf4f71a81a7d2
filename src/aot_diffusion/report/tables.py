"""Table 1 (sample quality vs NFE, with the real-data floor and intervals), Table 2 (Discriminator Guidance),
Table 3 (curvature, truncation error), and results/<profile>/metrics.json, the headline numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import scipy.stats

from ..dag import Context
from ..safe_pickle import safe_np_load
from ..layout import sample_key
from ..metrics import fd as fdm
from ..metrics.scores import METRICS, Estimate, columns, interval_metrics
from ..params import edm_aot_pairs, guidance_settings, instance_key, model_instances
from .. import paper
from ..sampling import num_function_evals
from ..utils import AtomicPath, atomic_write_text

def metric_name(p) -> str:
    """FID with Inception's features only (cifar10); otherwise FD in the trained classifier's features."""
    return "fid" if p["fd"]["features"] == "inception" else "fd"


def ci_label(p) -> str:
    """The configured interval level as the tables and figures print it (fd.ci_level 0.95 -> '95%')."""
    return f"{100 * p['fd']['ci_level']:g}%"


def metric_label(p) -> str:
    if p["fd"]["features"] == "inception":
        return "FID (Inception, clean-fid legacy_tensorflow)"
    if p["data"]["dataset"] == "cifar10":  # the rehearsal
        return "FD (STAND-IN classifier features, not Inception: not FID)"
    return "FD (digits-classifier features)"


def headline_stat(p) -> str:
    """The metric of the headline (fd.headline): FD against the held-out images' statistics, or against the
    training set's (the papers' FID)."""
    return "fd_heldout" if p["fd"]["headline"] == "heldout" else "fd"


def headline_label(p) -> str:
    """The headline statistic as every table title names it."""
    return (f"{metric_key(p, headline_stat(p))}: against the "
            + ("held-out images' statistics" if p["fd"]["headline"] == "heldout" else "training set's statistics"))


def reference_stats(p, ref) -> tuple:
    """(mu, sigma) of the headline statistic from stage fd_reference's file."""
    return (ref["mu_heldout"], ref["sigma_heldout"]) if p["fd"]["headline"] == "heldout" else (ref["mu"], ref["sigma"])


def reference_features(p, ref, heldout: bool | None = None):
    """The reference images' features a two-sample interval resamples (fd.interval), None for one-sample; by
    default those of the headline statistic."""
    if p["fd"]["interval"] != "two_sample":
        return None
    heldout = p["fd"]["headline"] == "heldout" if heldout is None else heldout
    return ref["heldout_features"] if heldout else ref["train_features"]


def resampled(p) -> str:
    """What an interval resamples, as captions say it."""
    return ("two-sample bootstrap: the generated images and the reference images resampled"
            if p["fd"]["interval"] == "two_sample" else
            "one-sample bootstrap: the generated images resampled, the reference held fixed")


def metric_key(p, metric: str) -> str:
    """A metric's name in metrics.json and the tables' titles: FD metrics are 'fid...' with Inception's features."""
    return metric_name(p) + metric[2:] if metric.startswith("fd") else metric


def _headline(key: str, value, low=None, high=None, name: str = "value") -> dict:
    """One headline number as metrics.json holds it: the value, or {name: value, interval: "[low, high]"} where
    it has one. The bounds are one text column in `dvc exp show`, so a setting costs two columns, not three
    (three single-parameter experiments fit a screen); the tables hold the bounds as numbers."""
    if low is None or pd.isna(low):
        return {key: float(value)}
    return {key: {name: float(value), "interval": f"[{low:.4g}, {high:.4g}]"}}


def _training_of(p, model):
    """The papers' name of a model's training: EDM (no pairing) or AOT (its noise paired)."""
    return "edm" if p["models"][model]["pairing"] == "none" else "aot"


BOOLEAN_COLUMNS = ("conditional", "outside_noise", "boosting", "within_tolerance")


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Booleans as True / False in every table (not 0 / 1 where a row without one made the column numeric); a
    column of that name holding names (aot_vs_edm's `aot`: the AOT model) stays as it is."""
    df = df.copy()
    for col in BOOLEAN_COLUMNS:
        if col in df and all(v in (True, False, 0, 1, "") or pd.isna(v) for v in df[col]):
            df[col] = [bool(v) if pd.notna(v) and v != "" else None for v in df[col]]
    return df


def _markdown(df: pd.DataFrame) -> str:
    """A table as Markdown: empty cells where there is no value (not 'nan')."""
    return df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval="")


def html_table(df: pd.DataFrame, title: str) -> str:
    """A table as a standalone HTML page (what `snakemake --report` shows inline): title, then the rows."""
    import html

    cells = df.astype(object).map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))  # not 'nan'
                                  else f"{v:.4g}" if isinstance(v, float) else v)
    body = cells.to_html(index=False, border=0)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><style>table{{border-collapse:collapse;"
            f"font:12px sans-serif}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}</style>"
            f"</head><body><p>{html.escape(title)}</p>\n{body}\n</body></html>\n")


def latex_table(df: pd.DataFrame, title: str) -> str:
    """A table as a booktabs LaTeX `table` for a paper (\\usepackage{booktabs}): the caption is the title, numbers
    to 4 significant digits, empty cells where there is no value, text escaped."""
    cells = df.astype(object).map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                                  else f"{v:.4g}" if isinstance(v, float) else str(v))
    body = (cells.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
            .to_latex(hrules=True, column_format="l" * len(cells.columns)))
    caption = title.replace("\\", "/")
    for char in "&%$#_{}":
        caption = caption.replace(char, "\\" + char)
    caption = caption.replace("~", "\\textasciitilde{}").replace("^", "\\textasciicircum{}")
    return f"\\begin{{table}}\n\\centering\n\\caption{{{caption}}}\n{body}\\end{{table}}\n"


def _write(df: pd.DataFrame, L, name: str, title: str, extra: str = "", headline: tuple | None = None):
    """CSV, Markdown, HTML and booktabs LaTeX of one table; ``headline`` (frame, caption): a table a paper shows
    first (Table 1's headline with its intervals), ahead of every row in the Markdown (``extra``) and LaTeX."""
    df = _tidy(df)
    with AtomicPath(L.table(name, "csv"), suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    atomic_write_text(L.table(name, "md"), f"# {title}\n\n{extra}" + _markdown(df) + "\n")
    atomic_write_text(L.table(name, "html"), html_table(df, title))
    atomic_write_text(L.table(name, "tex"), (latex_table(*headline) + "\n" if headline else "") + latex_table(df, title))


def headline_rows(p, t1: pd.DataFrame) -> pd.DataFrame:
    """Table 1's headline rows: the mean over training seeds (several), else the one trained model's."""
    several = len(p["train"]["seeds"]) > 1
    seed = t1["train_seed"].astype(str).str.removesuffix(".0")  # as read back from the CSV: 0.0 or "0"
    return t1[t1["rho"].notna() & (seed == ("mean" if several else str(p["train"]["seeds"][0])))]


def fd_curves(p, t1: pd.DataFrame) -> pd.DataFrame:
    """The headline FD (fd.headline) at the first rho: x = nfe, one column per model (dvc.yaml's `plots` draws
    each column as its own line, so models don't join into one)."""
    rows = headline_rows(p, t1)
    rows = rows[rows["rho"] == float(p["sample"]["rho"][0])]
    wide = rows.pivot_table(index="nfe", columns="model", values=headline_stat(p)).reset_index()
    return wide[["nfe", *[m for m in p["models"] if m in wide]]]


def cell_text(p, r, m: str, digits: int = 1) -> str:
    """One Table-1 cell: "value [low, high]"; with several sampling seeds EDM's protocol first, the minimum over
    them, then the mean and its interval: "min / mean [low, high]"."""
    text = f"{r[m]:.{digits}f} [{r[f'{m}_low']:.{digits}f}, {r[f'{m}_high']:.{digits}f}]"
    if len(p["sample"]["seeds"]) > 1 and pd.notna(r.get(f"{m}_min")):
        return f"{r[f'{m}_min']:.{digits}f} / {text}"
    return text


def _digits(p) -> int:
    """Decimals of the headline: FID's two (the papers' differences are hundredths), FD's one."""
    return 2 if p["fd"]["features"] == "inception" else 1


def headline_frame(p, t1: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Table 1 as the README and a paper show it: per model, the headline statistic (fd.headline; the mean over
    training seeds when there are several) per rho and NFE (cell_text), the floor in its own row; and its caption."""
    several, rows, m = len(p["train"]["seeds"]) > 1, headline_rows(p, t1), headline_stat(p)
    digits = _digits(p)
    cols = [(float(rho), int(nfe)) for rho, nfe in sorted({(r.rho, r.nfe) for r in rows.itertuples()})]
    table = [{"model": mod, **{f"rho {rho:g}, NFE {nfe}": cell_text(p, g[(g["rho"] == rho) & (g["nfe"] == nfe)].iloc[0], m, digits)
                               for rho, nfe in cols}} for mod, g in rows.groupby("model", sort=False)]
    floor = t1[t1["model"].str.startswith("real")]
    if len(floor) and pd.notna(floor[m].iloc[0]):
        f = floor.iloc[0]
        text = f"{f[m]:.{digits}f} [{f[f'{m}_low']:.{digits}f}, {f[f'{m}_high']:.{digits}f}] (N {int(f['n'])})"
        table.append({"model": "real (floor)", **{f"rho {rho:g}, NFE {nfe}": text for rho, nfe in cols}})
    seeds = len(p["sample"]["seeds"])
    cell = (f"min over {seeds} sampling seeds (EDM's protocol) / mean [{ci_label(p)} t-interval over them]"
            if seeds > 1 else f"value [{ci_label(p)} interval]")
    how = (f"mean over {len(p['train']['seeds'])} training seeds of each: " + cell) if several else cell
    return pd.DataFrame(table), f"Headline: {headline_label(p)}; {how}"


def headline_pivot(p, t1: pd.DataFrame) -> str:
    """headline_frame as Markdown, ahead of Table 1's every row."""
    frame, caption = headline_frame(p, t1)
    return f"## {caption}\n\n" + frame.to_markdown(index=False) + "\n\n## Every row\n\n"


def grid_only(p, df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the sweep grid (sample.steps x sample.rho); a samples file also holds the settings where
    guidance is evaluated (params.guidance_settings), which only Table 2 reads."""
    grid = {(int(st), float(r)) for st in p["sample"]["steps"] for r in p["sample"]["rho"]}
    return df[[(int(st), float(r)) in grid for st, r in zip(df["steps"], df["rho"])]]


def _summary(df: pd.DataFrame, level: float) -> pd.DataFrame:
    """Per (rho, steps), every metric of the records (metrics.scores): one sampling seed: its value and interval;
    several: the mean over seeds with a Student-t interval over the seeds' values (never a mean beside one
    seed's interval) and, as EDM reports FID, the minimum over seeds (``{m}_min``); a metric without an
    interval: the mean."""
    rows, intervals = [], interval_metrics(df)
    for (rho, steps), g in df.sort_values("seed").groupby(["rho", "steps"]):
        row = dict(rho=rho, steps=steps, nfe=g["nfe"].iloc[0], seeds=len(g), n=g["n"].iloc[0],
                   disc_grad_evals=g["disc_grad_evals"].iloc[0])
        for m in [m for m in METRICS if m in g]:
            if m not in intervals:
                row[m] = g[m].mean()
            elif len(g) == 1:
                row.update({m: g[m].iloc[0], f"{m}_low": g[f"{m}_low"].iloc[0], f"{m}_high": g[f"{m}_high"].iloc[0]})
            else:
                row[m], row[f"{m}_low"], row[f"{m}_high"] = _t_interval(g[m], level)
                row[f"{m}_min"] = g[m].min()  # EDM's protocol: the minimum over sampling seeds
        rows.append(row)
    return pd.DataFrame(rows)


def first(p, model: str) -> str:
    """The trained model of the first training seed (the one DG and the hybrid samplers use: dag.Context.first)."""
    return Context(p).first(model)


def _t_interval(values, level: float) -> tuple[float, float, float]:
    """Mean of independent replicates with its Student-t interval."""
    v = np.asarray(values, dtype=float)
    mean = v.mean()
    half = scipy.stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / len(v) ** 0.5
    return mean, mean - half, mean + half


def _across_seeds(rows: pd.DataFrame, by: list, metrics: list, level: float, means: list = ()) -> pd.DataFrame:
    """One row per group of per-training-seed rows: the mean over training seeds with the t-interval over their
    values (``{m}_low`` / ``{m}_high``), never one seed's interval beside the mean; ``means``: columns averaged
    without an interval; train_seed 'mean'."""
    out = []
    for keys, g in rows.groupby(by, sort=False):
        row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,)), train_seed="mean", train_seeds=len(g))
        for m in metrics:
            row[m], row[f"{m}_low"], row[f"{m}_high"] = _t_interval(g[m], level)
        row.update({m: g[m].mean() for m in means})
        out.append(row)
    return pd.DataFrame(out)


# The FD metrics whose across-seed intervals are hierarchical: the statistics and the reference images they use.
_FD_REFERENCES = {"fd": (("mu", "sigma"), "train_features"), "fd_heldout": (("mu_heldout", "sigma_heldout"),
                                                                              "heldout_features")}


class _Draws:
    """Bootstrap draws for the hierarchical across-seed intervals: features read once per trained model, one
    set of reference draws for every number of a table (fd.interval two_sample), each (training seed, sampling
    seed) with its own draws of the generated images."""

    def __init__(self, p, L, ref):
        self.p, self.L, self.ref, self.n_boot, self._feats = p, L, ref, p["fd"]["bootstrap"], {}
        self._ref_weights = {}

    def features(self, key):
        if key not in self._feats:
            self._feats[key] = dict(safe_np_load(self.L.features(key)))
        return self._feats[key]

    def reference(self, metric):
        (mu, sigma), name = _FD_REFERENCES[metric]
        rf = self.ref[name] if self.p["fd"]["interval"] == "two_sample" else None
        if rf is not None and len(rf) not in self._ref_weights:
            self._ref_weights[len(rf)] = fdm.reference_weights(len(rf), self.n_boot, self.p["seed"])
        return (self.ref[mu], self.ref[sigma]), rf, (None if rf is None else self._ref_weights[len(rf)])

    def weights(self, n, t, j):
        return fdm.resample_weights(n, self.n_boot, [self.p["seed"], 10 + t, j])

    def model(self, model, metric, steps, rho, estimate):
        """(low, high) of a model's mean over training seeds (the mean over sampling seeds within each)."""
        stats, rf, rw = self.reference(metric)
        draws = []
        for t, train_seed in enumerate(self.p["train"]["seeds"]):
            feats = self.features(instance_key(model, train_seed))
            draws.append([fdm.fd_draws(f, stats, self.weights(len(f), t, j), rf, rw)
                          for j, f in enumerate(feats[sample_key(steps, rho, s)] for s in self.p["sample"]["seeds"])])
        return fdm.hierarchical_interval(estimate, draws, seed=self.p["seed"], level=self.p["fd"]["ci_level"])

    def difference(self, edm, aot, metric, steps, rho, estimate):
        """(low, high) of EDM minus AOT over training seeds, paired on the first sampling seed's latents."""
        stats, rf, rw = self.reference(metric)
        key, draws = sample_key(steps, rho, self.p["sample"]["seeds"][0]), []
        for t, train_seed in enumerate(self.p["train"]["seeds"]):
            fe, fa = (self.features(instance_key(m, train_seed))[key] for m in (edm, aot))
            w = self.weights(len(fe), t, 0)
            draws.append([fdm.fd_draws(fe, stats, w, rf, rw) - fdm.fd_draws(fa, stats, w, rf, rw)])
        return fdm.hierarchical_interval(estimate, draws, seed=self.p["seed"], level=self.p["fd"]["ci_level"])


def across_seeds_label(p) -> str:
    """What a 'mean' row's interval resamples, as captions and metrics.json say it."""
    k = len(p["train"]["seeds"])
    return (f"hierarchical bootstrap over {k} training seeds (seeds, then sampling seeds, then images, and the "
            f"reference images" + (")" if p["fd"]["interval"] == "two_sample" else " held fixed)")
            + ("; with two seeds it can only recombine the two and is too narrow: t-interval over them beside it "
               "(columns *_t_low, *_t_high)" if k == 2 else "; the t-interval over them beside it (*_t_low, *_t_high)"))


def read_floor(L) -> dict:
    """Stage fd_reference's floor: n, the feature network, and every metric's record (an Estimate)."""
    floor = json.loads(L.fd_floor.read_text())
    return dict(floor, metrics={m: Estimate.from_json(e) for m, e in floor["metrics"].items()})


def table1(p, L, floor, hierarchical: bool = True) -> pd.DataFrame:
    """Per trained model (model x training seed) and setting: every metric with its interval (_summary); with
    several training seeds also one 'mean' row per model: the mean over training seeds, FD's with the
    hierarchical interval (``hierarchical``; else the t-interval over them, as for every other metric). First
    row: the floor (``floor``: read_floor), each metric's real images at the same N."""
    rows = [dict(model="real (floor)", train_seed="", conditional=np.nan, pairing="", rho=np.nan, steps=np.nan,
                 nfe=np.nan, n=floor["n"], **columns(floor["metrics"]))]
    level, per_seed = p["fd"]["ci_level"], []
    for key, (model, train_seed) in model_instances(p).items():
        spec = p["models"][model]
        for _, r in _summary(grid_only(p, pd.read_csv(L.fd(key))), level).iterrows():
            published = paper.paper_fid(_training_of(p, model), spec["conditional"], float(r["rho"]), int(r["steps"]))
            per_seed.append(dict(model=model, train_seed=train_seed, conditional=spec["conditional"],
                                 pairing=spec["pairing"],
                                 **r.drop("disc_grad_evals"), paper_cifar10_fid=np.nan if published is None else published))
    per_seed = pd.DataFrame(per_seed).assign(train_seeds=1)
    parts = [pd.DataFrame(rows), per_seed]
    if len(p["train"]["seeds"]) > 1:
        intervals = interval_metrics(per_seed)
        mins = [f"{m}_min" for m in intervals if f"{m}_min" in per_seed]  # the mean of each seed's minimum
        mean = _across_seeds(per_seed, ["model", "conditional", "pairing", "rho", "steps", "nfe"], intervals, level,
                             means=[m for m in METRICS if m in per_seed and m not in intervals] + mins
                             + ["paper_cifar10_fid"])
        draws = _Draws(p, L, safe_np_load(L.fd_reference)) if hierarchical else None
        for m in [m for m in intervals if m in _FD_REFERENCES and hierarchical]:  # FD: every level of noise
            mean[f"{m}_t_low"], mean[f"{m}_t_high"] = mean[f"{m}_low"], mean[f"{m}_high"]
            bounds = [draws.model(r["model"], m, int(r["steps"]), float(r["rho"]), r[m]) for _, r in mean.iterrows()]
            mean[f"{m}_low"], mean[f"{m}_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
        parts.append(mean)
    return pd.concat(parts, ignore_index=True)


def paired_differences(p, L) -> pd.DataFrame:
    """EDM minus AOT of the headline statistic (fd.headline) at every setting, per training seed from the same
    latents (first sampling seed) with a paired bootstrap; with several training seeds also the mean over seeds
    (train_seed 'mean') with the hierarchical interval (_Draws.difference) and the t-interval (t_low, t_high)."""
    ref = safe_np_load(L.fd_reference)
    stats, f, rows = reference_stats(p, ref), p["fd"], []
    ref_feats = reference_features(p, ref)
    seed = p["sample"]["seeds"][0]
    for pair, (edm, aot) in edm_aot_pairs(p).items():
        for train_seed in p["train"]["seeds"]:
            fe = safe_np_load(L.features(instance_key(edm, train_seed)))
            fa = safe_np_load(L.features(instance_key(aot, train_seed)))
            for rho in p["sample"]["rho"]:
                for steps in p["sample"]["steps"]:
                    key = sample_key(steps, rho, seed)
                    diff, low, high = fdm.paired_diff_ci(fe[key], fa[key], stats, n_boot=f["bootstrap"],
                                                         seed=p["seed"], level=f["ci_level"], ref_features=ref_feats)
                    rows.append(dict(pair=pair, edm=edm, aot=aot, train_seed=train_seed, rho=rho, steps=steps,
                                     nfe=num_function_evals(steps), diff=diff, low=low, high=high))
    df = pd.DataFrame(rows).assign(train_seeds=1)
    if len(p["train"]["seeds"]) > 1:
        mean = _across_seeds(df.rename(columns={"diff": "d"}), ["pair", "edm", "aot", "rho", "steps", "nfe"], ["d"],
                             f["ci_level"]).rename(columns={"d": "diff", "d_low": "t_low", "d_high": "t_high"})
        draws, stat = _Draws(p, L, ref), headline_stat(p)
        bounds = [draws.difference(r["edm"], r["aot"], stat, int(r["steps"]),
                                   float(r["rho"]), r["diff"]) for _, r in mean.iterrows()]
        mean["low"], mean["high"] = [b[0] for b in bounds], [b[1] for b in bounds]
        df = pd.concat([df, mean], ignore_index=True)
    df["outside_noise"] = (df["low"] > 0) | (df["high"] < 0)
    return df


def table2(p, L) -> pd.DataFrame:
    """Table 2 as the paper's: per discriminator (EDM + DG, AOT + AOT-DG, AOT + plain DG) and setting, the
    unguided and guided headline statistic (fd.headline; with several sampling seeds the mean and, as EDM
    reports, the minimum) and the gain (unguided minus guided) on the same latents (first sampling seed) with its
    paired interval; the discriminator's held-out (test) accuracy; the published FID where the paper has one."""
    g, level, stat = p["guidance"], p["fd"]["ci_level"], headline_stat(p)
    ref = safe_np_load(L.fd_reference)
    stats, seed, ref_feats = reference_stats(p, ref), p["sample"]["seeds"][0], reference_features(p, ref)
    rows = []
    for disc, dspec in g["discriminators"].items():
        kind, cond = _training_of(p, dspec["model"]).upper(), p["models"][dspec["model"]]["conditional"]
        job = Context(p).discriminator(disc)
        model = job["instance"]
        method = f"{kind} + {'DG' if job['pairing'] == 'none' else 'AOT-DG'}"
        m = json.loads(L.discriminator_metrics(disc).read_text())
        held = m["heldout"]
        plain, guided = _summary(pd.read_csv(L.fd(model)), level), _summary(pd.read_csv(L.guided_fd(disc)), level)
        fp, fg = safe_np_load(L.features(model)), safe_np_load(L.guided_features(disc))
        for steps, rho in guidance_settings(p, cond):
            r = guided[(guided["rho"] == rho) & (guided["steps"] == steps)].iloc[0]
            u = plain[(plain["rho"] == rho) & (plain["steps"] == steps)].iloc[0]
            key = sample_key(steps, rho, seed)
            diff, low, high = fdm.paired_diff_ci(fp[key], fg[key], stats, n_boot=p["fd"]["bootstrap"], seed=p["seed"],
                                                 level=level, ref_features=ref_feats)
            published = paper.paper_dg_fid(method, cond, rho, steps)
            mins = ({"fd_unguided_min": u[f"{stat}_min"], "fd_guided_min": r[f"{stat}_min"]}
                    if f"{stat}_min" in r else {})
            rows.append(dict(method=method, conditional=cond, discriminator=disc, model=model, rho=rho, steps=int(steps),
                             nfe=int(r["nfe"]), disc_grad_evals=int(r["disc_grad_evals"]),
                             boosting=g["boosting_cond" if cond else "boosting_uncond"], **mins,
                             fd_unguided=u[stat], fd_guided=r[stat], fd_guided_low=r[f"{stat}_low"],
                             fd_guided_high=r[f"{stat}_high"], gain=diff, gain_low=low,
                             gain_high=high, outside_noise=bool(low > 0 or high < 0),
                             sigma_window=_window_text(p, m), disc_steps=m.get("steps_run"),
                             disc_best_step=m.get("best_step"),
                             disc_test_accuracy=held["accuracy"],
                             **{f"acc_sigma_{b}": v["accuracy"] for b, v in held["bands"].items()},
                             paper_cifar10_fid=np.nan if published is None else published))
    return pd.DataFrame(rows)


def _window_text(p, disc_metrics) -> str:
    """The window a discriminator guided in: DG's, the configured one, or the one chosen on validation data."""
    window = p["guidance"]["sigma_window"]
    if window == "validation":
        chosen = disc_metrics["sigma_window"]["window"]
        return f"[{chosen[0]:.3g}, {chosen[1]:.3g}] (validation)" if chosen else "none (validation)"
    return "DG's" if window is None else f"[{window[0]:g}, {window[1]:g}]"


def hybrid_table(p, L) -> pd.DataFrame:
    """FD of the hybrid samplers (stage hybrid) beside the pure models at the same setting and latents (the
    first sampling seed's rows of the sweep): switch_sigma 'pure' is one model all the way."""
    h, seed = p["hybrid"], p["sample"]["seeds"][0]
    cols = ["pair", "above", "below", "switch_sigma", "nfe", "fd_heldout", "fd_heldout_low", "fd_heldout_high",
            "fd", "nn_train_dist"]
    hyb = pd.read_csv(L.hybrid_fd)
    rows = []
    for cond, models in edm_aot_pairs(p).items():
        for kind, model in zip(("edm", "aot"), (first(p, m) for m in models)):
            df = pd.read_csv(L.fd(model))
            for steps in h["steps"]:
                r = df[(df["steps"] == steps) & (df["rho"] == h["rho"]) & (df["seed"] == seed)].iloc[0]
                rows.append(dict(pair=cond, above=f"{kind} ({model})", below=f"{kind} ({model})", switch_sigma="pure",
                                 **{c: r[c] for c in cols[4:]}))
        rows += hyb[hyb["pair"] == cond].assign(switch_sigma=lambda d: d["switch_sigma"].map("{:g}".format))[cols] \
            .to_dict("records")
    return pd.DataFrame(rows, columns=cols).sort_values(["pair", "nfe"], kind="stable")


def table3(p, L) -> pd.DataFrame:
    rows = []
    for key, (model, train_seed) in model_instances(p).items():
        spec = p["models"][model]
        m = json.loads(L.curvature_metrics(key).read_text())
        row = dict(model=model, train_seed=train_seed, conditional=spec["conditional"], pairing=spec["pairing"],
                   curvature_mean=m["curvature_mean"])
        row.update({f"trunc_err_rho{t['rho']:g}_nfe{t['nfe']}": t["error"] for t in m["truncation"]})
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(p["train"]["seeds"]) > 1:  # the mean over training seeds (values only: see the per-seed rows)
        mean = df.groupby(["model", "conditional", "pairing"], sort=False, as_index=False).mean(numeric_only=True)
        df = pd.concat([df, mean.assign(train_seed="mean")], ignore_index=True)
    return df


def headline_metrics(p, L, floor, t1, diffs, t2, t3) -> dict:
    """metrics.json: the headline numbers only, what `dvc exp show` / `dvc metrics diff` compare (the detail is in
    the tables): every metric's floor; EDM minus AOT of the headline statistic at every rho and NFE; the
    headline metrics of metrics.scores per model at the first rho and the sweep's largest NFE (memorisation:
    nn_train_dist); each model's mean curvature; each discriminator's DG gain at the paper's setting for its
    conditioning (Table 2 has every setting). A value with an interval is {diff | gain | value, interval}
    (see _headline); the key `intervals` says which interval."""
    name, level, stat = metric_name(p), ci_label(p), metric_key(p, headline_stat(p))
    several = len(p["train"]["seeds"]) > 1
    metrics = {"intervals": (f"{level}; {resampled(p)}; models' FD and EDM minus AOT: " + (
        across_seeds_label(p) if several else "bootstrap") +
        "; DG gains: paired bootstrap (first training seed); floor: bootstrap")}
    for m, est in floor["metrics"].items():
        metrics.update(_headline(f"floor.{metric_key(p, m)}", est.value, est.low, est.high))
    if L.feature_network_metrics.exists():
        metrics.update(json.loads(L.feature_network_metrics.read_text()))
    pick = (lambda df: df[df["train_seed"] == "mean"]) if several else \
        (lambda df: df[df["train_seed"] == p["train"]["seeds"][0]])
    for _, r in pick(diffs).iterrows():
        metrics.update(_headline(f"aot_vs_edm.{r['pair']}.{stat}_rho{r['rho']:g}_nfe{int(r['nfe'])}",
                                 r["diff"], r["low"], r["high"], name="diff"))
    headline = [m for m in METRICS if METRICS[m].headline]
    at = (t1["rho"] == p["sample"]["rho"][0]) & (t1["steps"] == max(p["sample"]["steps"]))
    for _, r in pick(t1[at]).iterrows():
        for m in [m for m in headline if m in r and pd.notna(r[m])]:
            metrics.update(_headline(f"{r['model']}.{metric_key(p, m)}_rho{r['rho']:g}_nfe{int(r['nfe'])}",
                                     r[m], r.get(f"{m}_low"), r.get(f"{m}_high")))
    for _, r in pick(t3).iterrows():
        metrics[f"{r['model']}.curvature_mean"] = float(r["curvature_mean"])
    for _, r in t2.iterrows():
        paper = p["guidance"]["paper_setting_cond" if r["conditional"] else "paper_setting_uncond"]
        if (int(r["steps"]), float(r["rho"])) == (int(paper["steps"]), float(paper["rho"])):
            metrics.update(_headline(f"{r['discriminator']}.gain_{stat}_rho{r['rho']:g}_nfe{int(r['nfe'])}",
                                     r["gain"], r["gain_low"], r["gain_high"], name="gain"))
    return metrics


def paper_comparison(p, t1: pd.DataFrame, t2: pd.DataFrame) -> pd.DataFrame:
    """Every published CIFAR-10 cell (paper.TABLE1_CELLS, paper.DG_CELLS) beside ours at its setting: EDM's
    protocol (the minimum over sampling seeds) and the mean with its interval, from the headline rows (the mean
    over training seeds where there are several); `protocol_differs`: what our protocol does differently
    (paper.differences), empty where it matches as far as the paper's protocol is public."""
    stat, rows = headline_stat(p), []
    heads = headline_rows(p, t1)
    for cell in paper.TABLE1_CELLS + paper.DG_CELLS:
        guided = bool(cell.method)
        if guided:
            method = cell.method
            hits = t2[(t2["method"] == method) & (t2["conditional"] == cell.conditional) & (t2["steps"] == cell.steps)]
            if cell.rho is not None:
                hits = hits[hits["rho"] == cell.rho]
            ours = [dict(rho=h["rho"], model=h["model"], ours_min=h.get("fd_guided_min", np.nan),
                         ours_mean=h["fd_guided"], ours_low=h["fd_guided_low"], ours_high=h["fd_guided_high"])
                    for _, h in hits.iterrows()]
        else:
            method = f"{cell.training.upper()} ({'cond' if cell.conditional else 'uncond'})"
            model = next((m for m, s in p["models"].items() if _training_of(p, m) == cell.training
                          and s["conditional"] == cell.conditional), None)
            hits = heads[(heads["model"] == model) & (heads["rho"] == cell.rho) & (heads["steps"] == cell.steps)]
            ours = [dict(rho=h["rho"], model=model, ours_min=h.get(f"{stat}_min", np.nan), ours_mean=h[stat],
                         ours_low=h[f"{stat}_low"], ours_high=h[f"{stat}_high"]) for _, h in hits.iterrows()]
        differs = paper.differences(p, cell, guided=guided)
        base = dict(source=cell.source, method=method, conditional=cell.conditional, steps=cell.steps,
                    nfe=num_function_evals(cell.steps), paper_fid=cell.fid)
        if not ours:
            rows.append(dict(base, rho=cell.rho, model="", ours_min=np.nan, ours_mean=np.nan, ours_low=np.nan,
                             ours_high=np.nan, protocol_differs="; ".join(["setting not sampled"] + differs),
                             note=cell.note))
        for o in ours:
            rows.append(dict(base, **o, protocol_differs="; ".join(differs), note=cell.note))
    cols = ["source", "method", "conditional", "model", "rho", "steps", "nfe", "paper_fid", "ours_min", "ours_mean",
            "ours_low", "ours_high", "protocol_differs", "note"]
    return pd.DataFrame(rows, columns=cols)


def calibration_table(p, L, networks) -> pd.DataFrame:
    """Each released network (calibration.networks with a pickle) at its paper's setting: the minimum over
    sampling seeds (EDM's protocol) and the mean with its t-interval, beside the published FID, and whether the
    minimum lands within calibration.tolerance of it."""
    c, level, rows = p["calibration"], p["fd"]["ci_level"], []
    for name in networks:
        spec = c["networks"][name]
        cell = paper.calibration_setting(spec["pairing"] != "none", spec["conditional"])
        df = pd.read_csv(L.calibration_fd(name))
        r = _summary(df, level).iloc[0]
        low, high = r.get("fd_low"), r.get("fd_high")
        best = r.get("fd_min", r["fd"])
        rows.append(dict(network=name, pickle=spec["pickle"], pairing=spec["pairing"], conditional=spec["conditional"],
                         source=cell.source, steps=cell.steps, rho=cell.rho, nfe=num_function_evals(cell.steps),
                         n=int(r["n"]), seeds=int(r["seeds"]), fid_min=best, fid_mean=r["fd"], fid_low=low,
                         fid_high=high, paper_fid=cell.fid, min_minus_paper=best - cell.fid,
                         within_tolerance=bool(abs(best - cell.fid) <= c["tolerance"])))
    return pd.DataFrame(rows)


def write_calibration(p, L, networks=None, log=print):
    """tables/calibration.{csv,md,html} (target `calibrate`)."""
    networks = [k for k, n in p["calibration"]["networks"].items() if n["pickle"]] if networks is None else networks
    df = calibration_table(p, L, networks)
    floor = read_floor(L)
    protocol = [f"{p['sample']['num_samples']} samples per sampling seed, {len(p['sample']['seeds'])} seed(s)",
                f"{metric_label(p)} against the training set's statistics",
                f"floor at N = {int(floor['n'])}: {floor['metrics']['fd'].value:.4g}"]
    differs = paper.measurement_differences(p)
    _write(df, L, "calibration", f"Calibration: released networks at their papers' settings ({p['profile']} profile; "
           f"{'; '.join(protocol)}; fid_min: the minimum over sampling seeds (EDM's protocol), fid_mean with its "
           f"{ci_label(p)} t-interval over them; within_tolerance: |fid_min - paper_fid| <= {p['calibration']['tolerance']:g}."
           + (f" NOT the papers' protocol: {'; '.join(differs)}." if differs else " The papers' protocol.")
           + " Outside the tolerance the FID path is wrong: trust nothing else)")
    for _, r in df.iterrows():
        log(f"{r['network']}: {r['fid_min']:.4g} (min of {r['seeds']}), paper {r['paper_fid']}: "
            f"{'within' if r['within_tolerance'] else 'OUTSIDE'} {p['calibration']['tolerance']:g}")
    return df


def write_tables(p, L, log=print):
    floor = read_floor(L)
    name, label, head = metric_name(p), metric_label(p), headline_label(p)
    t1, diffs, t2, t3 = table1(p, L, floor), paired_differences(p, L), table2(p, L), table3(p, L)
    n = int(floor["n"])
    floor_note = (f"; the floor at N = {n}, not {p['sample']['num_samples']}: only {n} held-out images (an FD's bias "
                  f"falls as 1/N, so the floor at the samples' N is lower)" if n < p["sample"]["num_samples"] else "")
    seeds = len(p["sample"]["seeds"])
    _write(t1, L, "table1_fd_vs_nfe", extra=headline_pivot(p, t1), headline=headline_frame(p, t1),
           title=f"Table 1: {label} vs NFE ({p['profile']} profile, {p['sample']['num_samples']} samples per setting; "
           f"headline {head}{floor_note}; "
           f"{name}: against the training statistics, first row: N held-out real images (the floor); "
           f"{name}_heldout: against the held-out images' statistics (a model can't win it by memorising), first row: "
           f"N real training images; nn_train_dist: mean pixel distance to the nearest training image (first row: "
           f"held-out real images'); one row per trained model (train_seed) and setting, its intervals {ci_label(p)} "
           f"{resampled(p)} (one sampling seed) or, with several (column seeds), the mean over sampling seeds with its "
           f"{ci_label(p)} t-interval and the minimum over them (columns *_min, EDM's protocol); train_seed 'mean': "
           f"the mean over the training seeds (column train_seeds), FD's interval a {ci_label(p)} "
           f"{across_seeds_label(p)}, KID's the t-interval over them; paper column: published CIFAR-10 FIDs)")
    _write(t2, L, "table2_guidance", f"Table 2: Discriminator Guidance, {label} ({p['profile']} profile; headline "
           f"{head}; fd_unguided, fd_guided: the mean over {seeds} sampling seed(s) (fd_guided_low, _high: its "
           f"{ci_label(p)} interval)" +
           (", *_min: the minimum over them (EDM's protocol)" if seeds > 1 else "") +
           f"; gain = unguided minus guided on the same latents (the first sampling seed's) with its {ci_label(p)} "
           f"paired interval ({resampled(p)}, the same draws for both); outside_noise: the interval excludes 0; boosting: DG's; disc_grad_evals: "
           f"discriminator gradients per sampler run on top of the NFE; disc_*: steps run, the step kept (guidance."
           f"protocol {p['guidance']['protocol']}), accuracy on held-out real and fake images, overall and per sigma "
           f"band)")
    _write(t3, L, "table3_curvature", f"Table 3: ODE curvature and truncation error ({p['profile']} profile)")
    hyb = hybrid_table(p, L)
    _write(hyb, L, "hybrid_switch", f"Hybrid samplers ({p['profile']} profile, rho {p['hybrid']['rho']:g}, {n} samples, "
           f"first sampling seed's latents): the 'above' model's denoiser where sigma > switch_sigma, the 'below' "
           f"model's at and below it; 'pure': one model throughout. {label} against held-out statistics with "
           f"{ci_label(p)} bootstrap intervals, and against the training statistics")
    _write(paper_comparison(p, t1, t2), L, "paper_comparison",
           f"The papers' CIFAR-10 cells beside ours, {label} ({p['profile']} profile; ours: headline {head}, ours_min the "
           f"minimum over {seeds} sampling seed(s) as EDM reports, ours_mean with its {ci_label(p)} interval; "
           f"the mean over training seeds where there are several; protocol_differs: what our protocol does "
           f"differently from the paper's, empty where it matches as far as it is public)")
    with AtomicPath(L.fd_curves, suffix=".csv") as tmp:  # for `dvc plots diff`: one column (line) per model
        fd_curves(p, t1).to_csv(tmp, index=False)
    metrics = headline_metrics(p, L, floor, t1, diffs, t2, t3)
    atomic_write_text(L.metrics, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    _write(diffs, L, "aot_vs_edm", f"EDM minus AOT {label} ({p['profile']} profile, headline {head}, "
           f"{n} samples): per training seed, EDM and AOT trained with that seed on the same latents (the first "
           f"sampling seed's) with a {ci_label(p)} paired interval ({resampled(p)}, the same draws for both); "
           f"train_seed 'mean': the mean over the training seeds with a {ci_label(p)} {across_seeds_label(p)}; "
           f"outside_noise: the interval excludes 0")
    log(f"wrote {L.results / 'tables'} and {L.metrics}")
    return t1, t2, t3
