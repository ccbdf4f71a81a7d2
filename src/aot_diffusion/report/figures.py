"""Figures of the replication, from the stage outputs of one profile (layout.Layout). Each names its metric,
sample count and profile; layouts are constrained so labels never overlap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# TrueType (Type 42) fonts in PDF and PS: text a paper's editor can search and edit, and no Type 3 fonts
matplotlib.rcParams["pdf.fonttype"] = 42
matplotlib.rcParams["ps.fonttype"] = 42
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from ..dag import Context  # noqa: E402
from ..sampling import num_function_evals  # noqa: E402
from ..sample_files import read_sweep  # noqa: E402
from ..utils import AtomicPath  # noqa: E402
from ..params import guidance_settings, model_instances, split_instance  # noqa: E402
from ..safe_pickle import safe_np_load  # noqa: E402
from .tables import (across_seeds_label, ci_label, first, headline_rows, headline_stat, metric_label,  # noqa: E402
                     resampled)


def _save(fig, path):
    """PNG (for the README and `dvc plots`) and vector PDF (for a paper) beside it; log axes with plain ticks."""
    for ax in fig.get_axes():
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                lo, hi = sorted(axis.get_view_interval())
                axis.set_major_formatter(_PLAIN)  # minor labels: none over many decades (they would overlap)
                axis.set_minor_formatter(NullFormatter() if lo <= 0 or hi / lo >= 10 ** 2.5 else
                                         _minor_labels("25" if hi / lo >= 10 else "235"))
    path = Path(path)
    for ext, dpi in (("png", 150), ("pdf", None)):
        with AtomicPath(path.with_suffix(f".{ext}"), suffix=f".{ext}") as tmp:
            fig.savefig(tmp, dpi=dpi, format=ext, bbox_inches="tight",  # a long title widens, never clips
                        metadata=FIXED_METADATA[ext])
    plt.close(fig)


# Metadata without a date, so equal figures are equal bytes (tracked outputs of two identical runs). PDF:
# matplotlib writes CreationDate (the time of saving, or SOURCE_DATE_EPOCH) unless it is None; ModDate only
# when given. PNG: matplotlib writes only Software (its version), never a date (no tIME chunk).
FIXED_METADATA = {"pdf": {"CreationDate": None, "ModDate": None}, "png": None}


def _plain(value, _pos=None) -> str:
    return f"{value:g}"


_PLAIN = FuncFormatter(_plain)  # 2, 20, 0.5: not 2x10^0


def _minor_labels(digits: str) -> FuncFormatter:
    """Minor ticks labelled only at these leading digits per decade (a label on every one would overlap)."""
    return FuncFormatter(lambda v, pos: _plain(v) if f"{v:.1e}"[0] in digits else "")


def _legend(ax, **kw):
    """A legend whose handles are long enough to show each line's style (dashed = unconditional)."""
    return ax.legend(handlelength=3.2, **{"fontsize": 7, **kw})


def _figure(ncols=1, nrows=1, w=4.4, h=3.4):
    return plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, layout="constrained")


def _style(p, model):
    spec = p["models"][model if model in p["models"] else split_instance(model)[0]]
    return dict(color="tab:blue" if spec["pairing"] == "none" else "tab:red", ls="-" if spec["conditional"] else "--")


def _integer_nfe(ax):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _error_bars(y, low, high, bottom):
    """yerr for errorbar: each interval's ends, the lower cut at the axis' bottom (a log axis has no 0)."""
    y, low, high = (np.asarray(v, dtype=float) for v in (y, low, high))
    return np.vstack([y - np.maximum(low, bottom), high - y])


def fd_vs_nfe(p, t1: pd.DataFrame, path):
    """Table 1's headline statistic per model against NFE, one panel per rho: the values and intervals the table
    holds (the mean over training seeds with its interval when there are several), the floor as a line."""
    stat, rows = headline_stat(p), headline_rows(p, t1)
    floor = t1[t1["model"].str.startswith("real")].iloc[0]
    rhos = sorted(rows["rho"].unique())
    bottom = 0.5 * min(rows[stat].min(), floor[stat])
    fig, axes = _figure(len(rhos))
    for ax, rho in zip(axes[0], rhos):
        for model, g in rows[rows["rho"] == rho].groupby("model", sort=False):
            g = g.sort_values("nfe")
            ax.errorbar(g["nfe"], g[stat], yerr=_error_bars(g[stat], g[f"{stat}_low"], g[f"{stat}_high"], bottom),
                        marker="o", ms=3, capsize=2, elinewidth=0.8, label=model, **_style(p, model))
        ax.axhline(floor[stat], color="k", ls=":", lw=1, label=f"real held-out (floor, N={int(floor['n'])})")
        ax.set(title=f"rho = {rho:g}", xlabel="NFE", ylabel=stat_label(p), yscale="log")
        ax.set_ylim(bottom=bottom)
        _integer_nfe(ax)
        ax.grid(alpha=0.3)
    _legend(axes[0][0])
    k = len(p["train"]["seeds"])
    bars = (f"mean of {k} training seeds; bars: {ci_label(p)} {across_seeds_label(p).split(' (')[0]}" if k > 1
            else f"bars: {ci_label(p)} {resampled(p).split(':')[0]}")
    fig.suptitle(f"{p['profile']} profile, {int(floor['n'])} samples per setting (Table 1's headline)\n"
                 f"{bars}, cut at the axis", fontsize=8)
    _save(fig, path)


def heatmap(p, t1: pd.DataFrame, path):
    """Table 1's headline statistic over the rho x NFE grid, a panel per model; with one rho a row of cells."""
    stat, rows = headline_stat(p), headline_rows(p, t1)
    models = list(p["models"])
    fig, axes = _figure(len(models), w=3.4, h=3.0 if rows["rho"].nunique() > 1 else 1.8)
    vmin, vmax = rows[stat].min(), rows[stat].max()
    for ax, model in zip(axes[0], models):
        piv = rows[rows["model"] == model].pivot_table(index="rho", columns="nfe", values=stat)
        im = ax.imshow(np.log10(piv.values), cmap="viridis", vmin=np.log10(vmin), vmax=np.log10(vmax), aspect="auto")
        ax.set_xticks(range(piv.shape[1]), [str(int(c)) for c in piv.columns])
        ax.set_yticks(range(piv.shape[0]), [f"{r:g}" for r in piv.index])
        for (i, j), v in np.ndenumerate(piv.values):
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color="w")
        ax.set(title=model, xlabel="NFE", ylabel="rho")
    fig.colorbar(im, ax=axes[0].tolist(), label=f"log10 {stat}")
    fig.suptitle(f"{stat_label(p)} over the rho x NFE grid ({p['profile']} profile, Table 1)", fontsize=9)
    _save(fig, path)


def stat_label(p) -> str:
    """An FD axis names the headline statistic and its reference: 'fd_heldout: FD (...) against held-out stats'."""
    ref = "held-out images' stats" if p["fd"]["headline"] == "heldout" else "training set's stats"
    return f"{headline_stat(p)}: {metric_label(p).split(' (')[0]} vs {ref}"


def curvature_plot(p, curv: dict, path):
    fig, axes = _figure()
    ax = axes[0][0]
    for model, c in curv.items():
        ax.plot(c["grid"], c["kappa_grid"], label=model, **_style(p, model))
    ax.set(xscale="log", xlabel="sigma", ylabel="curvature 1 - cos",
           title=f"PF-ODE curvature ({p['profile']} profile)")
    ax.grid(alpha=0.3)
    _legend(ax)
    _save(fig, path)


def truncation_plot(p, curv: dict, path):
    rhos = sorted({float(r) for c in curv.values() for r in c["trunc_rho"]})
    fig, axes = _figure(len(rhos))
    for ax, rho in zip(axes[0], rhos):
        for model, c in curv.items():
            sel = c["trunc_rho"] == rho
            ax.plot(c["trunc_nfe"][sel], c["trunc_error"][sel], marker="o", ms=3, label=model, **_style(p, model))
        ax.set(title=f"rho = {rho:g}", xlabel="NFE", ylabel="RMS error vs fine solve", yscale="log")
        _integer_nfe(ax)
        ax.grid(alpha=0.3)
    _legend(axes[0][0])
    fig.suptitle(f"Truncation error ({p['profile']} profile)", fontsize=9)
    _save(fig, path)


def _finish(fig, axes, title, path, below: bool = False):
    """Grid and legend on every panel (``below``: one legend under the panels, off the data, for panels whose
    curves share their labels), the figure's title, and save."""
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if not below:
            _legend(ax, fontsize=6)
    if below:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=7,
                   handlelength=3.2)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def guidance_plot(p, t2: pd.DataFrame, path):
    """Table 2's headline statistic, unguided (per model) and guided (per discriminator, with the table's
    interval), at each setting where guidance is evaluated."""
    g = p["guidance"]
    fig, axes = _figure(2, w=4.8)
    for ax, cond in zip(axes[0], (False, True)):
        settings = guidance_settings(p, cond)
        x = np.arange(len(settings))
        rows = t2[t2["conditional"].astype(str) == str(cond)]

        def at(df, column):
            return np.array([df[(df["steps"] == st) & (df["rho"] == r)][column].iloc[0] for st, r in settings])

        for model, spec in p["models"].items():
            if spec["conditional"] == cond and (mine := rows[rows["model"] == first(p, model)]).size:
                ax.plot(x, at(mine, "fd_unguided"), marker="o", ms=4, label=f"{first(p, model)} (unguided)",
                        **_style(p, model))
        for disc, d in g["discriminators"].items():
            if p["models"][d["model"]]["conditional"] == cond:
                mine = rows[rows["discriminator"] == disc]
                y = at(mine, "fd_guided")
                ax.errorbar(x, y, yerr=_error_bars(y, at(mine, "fd_guided_low"), at(mine, "fd_guided_high"), 0),
                            marker="s", ms=4, capsize=2, elinewidth=0.8, label=disc,
                            color=_style(p, d["model"])["color"], ls=":" if _random_noise(p, disc) else "-.")
        ax.set_xticks(x, [f"NFE {num_function_evals(st)}\nrho {r:g}" for st, r in settings])
        ax.set(title=f"{'conditional' if cond else 'unconditional'}: DG", ylabel=stat_label(p))
        ax.set_xlim(-0.5, len(settings) - 0.5)
    _finish(fig, axes, f"Discriminator Guidance (Table 2; {p['profile']} profile; bars: the guided FD's "
                       f"{ci_label(p)} interval; lines join settings for legibility only)", path)


def _random_noise(p, disc) -> bool:
    """A discriminator trained on random noise (DG's), not paired noise (AOT-DG's)."""
    return Context(p).discriminator(disc)["pairing"] == "none"


def discriminator_curves(p, L, path):
    """DG's discriminators: training BCE (window mean) and held-out BCE per check; the kept weights marked."""
    fig, axes = _figure(2, w=4.8)
    for ax, cond in zip(axes[0], (False, True)):
        for disc, d in p["guidance"]["discriminators"].items():
            if p["models"][d["model"]]["conditional"] != cond:
                continue
            df = pd.read_csv(L.discriminator_curve(disc))
            color = _style(p, d["model"])["color"]
            ls = ":" if _random_noise(p, disc) else "-"
            ax.plot(df["step"], df["val_bce"], color=color, ls=ls, label=f"{disc} held-out")
            ax.plot(df["step"], df["loss"], color=color, ls=ls, alpha=0.35, lw=0.8)
            best = df[df["best"]]
            ax.plot(best["step"], best["val_bce"], "k*", ms=7)
        ax.axhline(np.log(2), color="k", ls=":", lw=1, label="chance (ln 2)")
        ax.set(title=f"{'conditional' if cond else 'unconditional'} discriminators", xlabel="step", ylabel="BCE")
    _finish(fig, axes, f"Discriminator learning curves ({p['profile']} profile; faint: training, *: kept weights)",
            path)


def hybrid_plot(p, t: pd.DataFrame, path):
    """The hybrid table's headline statistic vs switch point. AOT above sigma_s and EDM below: s = 0 is pure AOT,
    s = inf pure EDM (the reverse order runs the other way), so each curve joins the two pure models through the
    switch points."""
    t, stat = t.assign(switch_sigma=t["switch_sigma"].astype(str)), headline_stat(p)
    switches = sorted(p["hybrid"]["switch_sigmas"])
    pairs_ = list(dict.fromkeys(t["pair"]))
    fig, axes = _figure(len(pairs_), w=4.8, h=4.2)  # tall enough for the statistic's axis label
    xs = np.arange(len(switches) + 2)
    cmap = plt.get_cmap("viridis")
    nfes = sorted(t["nfe"].unique())
    for ax, pair in zip(axes[0], pairs_):
        d = t[t["pair"] == pair]
        for i, nfe in enumerate(nfes):
            dn = d[d["nfe"] == nfe]
            pure = {r["above"].split()[0]: r[stat] for _, r in dn[dn["switch_sigma"] == "pure"].iterrows()}
            for above, ls in (("aot", "-"), ("edm", "--")):
                below = "edm" if above == "aot" else "aot"
                mid = [dn[(dn["switch_sigma"] == f"{s:g}") & dn["above"].str.startswith(above)][stat].iloc[0]
                       for s in switches]
                ax.plot(xs, [pure[above], *mid, pure[below]], ls=ls, marker="o", ms=3,
                        color=cmap(i / max(len(nfes) - 1, 1)),
                        label=f"NFE {nfe}: {above.upper()} above, {below.upper()} below")
        ax.set_xticks(xs, ["0", *[f"{s:g}" for s in switches], "inf"])
        ax.set(xlabel="switch sigma", ylabel=stat_label(p), yscale="log",
               title=f"{'conditional' if pair == 'cond' else 'unconditional'} pair")
    _finish(fig, axes, f"Hybrid samplers ({p['profile']} profile, rho {p['hybrid']['rho']:g}): one model's denoiser "
                       f"above the switch sigma, the other's at and below it\n(switch 0: the 'above' model "
                       f"throughout; inf: the 'below' model throughout)", path, below=True)


def _grid(images, ncol):
    images = images.astype(np.float32) / 255 if images.dtype == np.uint8 else np.clip((images + 1) / 2, 0, 1)
    n, c, h, w = images.shape
    nrow = int(np.ceil(n / ncol))
    canvas = np.ones((nrow * (h + 1), ncol * (w + 1), c))
    for k in range(n):
        i, j = divmod(k, ncol)
        canvas[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = images[k].transpose(1, 2, 0)
    return canvas.squeeze(-1) if c == 1 else canvas


def sample_grids(p, L, steps: int, path):
    models = list(p["models"])
    rho, seed = p["sample"]["rho"][0], p["sample"]["seeds"][0]
    fig, axes = _figure(len(models), w=3.0, h=3.3)
    for ax, model in zip(axes[0], models):
        x = next(im for st, r, sd, im, _ in read_sweep(L.samples(first(p, model))) if (st, r, sd) == (steps, rho, seed))
        side = int(np.sqrt(min(100, len(x))))  # a full square: no ragged last row
        ax.imshow(_grid(x[:side * side], side), cmap="gray", vmin=0, vmax=1)
        ax.set(title=f"{first(p, model)}\nNFE {num_function_evals(steps)}, rho {rho:g}")
        ax.axis("off")
    fig.suptitle(f"Samples from the same latents ({p['profile']} profile)", fontsize=9)
    _save(fig, path)


def loss_curves(p, L, path):
    fig, axes = _figure()
    ax = axes[0][0]
    seeds = p["train"]["seeds"]
    for model, (_, seed) in model_instances(p).items():  # colour: AOT or EDM; dashes: conditioning; marker: seed
        df = pd.read_csv(L.loss_log(model))
        ax.plot(df["kimg"], df["loss"], label=model, marker="osv^D"[seeds.index(seed) % 5], ms=3,
                markevery=max(len(df) // 8, 1), alpha=1.0 if seed == seeds[0] else 0.7, **_style(p, model))
    ax.set(xlabel="kimg", ylabel="EDM loss", title=f"Training loss ({p['profile']} profile; marker: training seed)",
           yscale="log")
    ax.grid(alpha=0.3)
    _legend(ax)
    _save(fig, path)


def teaser(p, curv: dict, path):
    models = list(curv)
    n = len(next(iter(curv.values()))["strip_sigma"])
    fig, axes = plt.subplots(len(models), n, figsize=(1.2 * n, 1.35 * len(models)), squeeze=False, layout="constrained")
    for i, model in enumerate(models):
        c = curv[model]
        for j in range(n):
            ax = axes[i][j]
            img = np.clip((c["strip"][j] + 1) / 2, 0, 1)
            ax.imshow(img.transpose(1, 2, 0).squeeze(-1) if img.shape[0] == 1 else img.transpose(1, 2, 0),
                      cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"σ={c['strip_sigma'][j]:.2g}", fontsize=7)
            if j == 0:
                ax.set_ylabel(model, fontsize=7)
    fig.suptitle(f"Denoiser output D(x_σ; σ) along one PF-ODE trajectory (same latent, {p['profile']} profile)", fontsize=8)
    _save(fig, path)


def write_figures(p, L, log=print):
    # FD figures draw the tables' numbers: Table 1's headline rows, Table 2, the hybrid table, by the functions and
    # from the outputs that the tables stage uses (same seeds: the same bits as its CSVs)
    from .tables import hybrid_table, read_floor, table1, table2

    t1, t2 = table1(p, L, read_floor(L)), table2(p, L)
    curv = {m: dict(safe_np_load(L.curvature(first(p, m)))) for m in p["models"]}  # the first training seed's
    fd_vs_nfe(p, t1, L.figure("fd_vs_nfe"))
    heatmap(p, t1, L.figure("rho_steps_heatmap"))
    curvature_plot(p, curv, L.figure("curvature_vs_sigma"))
    truncation_plot(p, curv, L.figure("truncation_vs_nfe"))
    guidance_plot(p, t2, L.figure("guidance_fd_vs_nfe"))
    discriminator_curves(p, L, L.figure("dg_learning_curves"))
    hybrid_plot(p, hybrid_table(p, L), L.figure("hybrid_switch"))
    lo, hi = min(p["sample"]["grid_steps"]), max(p["sample"]["grid_steps"])
    sample_grids(p, L, lo, L.figure("samples_low_nfe"))
    sample_grids(p, L, hi, L.figure("samples_high_nfe"))
    loss_curves(p, L, L.figure("loss_curves"))
    teaser(p, curv, L.figure("teaser_denoiser_strip"))
    log(f"wrote {len(list(L.figures.glob('*.png')))} figures to {L.figures} (PNG and PDF)")


def export_grid(params_path, model: str, steps: int, rho: float, seed=None, count: int = 100) -> list:
    """``aot-diffusion grid``: a square grid of one sampled setting of a trained model, as PNG and PDF."""
    from ..layout import Layout
    from ..params import load_params

    p = load_params(params_path)
    L = Layout(p["profile"])
    seed = p["sample"]["seeds"][0] if seed is None else seed
    found = {(st, r, sd): im for st, r, sd, im, _ in read_sweep(L.samples(model))}
    if (steps, float(rho), seed) not in found:
        raise FileNotFoundError(f"{L.samples(model)} has no setting steps {steps} rho {rho:g} seed {seed}; it has "
                       + ", ".join(f"steps {st} rho {r:g} seed {sd}" for st, r, sd in sorted(found)))
    images = found[(steps, float(rho), seed)]
    side = int(np.sqrt(min(count, len(images))))  # a full square: no ragged last row
    fig, axes = _figure(w=0.35 * side + 0.6, h=0.35 * side + 0.8)
    ax = axes[0][0]
    ax.imshow(_grid(images[:side * side], side), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{model}: NFE {num_function_evals(steps)}, rho {rho:g}, seed {seed} ({p['profile']})", fontsize=8)
    ax.axis("off")
    paths = [L.sample_grid(model, steps, rho, seed, ext) for ext in ("png", "pdf")]
    for path in paths:
        with AtomicPath(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=150, format=path.suffix[1:], metadata=FIXED_METADATA[path.suffix[1:]])
    plt.close(fig)
    return paths
