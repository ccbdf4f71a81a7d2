"""Discriminator Guidance stages: the frozen noise-aware encoder, the discriminators (DG, AOT-DG, ablation)
and guided sampling. The FD feature network is a separate network: a metric is not what DG optimises."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data import load_dataset
from .. import guidance as dg
from . import Run
from .sample import load_denoiser, sweep


def _groups(channels: int) -> int:
    return math.gcd(32, channels)  # ADM's GroupNorm(32), narrowed for small widths


def train_encoder(run: Run) -> None:
    """cifar10: DG's published 32x32 classifier (a local file); offline profiles: trained here on noisy images."""
    g = run.p["guidance"]
    if g["adm_classifier"]:
        encoder = dg.load_dg_classifier(g["adm_classifier"], device=run.device)
        metrics = dict(source=str(g["adm_classifier"]))
    else:
        d = load_dataset(run.L.dataset)
        e = g["encoder"]
        config = dict(image_size=int(d["train_images"].shape[-1]), in_channels=int(d["train_images"].shape[1]),
                      out_channels=int(d["num_classes"]), model_channels=e["model_channels"],
                      channel_mult=e["channel_mult"], num_res_blocks=e["num_res_blocks"],
                      attention_resolutions=e["attention_resolutions"], num_head_channels=e["num_head_channels"],
                      norm_groups=_groups(e["model_channels"]))
        encoder, train_metrics = dg.train_noise_aware_classifier(
            torch.as_tensor(d["train_images"]), torch.as_tensor(d["train_labels"]), config=config,
            steps=g["encoder_steps"], batch_size=g["encoder_batch_size"], lr=g["encoder_lr"], seed=run.p["seed"],
            device=run.device, log_every=max(g["encoder_steps"] // 5, 1), log=run.log)
        held = dg.evaluate_classifier(encoder, torch.as_tensor(d["test_images"]), torch.as_tensor(d["test_labels"]),
                                      seed=run.p["seed"])
        metrics = dict(train_loss=train_metrics["train_loss"], heldout=held)
        run.log(f"noise-aware classifier: held-out accuracy {held['accuracy']:.3f}")
    from ..utils import atomic_save

    atomic_save(dict(config=encoder.config, state={k: v.cpu() for k, v in encoder.state_dict().items()}),
                run.L.encoder)
    run.write_json(run.L.encoder_metrics, metrics)


def _load_encoder(run: Run):
    blob = torch.load(run.L.encoder, map_location="cpu", weights_only=True)
    encoder = dg.ADMEncoderUNet(**blob["config"])
    encoder.load_state_dict(blob["state"])
    return encoder.to(run.device).eval().requires_grad_(False)


def _head_config(run: Run) -> dict:
    g = run.p["guidance"]
    base = dg.DG_HEAD_CONFIG if run.p["data"]["dataset"] == "cifar10" else dg.DIGITS_HEAD_CONFIG
    return dict(base, model_channels=g["head_channels"], num_res_blocks=g["head_depth"],
                num_head_channels=min(base["num_head_channels"], g["head_channels"]),
                norm_groups=_groups(g["head_channels"]))


def train_discriminator(run: Run) -> None:
    g, spec = run.p["guidance"], run.disc_spec(run.key)
    d = load_dataset(run.L.dataset)
    with np.load(run.L.fakes(spec["model"])) as f:
        fakes, fake_ids, conditional = torch.as_tensor(f["images"]), torch.as_tensor(f["labels"]), bool(f["conditional"])
    n_hold = max(int(len(fakes) * g["heldout_fraction"]), 1)  # held-out fakes for the reported accuracy
    real, real_ids = torch.as_tensor(d["train_images"]), torch.as_tensor(d["train_labels"])
    k = int(d["num_classes"])
    lab = (lambda ids: ids) if conditional else (lambda ids: None)
    run.log(f"model {spec['model']}, aot={spec['aot']}, conditional={conditional}, {len(fakes) - n_hold} fakes")
    disc, history = dg.fit_discriminator(
        _load_encoder(run), real, fakes[n_hold:], real_labels=lab(real_ids), fake_labels=lab(fake_ids[n_hold:]),
        label_dim=k if conditional else 0, aot=spec["aot"], pool_size=g["pool_size"], batch_size=g["batch_size"],
        steps=g["steps"], lr=g["lr"], weight_decay=g["weight_decay"], seed=run.p["seed"], device=run.device,
        head_config=_head_config(run), log_every=max(g["steps"] // 5, 1), log=run.log)
    test_real, test_ids = torch.as_tensor(d["test_images"]), torch.as_tensor(d["test_labels"])
    m = min(len(test_real), n_hold)
    held = dg.evaluate_discriminator(disc, test_real[:m], fakes[:m], real_labels=lab(test_ids[:m]),
                                     fake_labels=lab(fake_ids[:m]), seed=run.p["seed"] + 1, repeats=4)
    dg.save_discriminator(run.L.discriminator(run.key), disc)
    run.write_json(run.L.discriminator_metrics(run.key),
                   dict(heldout=held, train_final_loss=history[-1]["loss"] if history else float("nan")))
    bands = ", ".join(f"{b}: {v['accuracy']:.2f}" for b, v in held["bands"].items())
    run.log(f"held-out accuracy {held['accuracy']:.3f} (by sigma band: {bands})")


def guided_sample(run: Run) -> None:
    g, spec = run.p["guidance"], run.disc_spec(run.key)
    net, denoise = load_denoiser(run.L.network(spec["model"]), run.device)
    disc = dg.load_discriminator(run.L.discriminator(run.key), device=run.device)
    weight = g["weight_cond"] if net.label_dim else g["weight_uncond"]
    window = tuple(g["sigma_window"]) if g["sigma_window"] else dg.DG_SIGMA_WINDOW
    guided = dg.GuidedDenoiser(denoise, disc, weight, sigma_window=window)
    settings = [(st, r, seed) for r in g["rho"] for st in g["steps_list"] for seed in run.p["sample"]["seeds"]]
    sweep(run, net, denoise, settings, run.L.guided_samples(run.key), denoise_euler=guided, counter=guided)
