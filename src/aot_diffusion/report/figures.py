"""Figures of the replication, from the stage outputs under results/."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..utils import atomic_path  # noqa: E402


def _save(fig, path: Path):
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _style(params, model):
    spec = params["models"][model]
    return dict(color="tab:red" if spec["aot"] else "tab:blue", ls="-" if spec["conditional"] else "--")


def fid_vs_nfe(params, fid: pd.DataFrame, path):
    rhos = sorted(fid["rho"].unique())
    fig, axes = plt.subplots(1, len(rhos), figsize=(4.2 * len(rhos), 3.4), squeeze=False)
    for ax, rho in zip(axes[0], rhos):
        for model, g in fid[fid["rho"] == rho].groupby("model"):
            s = g.groupby("nfe")["fid"].agg(["mean", "std", "min"]).reset_index()
            ax.errorbar(s["nfe"], s["mean"], yerr=s["std"].fillna(0), marker="o", ms=3, capsize=2, label=model,
                        **_style(params, model))
        ax.set(title=f"rho = {rho:g}", xlabel="NFE", ylabel="FID (mean ± std over seeds)", yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    _save(fig, path)


def heatmap(params, fid: pd.DataFrame, path):
    models = list(params["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.2), squeeze=False)
    vmin, vmax = fid["fid"].min(), fid.groupby(["model", "rho", "steps"])["fid"].min().max()
    for ax, model in zip(axes[0], models):
        piv = fid[fid["model"] == model].groupby(["rho", "steps"])["fid"].min().unstack("steps")
        im = ax.imshow(np.log10(piv.values), cmap="viridis", vmin=np.log10(vmin), vmax=np.log10(vmax), aspect="auto")
        ax.set_xticks(range(piv.shape[1]), [str(c) for c in piv.columns])
        ax.set_yticks(range(piv.shape[0]), [f"{r:g}" for r in piv.index])
        for (i, j), v in np.ndenumerate(piv.values):
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6, color="w")
        ax.set(title=model, xlabel="steps", ylabel="rho")
    fig.colorbar(im, ax=axes[0].tolist(), label="log10 FID (min over seeds)")
    _save(fig, path)


def curvature_plot(params, curv: dict, path):
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for model, c in curv.items():
        ax.plot(c["grid"], c["kappa_grid"], label=model, **_style(params, model))
    ax.set(xscale="log", xlabel="sigma", ylabel="curvature 1 - cos", title="PF-ODE curvature along the trajectory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def truncation_plot(params, curv: dict, path):
    rhos = sorted({r for c in curv.values() for r in c["trunc"][:, 1]})
    fig, axes = plt.subplots(1, len(rhos), figsize=(4.2 * len(rhos), 3.2), squeeze=False)
    for ax, rho in zip(axes[0], rhos):
        for model, c in curv.items():
            t = c["trunc"][c["trunc"][:, 1] == rho]
            ax.plot(t[:, 2], t[:, 3], marker="o", ms=3, label=model, **_style(params, model))
        ax.set(title=f"rho = {rho:g}", xlabel="NFE", ylabel="RMS error vs fine solve", yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    _save(fig, path)


def guidance_plot(params, results: Path, path):
    g = params["guidance"]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4), squeeze=False)
    for ax, cond in zip(axes[0], (False, True)):
        for model, spec in params["models"].items():
            if spec["conditional"] != cond:
                continue
            df = pd.read_csv(results / "fid" / f"{model}.csv")
            df = df[df["rho"].isin(g["rho"]) & df["steps"].isin(g["steps_list"])]
            s = df.groupby("nfe")["fid"].mean()
            ax.plot(s.index, s.values, marker="o", ms=3, label=model, **_style(params, model))
        for disc, dspec in g["discriminators"].items():
            if params["models"][dspec["model"]]["conditional"] != cond:
                continue
            s = pd.read_csv(results / "dg" / "fid" / f"{disc}.csv").groupby("nfe")["fid"].mean()
            st = _style(params, dspec["model"])
            ax.plot(s.index, s.values, marker="s", ms=3, color=st["color"], ls=":" if not dspec["aot"] else "-.",
                    label=disc)
        ax.set(title=f"{'conditional' if cond else 'unconditional'}: Discriminator Guidance", xlabel="NFE",
               ylabel="FID (mean over seeds)", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    _save(fig, path)


def _grid(images, ncol):
    images = images.astype(np.float32) / 255 if images.dtype == np.uint8 else np.clip((images + 1) / 2, 0, 1)
    n, c, h, w = images.shape
    nrow = int(np.ceil(n / ncol))
    canvas = np.ones((nrow * (h + 1), ncol * (w + 1), c))
    for k in range(n):
        i, j = divmod(k, ncol)
        canvas[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = images[k].transpose(1, 2, 0)
    return canvas.squeeze(-1) if c == 1 else canvas


def sample_grids(params, results: Path, steps: int, path):
    models = list(params["models"])
    rho = params["sample"]["rho"][0]
    seed = params["sample"]["seeds"][0]
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        with np.load(results / "samples" / f"{model}.npz") as s:
            x = s[f"steps{steps}_rho{rho:g}_seed{seed}"][:100]
        ax.imshow(_grid(x, 10), cmap="gray", vmin=0, vmax=1)
        ax.set(title=f"{model}\nsteps {steps}, NFE {2 * steps - 1}, rho {rho:g}")
        ax.axis("off")
    _save(fig, path)


def loss_curves(params, results: Path, path):
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for model in params["models"]:
        rows = [json.loads(line) for line in (results / "models" / model / "loss.jsonl").read_text().splitlines() if line]
        ax.plot([r["kimg"] for r in rows], [r["loss"] for r in rows], label=model, **_style(params, model))
    ax.set(xlabel="kimg", ylabel="EDM loss", title="Training loss", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def teaser(params, curv: dict, path):
    models = list(curv)
    n = len(next(iter(curv.values()))["strip_sigma"])
    fig, axes = plt.subplots(len(models), n, figsize=(1.2 * n, 1.35 * len(models)), squeeze=False)
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
    fig.suptitle("Denoiser output D(x_σ; σ) along one PF-ODE trajectory (same latent)", fontsize=8)
    _save(fig, path)


def write_figures(params, *, results: Path, out_dir: Path, log=print):
    out_dir.mkdir(parents=True, exist_ok=True)
    fid = pd.concat([pd.read_csv(results / "fid" / f"{m}.csv") for m in params["models"]])
    curv = {m: dict(np.load(results / "curvature" / f"{m}.npz")) for m in params["models"]}
    fid_vs_nfe(params, fid, out_dir / "fid_vs_nfe.png")
    heatmap(params, fid, out_dir / "rho_steps_heatmap.png")
    curvature_plot(params, curv, out_dir / "curvature_vs_sigma.png")
    truncation_plot(params, curv, out_dir / "truncation_vs_nfe.png")
    guidance_plot(params, results, out_dir / "guidance_fid_vs_nfe.png")
    lo, hi = min(params["sample"]["grid_steps"]), max(params["sample"]["grid_steps"])
    sample_grids(params, results, lo, out_dir / "samples_low_nfe.png")
    sample_grids(params, results, hi, out_dir / "samples_high_nfe.png")
    loss_curves(params, results, out_dir / "loss_curves.png")
    teaser(params, curv, out_dir / "teaser_denoiser_strip.png")
    log(f"[figures] wrote {len(list(out_dir.glob('*.png')))} figures to {out_dir}")
