"""Sampling stages: the NFE sweep of a model, the DG fake class, and the released-pickle sweep."""

from __future__ import annotations

import numpy as np
import torch

from ..denoisers import image_shape, load_denoiser, sample_sweep
from ..sample_files import to_uint8
from ..sampling import class_labels, latents, sample_batched
from . import Run


def sample(run: Run) -> None:
    s = run.params["sample"]
    released = run.stage.over == "released"
    if released and not run.params["released_pickle"]:
        raise FileNotFoundError("released_pickle is not set: --config released_pickle=/path/to/network.pkl")
    net, denoise = load_denoiser(run.params["released_pickle"] if released else run.layout.network(run.key), run.device)
    settings = [(st, r, seed) for st, r in run.sample_grid() for seed in s["seeds"]]
    sample_sweep(denoise, net, settings, run.params["sample"], run.device,
                 run.layout.released_samples if released else run.layout.samples(run.key), run.log, run.key)


def calibrate_sample(run: Run) -> None:
    """A released network (calibration.networks) at its paper's headline setting, every sampling seed."""
    from ..paper import calibration_setting

    spec = run.params["calibration"]["networks"][run.key]
    net, denoise = load_denoiser(spec["pickle"], run.device)
    if bool(net.label_dim) != spec["conditional"]:
        raise ValueError(f"calibration.networks.{run.key}: conditional is {str(spec['conditional']).lower()}, but "
                         f"{spec['pickle']} holds a{' class-conditional' if net.label_dim else 'n unconditional'} "
                         f"network (label_dim {net.label_dim})")
    cell = calibration_setting(spec["pairing"] != "none", spec["conditional"])
    run.log(f"{spec['pickle']}: {cell.source}'s setting, {cell.steps} steps rho {cell.rho:g} (published FID {cell.fid})")
    settings = [(cell.steps, cell.rho, seed) for seed in run.params["sample"]["seeds"]]
    sample_sweep(denoise, net, settings, run.params["sample"], run.device, run.layout.calibration_samples(run.key),
                 run.log, run.key)


def fake_samples(run: Run) -> None:
    """Samples of a trained model: the 'fake' class of its discriminators (protocol dg: the held-out fakes are
    drawn on top of guidance.num_fake; schema.fake_split)."""
    from ..schema import fake_split
    from ..utils import AtomicPath

    g, s = run.params["guidance"], run.params["sample"]
    n = sum(fake_split(g))  # training + held-out fakes
    net, denoise = load_denoiser(run.layout.network(run.key), run.device)
    labels = class_labels(net.label_dim, n, run.device)
    z = latents(run.params["seed"] + g["fake_seed_offset"], n, image_shape(net), run.device)
    x = sample_batched(denoise, z, labels, s["batch_size"], num_steps=g["fake_steps"], rho=g["fake_rho"],
                       sigma_min=s["sigma_min"], sigma_max=s["sigma_max"],
                       progress=lambda k: run.log(f"{k}/{n} samples"))
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"non-finite fake samples of {run.key}: the network or the sampler settings "
                                 f"(sample.sigma_min = {s['sigma_min']}, sigma_max = {s['sigma_max']}) are broken")
    ids = labels.argmax(1).cpu().numpy() if labels is not None else np.zeros(n, dtype=np.int64)
    with AtomicPath(run.layout.fakes(run.key), suffix=".npz") as tmp:  # uint8, as the samples scored and as DG stores them
        np.savez(tmp, images=to_uint8(x.cpu().numpy()), labels=ids, conditional=labels is not None)
