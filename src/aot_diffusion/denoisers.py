"""A trained network (ours) or a released one as a denoiser callable, and a sweep of sampler settings over it
written to one samples file (the format of sample_files.py)."""

from __future__ import annotations

import torch

from .sample_files import write_sweep
from .sampling import class_labels, latents, num_function_evals, sample_batched


def load_denoiser(path, device):
    """A trained network (ours) or a released NVlabs/edm / EDM-AOT pickle, as (net, denoise callable)."""
    if str(path).endswith(".pkl"):  # loaded without running code from the pickle
        from .edm_pickle import load_edm_pickle

        net = load_edm_pickle(path, key="ema", device=device).requires_grad_(False)
    else:
        from .training import load_network

        net = load_network(path, map_location=device)

    def denoise(x, sigma, labels):
        with torch.no_grad():
            return net(x.to(torch.float32), sigma.to(torch.float32), labels)

    return net, denoise


def image_shape(net):
    return (net.img_channels, net.img_resolution, net.img_resolution)


def sample_sweep(denoise, net, settings, s, device, out_path, log, name, denoise_euler=None, counter=None,
                 sampler=None) -> None:
    """Sample every (steps, rho, seed) setting from the seed's latents (shared by all models) into one file.
    ``s``: the `sample` parameters; ``name``: the model, for messages; ``sampler``: one with churn noise (DG's
    boosting), drawn from a CPU generator seeded by the sampling seed; ``counter``: counts the discriminator's
    gradient evaluations of each setting."""
    images, grads = {}, {}
    for k, (steps, rho, seed) in enumerate(settings):
        if counter is not None:
            counter.reset()
        z = latents(seed, s["num_samples"], image_shape(net), device)
        extra = {} if sampler is None else dict(sampler=sampler, generator=torch.Generator().manual_seed(int(seed)))
        x = sample_batched(denoise, z, class_labels(net.label_dim, s["num_samples"], device), s["batch_size"],
                           num_steps=steps, rho=rho, sigma_min=s["sigma_min"], sigma_max=s["sigma_max"],
                           denoise_euler=denoise_euler, **extra)
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"non-finite samples at steps {steps}, rho {rho:g}, seed {seed}: the network "
                                     f"{name} or the sampler settings (sample.sigma_max = {s['sigma_max']}) are broken")
        images[(steps, rho, seed)] = x.cpu().numpy()
        note = ""
        if counter is not None:  # discriminator gradient evaluations per sampler run (per batch)
            batches = -(-s["num_samples"] // s["batch_size"])
            grads[(steps, rho, seed)] = counter.num_grad_evals // batches
            note = f" + {grads[(steps, rho, seed)]} discriminator gradients"
        log(f"{k + 1}/{len(settings)}: steps {steps} rho {rho:g} seed {seed} NFE {num_function_evals(steps)}{note}")
    write_sweep(out_path, images, grads)
