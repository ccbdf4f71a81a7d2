"""Discriminator Guidance stages: the frozen noise-aware encoder, the discriminators (DG, AOT-DG, ablation)
and guided sampling. The FD feature network is a separate network: a metric is not what DG optimises."""

from __future__ import annotations

import numpy as np
import torch

from ..safe_pickle import safe_torch_load, safe_np_load
from ..data import load_dataset
from .. import guidance as dg
from ..guidance.adm import encoder_config, norm_groups
from . import Run
from ..sampling import boosted_sampler
from ..denoisers import load_denoiser, sample_sweep


def train_encoder(run: Run) -> None:
    """cifar10: DG's published 32x32 classifier (a local file); offline profiles: trained here on noisy images."""
    g = run.params["guidance"]
    if g["adm_classifier"]:
        encoder = dg.load_dg_classifier(g["adm_classifier"], device=run.device, encoder=g["encoder"])
        metrics = dict(source=str(g["adm_classifier"]))
    else:
        d = load_dataset(run.layout.dataset)
        e = g["encoder"]
        config = encoder_config(e, image_size=int(d["train_images"].shape[-1]),
                                in_channels=int(d["train_images"].shape[1]), out_channels=int(d["num_classes"]))
        encoder, train_metrics = dg.train_noise_aware_classifier(
            torch.as_tensor(d["train_images"]), torch.as_tensor(d["train_labels"]), config=config,
            steps=g["encoder_steps"], batch_size=g["encoder_batch_size"], lr=g["encoder_lr"], seed=run.params["seed"],
            device=run.device, log_every=max(g["encoder_steps"] // 5, 1), log=run.log)
        held = dg.evaluate_classifier(encoder, torch.as_tensor(d["test_images"]), torch.as_tensor(d["test_labels"]),
                                      seed=run.params["seed"])
        metrics = dict(train_loss=train_metrics["train_loss"], heldout=held)
        run.log(f"noise-aware classifier: held-out accuracy {held['accuracy']:.3f}")
    from ..utils import atomic_save

    atomic_save(dict(config=encoder.config, state={k: v.cpu() for k, v in encoder.state_dict().items()}),
                run.layout.encoder)
    run.write_json(run.layout.encoder_metrics, metrics)


def _load_encoder(run: Run):
    blob = safe_torch_load(run.layout.encoder)
    encoder = dg.ADMEncoderUNet(**blob["config"])
    encoder.load_state_dict(blob["state"])
    return encoder.to(run.device).eval().requires_grad_(False)


def _head_config(run: Run) -> dict:
    g = run.params["guidance"]
    base = dg.DG_HEAD_CONFIG if run.params["data"]["dataset"] == "cifar10" else dg.DIGITS_HEAD_CONFIG
    return dict(base, model_channels=g["head_channels"], num_res_blocks=g["head_depth"],
                num_head_channels=min(base["num_head_channels"], g["head_channels"]),
                norm_groups=norm_groups(g["head_channels"]))


def _as_stored(images) -> torch.Tensor:
    """Images as DG sees both classes: uint8 pixels (quantised here if stored as floats), read back to [-1, 1]."""
    from ..sample_files import from_uint8, to_uint8

    images = np.asarray(images)
    return torch.as_tensor(from_uint8(images if images.dtype == np.uint8 else to_uint8(images)))


def train_discriminator(run: Run) -> None:
    """DG's discriminator on uint8 reals vs uint8 fakes.

    guidance.protocol early_stop: real and fake halves per batch, early-stopped on a held-out split; the held-out
    fakes (``guidance.heldout_fraction`` of num_fake) and as many held-out real images are split in two: the first
    half decides early stopping (validation), the second gives the reported accuracy (test). dg: DG's train.py,
    all num_fake fakes and every training image in shuffled mixed batches for a fixed number of epochs; the
    held-out fakes (sampled on top) only draw the learning curve (first half) and give the accuracy (second).
    """
    import math

    import pandas as pd

    from ..schema import fake_split

    g, job = run.params["guidance"], run.discriminator()
    conditional = job["conditional"]
    d = load_dataset(run.layout.dataset)
    with safe_np_load(run.layout.fakes(job["instance"])) as f:
        fakes, fake_ids = _as_stored(f["images"]), torch.as_tensor(f["labels"])
        if bool(f["conditional"]) != conditional:
            raise ValueError(f"{run.key}: the fakes of {job['instance']} are "
                             f"{'' if f['conditional'] else 'un'}conditional, its model is not: rerun fake_samples")
    n_train, n_hold = fake_split(g)
    if len(fakes) != n_train + n_hold:
        raise ValueError(f"{run.key}: the fakes file holds {len(fakes)} images, guidance.* asks for {n_train} "
                         f"training + {n_hold} held-out fakes: rerun fake_samples")
    real, real_ids = _as_stored(d["train_images"]), torch.as_tensor(d["train_labels"])
    test_real, test_ids = _as_stored(d["test_images"]), torch.as_tensor(d["test_labels"])
    m = min(len(test_real), n_hold) // 2  # per class of image and per split
    if m < 1:
        raise ValueError(f"{run.key}: too few held-out images for validation and test ({n_hold} fakes, "
                         f"{len(test_real)} real): raise guidance.num_fake or guidance.heldout_fraction")
    k = int(d["num_classes"])
    lab = (lambda ids: ids) if conditional else (lambda ids: None)
    val = (slice(0, m), slice(0, m))
    test = (slice(m, 2 * m), slice(m, 2 * m))

    def evaluate(disc, split, seed, repeats):
        r, f_ = split
        return dg.evaluate_discriminator(disc, test_real[r], fakes[f_], real_labels=lab(test_ids[r]),
                                         fake_labels=lab(fake_ids[f_]), seed=seed, repeats=repeats)

    dg_protocol = g["protocol"] == "dg"
    if dg_protocol:
        epochs = run.guidance_choice("epochs")
        steps = epochs * math.ceil((len(real) + n_train) / g["batch_size"])
        budget = f"DG's protocol: {epochs} epochs of {len(real)} real + {n_train} fake images = {steps} steps"
    else:
        steps, budget = g["max_steps"], f"early stopping, at most {g['max_steps']} steps"
    options = "".join(f" {k}={v}" for k, v in job["pairing_options"].items())
    run.log(f"model {job['model']}, pairing={job['pairing']}{options}, conditional={conditional}, {n_train} training fakes, "
            f"{m} + {m} held-out (validation, test) per class; {budget}")
    disc, history = dg.fit_discriminator(
        _load_encoder(run), real, fakes[n_hold:], real_labels=lab(real_ids), fake_labels=lab(fake_ids[n_hold:]),
        label_dim=k if conditional else 0, pairing=job["pairing"], pairing_options=job["pairing_options"],
        pool_size=g["pool_size"], batch_size=g["batch_size"],
        steps=steps, lr=g["lr"], weight_decay=g["weight_decay"], seed=run.params["seed"], device=run.device,
        head_config=_head_config(run), log_every=g["eval_every"], patience=None if dg_protocol else g["patience"],
        validate=lambda disc: evaluate(disc, val, run.params["seed"] + 2, 2), log=run.log,
        solver=run.params["train"]["solver"], mixed=dg_protocol)
    window = None
    if g["sigma_window"] == "validation":  # chosen on the validation split, before the test split is read
        window = dg.window_from_validation(evaluate(disc, val, run.params["seed"] + 2, 2)["bands"])
        run.log(f"guidance window from the validation split: {window['window']}")
    held = evaluate(disc, test, run.params["seed"] + 1, 4)
    if not (np.isfinite(held["bce"]) and all(torch.isfinite(p).all() for p in disc.parameters())):
        raise FloatingPointError(f"discriminator {run.key}: non-finite weights or held-out loss; lower "
                                 f"guidance.lr ({g['lr']}) or check the fakes")
    best = next(h for h in history if h.get("best"))
    dg.save_discriminator(run.layout.discriminator(run.key), disc)
    from ..utils import AtomicPath

    with AtomicPath(run.layout.discriminator_curve(run.key), suffix=".csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    run.write_json(run.layout.discriminator_metrics(run.key),
                   dict(heldout=held, best_step=best["step"], steps_run=history[-1]["step"],
                        val_bce=best["val_bce"], train_final_loss=history[-1]["loss"],
                        **({"sigma_window": window} if window else {})))
    bands = ", ".join(f"{b}: {v['accuracy']:.2f}" for b, v in held["bands"].items())
    run.log(f"best step {best['step']} of {history[-1]['step']}; test accuracy {held['accuracy']:.3f} "
            f"(by sigma band: {bands})")


def sigma_window(run: Run, disc: str):
    """Where a discriminator guides: DG's window (null), the configured [low, high], or the one its training
    chose on the validation split ("validation"; None where no band was above chance)."""
    import json

    window = run.params["guidance"]["sigma_window"]
    if window == "validation":
        chosen = json.loads(run.layout.discriminator_metrics(disc).read_text())["sigma_window"]["window"]
        return tuple(chosen) if chosen else None
    return tuple(window) if window else dg.DG_SIGMA_WINDOW


def guided_sample(run: Run) -> None:
    job = run.discriminator()
    net, denoise = load_denoiser(run.layout.network(job["instance"]), run.device)
    disc = dg.load_discriminator(run.layout.discriminator(run.key), device=run.device)
    weight = run.guidance_choice("weight")
    window = sigma_window(run, run.key)
    guided = dg.GuidedDenoiser(denoise, disc, weight if window else 0.0, sigma_window=window or dg.DG_SIGMA_WINDOW)
    run.log(f"guidance window sigma {window}" if window else "no band above chance on validation: no guidance")
    boosting = run.guidance_choice("boosting")
    if boosting:
        run.log("DG's boosting: churn and doubled guidance where the discriminator says fake")
    settings = [(st, r, seed) for st, r in run.sample_grid() for seed in run.params["sample"]["seeds"]]
    sample_sweep(denoise, net, settings, run.params["sample"], run.device, run.layout.guided_samples(run.key),
                 run.log, run.key, denoise_euler=guided, counter=guided, sampler=boosted_sampler if boosting else None)
