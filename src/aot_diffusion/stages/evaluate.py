"""Evaluation stages: FD (with interval and KID) of every sampler setting, and PF-ODE curvature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..safe_pickle import safe_np_load
from ..layout import sample_key
from ..metrics.scores import Reference, Sample, ScoreConfig, columns, describe, score
from ..params import edm_aot_pairs
from ..sampling import num_function_evals
from ..sample_files import read_sweep
from ..utils import AtomicPath
from . import Run


def _finite(run: Run, df: pd.DataFrame, what: str) -> None:
    """Every score finite before anything is written (a NaN in a table would pass as a number)."""
    values = df.select_dtypes("number")
    if not np.isfinite(values.to_numpy(dtype=float)).all():
        bad = [c for c in values if not np.isfinite(values[c]).all()]
        raise FloatingPointError(f"{run.stage.name}: non-finite {what} in columns {bad}: the samples or the "
                                 f"feature network are broken (check sample.sigma_min and the samples file)")


def reference(run: Run) -> Reference:
    """The real data every sample is scored against: stage fd_reference's statistics, the training images."""
    from ..data import load_dataset

    ref = safe_np_load(run.layout.fd_reference)
    return Reference(stats=(ref["mu"], ref["sigma"]), features=ref["ref_features"],
                     heldout_stats=(ref["mu_heldout"], ref["sigma_heldout"]),
                     train_images=load_dataset(run.layout.dataset)["train_images"],
                     train_features=ref["train_features"], heldout_features=ref["heldout_features"],
                     heldout_nn_quantiles=tuple(ref["heldout_nn_quantiles"]))


def _score(run: Run, samples_path, csv_path, features_path, name: str) -> None:
    from ..sample_files import from_uint8

    ref, feats, cfg = reference(run), run.feature_space(), ScoreConfig.from_params(run.params, run.device)
    rows, kept = [], {}
    for steps, rho, seed, pixels, grads in read_sweep(samples_path):
        x = feats(pixels)
        scores = score(Sample(x, from_uint8(pixels)), ref, cfg)
        rows.append(dict(model=name, steps=steps, rho=rho, nfe=num_function_evals(steps), seed=seed, n=len(x),
                         disc_grad_evals=grads, **columns(scores)))
        kept[sample_key(steps, rho, seed)] = x.astype(np.float32)
        run.log(f"steps {steps} rho {rho:g} seed {seed}: {describe(scores)}")
    df = pd.DataFrame(rows).sort_values(["rho", "steps", "seed"])
    _finite(run, df, "scores")
    with AtomicPath(features_path, suffix=".npz") as tmp:
        np.savez(tmp, **kept)
    with AtomicPath(csv_path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


def fd(run: Run) -> None:
    L = run.layout
    if run.stage.over == "released":
        _score(run, L.released_samples, L.released_fd, L.released_features, "released")
        return
    if run.stage.over == "network":  # a released network of calibration.networks
        _score(run, L.calibration_samples(run.key), L.calibration_fd(run.key), L.calibration_features(run.key), run.key)
        return
    _score(run, run.layout.samples(run.key), run.layout.fd(run.key), run.layout.features(run.key), run.key)


def guided_fd(run: Run) -> None:
    L = run.layout
    _score(run, L.guided_samples(run.key), L.guided_fd(run.key), L.guided_features(run.key), run.key)


def curvature(run: Run) -> None:
    from ..metrics.curvature import curvature_on_grid, curvature_profile, fine_trajectory, truncation_error
    from ..sampling import class_labels, edm_sampler, latents
    from ..denoisers import image_shape, load_denoiser

    c, s = run.params["curvature"], run.params["sample"]
    net, denoise = load_denoiser(run.layout.network(run.key), run.device)
    z = latents(run.params["seed"] + c["seed_offset"], c["num_latents"], image_shape(net), run.device)
    labels = class_labels(net.label_dim, c["num_latents"], run.device)
    fine, traj = fine_trajectory(denoise, z, fine_steps=c["fine_steps"], rho=c["rho"], sigma_min=s["sigma_min"],
                                 sigma_max=s["sigma_max"], class_labels=labels)
    run.log(f"fine solve: {c['fine_steps']} Heun steps")
    sigma, kappa = curvature_profile(fine, traj)
    grid, kappa_grid = curvature_on_grid(sigma, kappa, c["sigma_grid"], s["sigma_min"], s["sigma_max"])
    trunc = []
    for rho in ([run.params["pool_study"]["rho"]] if run.study else s["rho"]):  # a study variant: its own rho
        for steps in c["coarse_steps"]:
            coarse = edm_sampler(denoise, z, num_steps=steps, rho=rho, sigma_min=s["sigma_min"],
                                 sigma_max=s["sigma_max"], class_labels=labels)
            trunc.append(dict(steps=steps, rho=rho, nfe=num_function_evals(steps), error=truncation_error(coarse, fine)))
    if not np.isfinite([float(kappa_grid.mean()), *[t["error"] for t in trunc]]).all():  # before any output
        raise FloatingPointError(f"non-finite curvature or truncation error for {run.key}: the network or the "
                                 f"sampler settings (sample.sigma_min = {s['sigma_min']}) are broken")
    # The teaser strip: denoiser outputs D(x_sigma; sigma) of latent 0 at 8 points along the fine path.
    picks = np.unique(np.linspace(0, len(sigma) - 1, 8).round().astype(int))
    trunc_table = pd.DataFrame(trunc)
    with AtomicPath(run.layout.curvature(run.key), suffix=".npz") as tmp:
        np.savez(tmp, sigma=sigma, kappa_mean=kappa.mean(1), grid=grid, kappa_grid=kappa_grid,
                 trunc_steps=trunc_table["steps"].to_numpy(), trunc_rho=trunc_table["rho"].to_numpy(),
                 trunc_nfe=trunc_table["nfe"].to_numpy(), trunc_error=trunc_table["error"].to_numpy(),
                 strip=traj["denoised"][picks, 0].float().cpu().numpy(), strip_sigma=sigma[picks],
                 strip_x=traj["x"][picks, 0].float().cpu().numpy())
    metrics = dict(curvature_mean=float(kappa_grid.mean()), truncation=trunc)
    run.write_json(run.layout.curvature_metrics(run.key), metrics)
    run.log(f"mean curvature {metrics['curvature_mean']:.4f}")


def hybrid(run: Run) -> None:
    """Where along sigma AOT helps and hurts: sample with AOT's denoiser above sigma_s and EDM's below (and the
    reverse), from the main sweep's latents (first sampling seed), scored as the rest; pure models are the
    main sweep's rows at the same setting."""
    from ..sample_files import from_uint8, to_uint8
    from ..sampling import class_labels, latents
    from ..denoisers import image_shape, load_denoiser

    h, s = run.params["hybrid"], run.params["sample"]
    ref, feats, cfg = reference(run), run.feature_space(), ScoreConfig.from_params(run.params, run.device)
    rows, kept = [], {}
    seed = s["seeds"][0]
    for cond, models in edm_aot_pairs(run.params).items():
        edm_name, aot_name = (run.first(m) for m in models)
        edm_net, edm = load_denoiser(run.layout.network(edm_name), run.device)
        _, aot = load_denoiser(run.layout.network(aot_name), run.device)
        z = latents(seed, s["num_samples"], image_shape(edm_net), run.device)
        labels = class_labels(edm_net.label_dim, s["num_samples"], run.device)
        for above, below, hi, lo in (("aot", "edm", aot, edm), ("edm", "aot", edm, aot)):
            # every switch of one step count in one sweep: the steps above all switches are computed once
            runs = {steps: _switch_runs(hi, lo, z, labels, s, h, steps) for steps in h["steps"]}
            for switch in h["switch_sigmas"]:
                for steps in h["steps"]:
                    x = runs[steps][switch]
                    if not torch.isfinite(x).all():
                        raise FloatingPointError(f"non-finite hybrid samples ({cond}, {above} above sigma {switch}, "
                                                 f"{steps} steps): check the networks and sample.sigma_min")
                    pixels = to_uint8(x.cpu().numpy())
                    scores = score(Sample(feats(pixels), from_uint8(pixels)), ref, cfg)
                    name = f"{cond}_{above}_above_{switch:g}_steps{steps}"
                    kept[name] = pixels
                    rows.append(dict(pair=cond, above=f"{above} ({aot_name if above == 'aot' else edm_name})",
                                     below=f"{below} ({edm_name if below == 'edm' else aot_name})",
                                     switch_sigma=switch, steps=steps, rho=h["rho"], nfe=num_function_evals(steps),
                                     seed=seed, n=len(pixels), **columns(scores)))
                    run.log(f"{cond}: {above} above sigma {switch:g}, {below} below, NFE "
                            f"{num_function_evals(steps)}: {describe(scores)}")
    table = pd.DataFrame(rows)
    _finite(run, table, "hybrid scores")
    with AtomicPath(run.layout.hybrid_samples, suffix=".npz") as tmp:
        np.savez(tmp, **kept)
    with AtomicPath(run.layout.hybrid_fd, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)


def _switch_runs(high, low, z, labels, s, h, steps) -> dict:
    """{switch sigma: float32 samples} of the hybrid sampler at ``steps``, in batches of sample.batch_size."""
    from ..sampling import switch_sweep

    chunks: dict = {switch: [] for switch in h["switch_sigmas"]}
    for i in range(0, len(z), s["batch_size"]):
        lab = labels[i:i + s["batch_size"]] if labels is not None else None
        out = switch_sweep(high, low, z[i:i + s["batch_size"]], switches=h["switch_sigmas"], num_steps=steps,
                           rho=h["rho"], sigma_min=s["sigma_min"], sigma_max=s["sigma_max"], class_labels=lab)
        for switch, x in out.items():
            chunks[switch].append(x.float())
    return {switch: torch.cat(parts) for switch, parts in chunks.items()}
