"""Training and honest evaluation: the noise-aware classifier, and the discriminator on real (1) vs
generated (0) images perturbed with random or AOT-paired noise.

Noise-aware classifier (what DG freezes): cross-entropy on x + sigma n at VP times, tau uniform on
[1e-5, 1] as ADM trains its classifier; the model sees alpha (x + sigma n) at time tau * 999.
Discriminator: binary cross-entropy at DG's importance-sampled VP times, Adam (lr 3e-4, weight decay
1e-7, batch 128) on the head only. AOT-DG: the unit noise of each pool of real images and of each
pool of fake images is paired with its images by the pairing of the model it guides
(:data:`aot_diffusion.aot.PAIRINGS`; class by class with labels) before sigma is drawn, exactly as AOT pairs noise for the diffusion model.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..aot import pair
from ._inputs import check_set, make_generator, sigma_vector
from .adm import ADMEncoderUNet
from .discriminators import build_discriminator
from .vp import SIGMA_BANDS, SIGMA_DISTRIBUTIONS, draw_sigma, vp_input


class _IndexStream:
    """Endless stream of indices of a set, reshuffled each epoch."""

    def __init__(self, n, generator, device):
        self.n, self.generator, self.device = n, generator, device
        self.order, self.pos = torch.randperm(n, generator=generator, device=device), 0

    def take(self, k):
        parts = []
        while k > 0:
            if self.pos == self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.generator, device=self.device), 0
            m = min(k, self.n - self.pos)
            parts.append(self.order[self.pos:self.pos + m])
            self.pos, k = self.pos + m, k - m
        return torch.cat(parts)


def _band_stats(sigma: torch.Tensor, correct: torch.Tensor, loss: torch.Tensor) -> dict:
    """Accuracy and mean loss in each sigma band of :data:`SIGMA_BANDS` (nan where a band is empty)."""
    out = {}
    for name, (lo, hi) in SIGMA_BANDS.items():
        inside = (sigma >= lo) & (sigma < hi)
        n = int(inside.sum())
        out[name] = dict(accuracy=correct[inside].mean().item() if n else float("nan"),
                         loss=loss[inside].mean().item() if n else float("nan"), n=n)
    return out


def _resolve_device(device, module: nn.Module) -> torch.device:
    return next(module.parameters()).device if device is None else torch.device(device)


# ---------------------------------------------------------------------------------------------- classifier


def train_noise_aware_classifier(images: torch.Tensor, labels, *, config: dict, steps: int, batch_size: int = 128,
                                 lr: float = 3e-4, weight_decay: float = 0.0, seed: int = 0, device="cpu",
                                 sigma_distribution: str = "vp_uniform", log_every: int = 100,
                                 log: Optional[Callable[[str], None]] = print):
    """Train ``ADMEncoderUNet(**config)`` to classify noisy images x + sigma n; returns (model, metrics).

    ``config["out_channels"]`` must cover the classes. sigma comes from the VP time (tau uniform on
    [1e-5, 1] by default, see :func:`draw_sigma`); AdamW with ADM's classifier defaults (lr 3e-4).
    ``metrics``: ``history`` (per ``log_every`` steps: step, loss, accuracy) and the training loss /
    accuracy over the last fifth of the steps, overall and per sigma band (``bands``). No held-out data
    is used here: see :func:`evaluate_classifier`. The model is returned frozen, in eval mode.
    """
    device = torch.device(device)
    ids = check_set(images, labels, "classifier training")
    if ids is None:
        raise ValueError("the noise-aware classifier needs class labels")
    if steps < 1 or batch_size < 1 or log_every < 1:
        raise ValueError("steps, batch_size and log_every must be >= 1")
    torch.manual_seed(seed)  # before the model is built: two runs with one seed give identical weights
    model = ADMEncoderUNet(**config).to(device)
    if int(ids.max()) >= model.config["out_channels"]:
        raise ValueError(f"labels go up to {int(ids.max())} but the classifier has "
                         f"out_channels={model.config['out_channels']}")
    images, ids = images.to(device, torch.float32), ids.to(device)
    if tuple(images.shape[1:]) != (model.in_channels, model.image_size, model.image_size):
        raise ValueError(f"images {list(images.shape[1:])} do not fit the classifier config "
                         f"(in_channels={model.in_channels}, image_size={model.image_size})")
    gen = make_generator(seed, device)
    stream = _IndexStream(images.shape[0], gen, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    history, window, tail = [], [], []
    tail_from = steps - max(steps // 5, 1)
    for step in range(1, steps + 1):
        idx = stream.take(batch_size)
        sigma = draw_sigma(batch_size, distribution=sigma_distribution, generator=gen, device=device)
        noise = torch.randn(images[idx].shape, generator=gen, device=device)
        x_vp, t = vp_input(images[idx] + sigma.reshape(-1, 1, 1, 1) * noise, sigma)
        logits = model(x_vp, t)
        loss = F.cross_entropy(logits, ids[idx], reduction="none")
        optimizer.zero_grad(set_to_none=True)
        loss.mean().backward()
        optimizer.step()
        correct = (logits.detach().argmax(dim=1) == ids[idx]).float()
        window.append(torch.stack([loss.detach().mean(), correct.mean()]))
        if step > tail_from:
            tail.append((sigma, correct, loss.detach()))
        if step % log_every == 0 or step == steps:
            mean_loss, acc = torch.stack(window).mean(dim=0).tolist()
            history.append(dict(step=step, loss=mean_loss, accuracy=acc))
            window = []
            if log is not None:
                log(f"[classifier] step {step}/{steps} loss {mean_loss:.4f} acc {acc:.3f}")
    sigma, correct, loss = (torch.cat(z) for z in zip(*tail))
    metrics = dict(history=history, steps=steps, train_loss=loss.mean().item(),
                   train_accuracy=correct.mean().item(), bands=_band_stats(sigma, correct, loss))
    return model.requires_grad_(False).eval(), metrics


@torch.no_grad()
def evaluate_classifier(model: ADMEncoderUNet, images: torch.Tensor, labels, *, seed: int = 0,
                        repeats: int = 1, batch_size: int = 256, sigma_distribution: str = "vp_uniform",
                        device=None) -> dict:
    """Held-out accuracy / cross-entropy of a noise-aware classifier, overall and per sigma band.

    Noise and sigma come from a CPU generator seeded with ``seed`` (the same draws on every device).
    """
    device = _resolve_device(device, model)
    ids = check_set(images, labels, "held-out")
    images, ids = images.repeat(repeats, 1, 1, 1).cpu().float(), ids.repeat(repeats).cpu()
    gen = make_generator(seed, "cpu")
    sigma = draw_sigma(images.shape[0], distribution=sigma_distribution, generator=gen)
    noisy = images + sigma.reshape(-1, 1, 1, 1) * torch.randn(images.shape, generator=gen)
    correct, loss = [], []
    for start in range(0, images.shape[0], batch_size):
        part = slice(start, start + batch_size)
        logits = model(*vp_input(noisy[part].to(device), sigma[part].to(device))).cpu()
        correct.append((logits.argmax(dim=1) == ids[part]).float())
        loss.append(F.cross_entropy(logits, ids[part], reduction="none"))
    correct, loss = torch.cat(correct), torch.cat(loss)
    return dict(accuracy=correct.mean().item(), cross_entropy=loss.mean().item(), n=int(correct.numel()),
                bands=_band_stats(sigma, correct, loss))


# ---------------------------------------------------------------------------------------------- discriminator


def discriminator_batches(real_images: torch.Tensor, fake_images: torch.Tensor, *, real_labels=None,
                          fake_labels=None, pairing: str = "none", pairing_options: dict | None = None,
                          pool_size: int = 512, batch_size: int = 128,
                          steps: Optional[int] = None, seed: int = 0, device=None, sigma_distribution: str = "dg",
                          P_mean: float = -1.2, P_std: float = 1.2, solver: str = "auto",
                          mixed: bool = False) -> Iterator[dict]:
    """Yield discriminator training batches on ``device`` (default: the real images'), half real, half fake;
    ``mixed``: as DG's train.py, batches of the shuffled union of real and fake images (see below).

    Pools of ``pool_size`` real and ``pool_size`` fake images are drawn (epoch-wise shuffling) with one
    unit Gaussian noise each; each pool's noise is paired with its images by ``pairing`` (aot.PAIRINGS: ``none``
    keeps it random, ``assignment`` is AOT-DG's exact assignment; per class when labels are given). A pool is consumed in consecutive chunks of
    ``batch_size // 2`` per side; sigma is then drawn per sample, independently of the pairing (DG's
    VP-time draw by default, see :func:`draw_sigma`). Each batch is a dict with ``x`` (noisy input
    ``images + sigma * noise``), ``target`` (float 1/0), ``sigma`` [B], ``class_labels`` (int ids or
    None), ``images``, ``noise`` and ``is_real`` (bool). ``steps=None`` yields forever.

    ``mixed``: one stream over the union of real and fake images, reshuffled each epoch; a pool is ``pool_size``
    of them (real and fake together, AOT pairing over the whole pool, per class when labelled), consumed in
    consecutive batches of ``batch_size``: how many of a batch are real varies, as in DG's shuffled dataset.
    """
    if mixed:
        yield from _mixed_batches(real_images, fake_images, real_labels=real_labels, fake_labels=fake_labels,
                                  pairing=pairing, pairing_options=pairing_options, pool_size=pool_size,
                                  batch_size=batch_size, steps=steps, seed=seed, device=device, sigma_distribution=sigma_distribution, solver=solver)
        return
    real_ids, fake_ids = _check_real_fake(real_images, fake_images, real_labels, fake_labels)
    if batch_size < 2 or batch_size % 2:
        raise ValueError(f"batch_size must be an even number >= 2 (half real, half fake), got {batch_size}")
    half = batch_size // 2
    if pool_size < half:
        raise ValueError(f"pool_size ({pool_size}) must hold at least batch_size // 2 = {half} images")
    if pool_size > min(real_images.shape[0], fake_images.shape[0]):
        raise ValueError(f"pool_size ({pool_size}) exceeds the number of real ({real_images.shape[0]}) "
                         f"or fake ({fake_images.shape[0]}) images")
    if sigma_distribution not in SIGMA_DISTRIBUTIONS:
        raise ValueError(f"sigma distribution must be one of {SIGMA_DISTRIBUTIONS}, got {sigma_distribution!r}")
    device = real_images.device if device is None else torch.device(device)
    sets = [(images.to(device, torch.float32), ids.to(device) if ids is not None else None)
            for images, ids in ((real_images, real_ids), (fake_images, fake_ids))]
    gen = make_generator(seed, device)
    streams = [_IndexStream(images.shape[0], gen, device) for images, _ in sets]
    per_pool = pool_size // half

    def new_pool(side):
        images, ids = sets[side]
        idx = streams[side].take(pool_size)
        pool_images, pool_ids = images[idx], (ids[idx] if ids is not None else None)
        noise = torch.randn(pool_images.shape, generator=gen, device=device)
        if pairing != "none":
            noise = pair(pairing, pool_images, noise, pool_ids, generator=gen, solver=solver,  # aot.PAIRINGS
                         options=pairing_options)
        return pool_images, pool_ids, noise

    step = 0
    while steps is None or step < steps:
        pools = new_pool(0), new_pool(1)
        for j in range(per_pool):
            if steps is not None and step >= steps:
                return
            chunk = slice(j * half, (j + 1) * half)
            images = torch.cat([pools[0][0][chunk], pools[1][0][chunk]])
            noise = torch.cat([pools[0][2][chunk], pools[1][2][chunk]])
            ids = torch.cat([pools[0][1][chunk], pools[1][1][chunk]]) if real_ids is not None else None
            sigma = draw_sigma(batch_size, distribution=sigma_distribution, P_mean=P_mean, P_std=P_std,
                               generator=gen, device=device)
            is_real = torch.arange(batch_size, device=device) < half
            yield dict(x=images + sigma.reshape(-1, 1, 1, 1) * noise, target=is_real.float(), sigma=sigma,
                       class_labels=ids, images=images, noise=noise, is_real=is_real)
            step += 1


def _check_real_fake(real_images, fake_images, real_labels, fake_labels):
    """(real ids, fake ids), checked: one image shape, labels for both sets or for neither."""
    real_ids = check_set(real_images, real_labels, "real")
    fake_ids = check_set(fake_images, fake_labels, "fake")
    if real_images.shape[1:] != fake_images.shape[1:]:
        raise ValueError(f"real images {list(real_images.shape[1:])} and fake images "
                         f"{list(fake_images.shape[1:])} must have the same per-image shape")
    if (real_ids is None) != (fake_ids is None):
        raise ValueError("give class labels for both real and fake images, or for neither")
    return real_ids, fake_ids


def _mixed_batches(real_images, fake_images, *, real_labels, fake_labels, pairing, pairing_options, pool_size, batch_size, steps, seed,
                   device, sigma_distribution, solver) -> Iterator[dict]:
    """discriminator_batches(mixed=True): DG's shuffled union of reals (target 1) and fakes (target 0)."""
    real_ids, fake_ids = _check_real_fake(real_images, fake_images, real_labels, fake_labels)
    n = real_images.shape[0] + fake_images.shape[0]
    if batch_size < 1 or pool_size < batch_size or pool_size % batch_size or pool_size > n:
        raise ValueError(f"pool_size ({pool_size}) must be a multiple of batch_size ({batch_size}) and at most the "
                         f"{n} real and fake images")
    if sigma_distribution not in SIGMA_DISTRIBUTIONS:
        raise ValueError(f"sigma distribution must be one of {SIGMA_DISTRIBUTIONS}, got {sigma_distribution!r}")
    device = real_images.device if device is None else torch.device(device)
    images = torch.cat([real_images.to(device, torch.float32), fake_images.to(device, torch.float32)])
    target = torch.cat([torch.ones(real_images.shape[0]), torch.zeros(fake_images.shape[0])]).to(device)
    ids = torch.cat([real_ids, fake_ids]).to(device) if real_ids is not None else None
    gen = make_generator(seed, device)
    stream = _IndexStream(n, gen, device)
    step = 0
    while steps is None or step < steps:
        idx = stream.take(pool_size)
        pool_images, pool_ids = images[idx], (ids[idx] if ids is not None else None)
        noise = torch.randn(pool_images.shape, generator=gen, device=device)
        if pairing != "none":
            noise = pair(pairing, pool_images, noise, pool_ids, generator=gen, solver=solver,  # aot.PAIRINGS
                         options=pairing_options)
        for j in range(pool_size // batch_size):
            if steps is not None and step >= steps:
                return
            chunk = slice(j * batch_size, (j + 1) * batch_size)
            sigma = draw_sigma(batch_size, distribution=sigma_distribution, generator=gen, device=device)
            t = target[idx[chunk]]
            yield dict(x=pool_images[chunk] + sigma.reshape(-1, 1, 1, 1) * noise[chunk], target=t, sigma=sigma,
                       class_labels=pool_ids[chunk] if pool_ids is not None else None, images=pool_images[chunk],
                       noise=noise[chunk], is_real=t > 0.5)
            step += 1


def optimise_discriminator(disc: nn.Module, real_images: torch.Tensor, fake_images: torch.Tensor, *,
                        real_labels=None, fake_labels=None, pairing: str = "none", pairing_options: dict | None = None,
                        pool_size: int = 512,
                        batch_size: int = 128, steps: int = 1000, lr: float = 3e-4, weight_decay: float = 1e-7,
                        seed: int = 0, device=None, sigma_distribution: str = "dg", log_every: int = 50,
                        solver: str = "auto", validate: Optional[Callable[[nn.Module], dict]] = None,
                        patience: Optional[int] = 5, log: Optional[Callable[[str], None]] = None,
                        mixed: bool = False) -> list[dict]:
    """Train ``disc`` with BCE-with-logits on real (1) vs fake (0) perturbed images; returns its history.

    Adam with DG's defaults over the trainable parameters only (a frozen encoder stays bitwise
    unchanged). Batches come from :func:`discriminator_batches` on ``device`` (default: the
    discriminator's). History: one dict per ``log_every`` steps (and the last) with ``step``, ``loss``
    and ``accuracy`` over the window, and ``noise_distance``, the mean real-image-to-noise Euclidean
    distance of the window (what AOT lowers).

    Early stopping: with ``validate`` (disc -> dict with ``bce`` and ``accuracy`` on a held-out split),
    it is called every ``log_every`` steps and its values join the history (``val_bce``,
    ``val_accuracy``); training stops once ``patience`` validations in a row have not lowered the best
    held-out BCE, and the trainable weights of the best validation are restored. ``steps`` is then
    the maximum. ``patience=None``: no early stopping (DG's fixed budget): ``validate`` only draws the
    learning curve, and the last weights are kept. ``mixed``: DG's shuffled mixed batches
    (:func:`discriminator_batches`).
    """
    if steps < 1 or log_every < 1 or (patience is not None and patience < 1):
        raise ValueError("steps, log_every and patience must be >= 1")
    device = _resolve_device(device, disc)
    disc.to(device)
    conditional = getattr(disc, "label_dim", 0) > 0
    if conditional and (real_labels is None or fake_labels is None):
        raise ValueError("a conditional discriminator needs real_labels and fake_labels")
    if not conditional:
        real_labels = fake_labels = None  # an unconditional discriminator pairs noise over the whole pool
    params = [p for p in disc.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the discriminator has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    trainable = [(n, p) for n, p in disc.named_parameters() if p.requires_grad]
    disc.train()
    history, window, best, since = [], [], None, 0
    batches = discriminator_batches(real_images, fake_images, real_labels=real_labels, fake_labels=fake_labels,
                                    pairing=pairing, pairing_options=pairing_options, pool_size=pool_size,
                                    batch_size=batch_size, steps=steps, seed=seed,
                                    device=device, sigma_distribution=sigma_distribution, solver=solver,
                                    mixed=mixed)
    for step, batch in enumerate(batches, start=1):
        logits = disc(batch["x"], batch["sigma"], batch["class_labels"])
        loss = F.binary_cross_entropy_with_logits(logits, batch["target"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            real = batch["is_real"]
            acc = ((logits > 0).float() == batch["target"]).float().mean()
            if mixed:  # a batch may hold no real image; no host sync to ask
                norms = (batch["images"] - batch["noise"]).flatten(1).norm(dim=1)
                dist = (norms * real).sum() / real.sum().clamp(min=1)
            else:
                dist = (batch["images"][real] - batch["noise"][real]).flatten(1).norm(dim=1).mean()
            window.append(torch.stack([loss.detach(), acc, dist]))  # on the device: no host sync per step
        if step % log_every == 0 or step == steps:
            mean_loss, mean_acc, mean_dist = torch.stack(window).mean(dim=0).tolist()
            entry = dict(step=step, loss=mean_loss, accuracy=mean_acc, noise_distance=mean_dist)
            window = []
            note = ""
            if validate is not None:
                val = validate(disc)
                disc.train()
                entry.update(val_bce=float(val["bce"]), val_accuracy=float(val["accuracy"]))
                if patience is None:
                    pass  # the learning curve only
                elif best is None or entry["val_bce"] < best[0]:
                    best, since = (entry["val_bce"], step, {n: p.detach().clone() for n, p in trainable}), 0
                else:
                    since += 1
                note = f", held-out bce {entry['val_bce']:.4f} acc {entry['val_accuracy']:.3f}"
            history.append(entry)
            if log is not None:
                log(f"[discriminator] step {step}/{steps} loss {mean_loss:.4f} acc {mean_acc:.3f}{note}")
            if validate is not None and patience is not None and since >= patience:
                if log is not None:
                    log(f"[discriminator] early stop: no held-out improvement in {patience} checks; "
                        f"best at step {best[1]}")
                break
    if best is not None:  # the weights of the best held-out BCE
        with torch.no_grad():
            for n, p in trainable:
                p.copy_(best[2][n])
        for entry in history:
            entry["best"] = entry["step"] == best[1]
    elif validate is not None:  # a fixed budget: the last weights are the ones kept
        for entry in history:
            entry["best"] = entry is history[-1]
    disc.eval()
    return history


def fit_discriminator(encoder: ADMEncoderUNet, real_images: torch.Tensor, fake_images: torch.Tensor, *,
                      real_labels=None, fake_labels=None, label_dim: int = 0, pairing: str = "none",
                      pairing_options: dict | None = None,
                      pool_size: int = 512, batch_size: int = 128, steps: int = 1000, lr: float = 3e-4,
                      weight_decay: float = 1e-7, seed: int = 0, device="cpu", head_config: Optional[dict] = None,
                      head_num_classes: Optional[int] = None, log_every: int = 50,
                      validate: Optional[Callable[[nn.Module], dict]] = None, patience: Optional[int] = 5,
                      log: Optional[Callable[[str], None]] = None, solver: str = "auto", mixed: bool = False):
    """Build DG's discriminator on the frozen ``encoder`` (head seeded by ``seed``) and train it.

    ``label_dim > 0`` makes it class-conditional (labels required). ``validate``/``patience``: early
    stopping, see :func:`optimise_discriminator`. Returns (disc, history).
    """
    disc = build_discriminator(encoder, label_dim=label_dim, head_config=head_config,
                               head_num_classes=head_num_classes, seed=seed, device=device)
    history = optimise_discriminator(disc, real_images, fake_images, real_labels=real_labels, fake_labels=fake_labels,
                                  pairing=pairing, pairing_options=pairing_options, pool_size=pool_size,
                                  batch_size=batch_size, steps=steps, lr=lr,
                                  weight_decay=weight_decay, seed=seed, device=device, log_every=log_every,
                                  validate=validate, patience=patience, log=log, solver=solver, mixed=mixed)
    return disc, history


@torch.no_grad()
def evaluate_discriminator(disc: nn.Module, real_images: torch.Tensor, fake_images: torch.Tensor, *,
                           real_labels=None, fake_labels=None, seed: int = 0, repeats: int = 1,
                           batch_size: int = 256, sigma_distribution: str = "dg", sigma=None,
                           device=None) -> dict:
    """Held-out accuracy and BCE of ``disc`` on real (1) / fake (0) images, overall and per sigma band.

    Each image is scored ``repeats`` times, each with its own unit noise and sigma (drawn as in
    training, or the fixed ``sigma``), all from a CPU generator seeded with ``seed``: the same draws
    on every device. Returns dict(accuracy, bce, accuracy_real, accuracy_fake, n, bands), ``bands``
    mapping "<0.1", "0.1-1", "1-10", ">10" to dict(accuracy, bce, n).
    """
    device = _resolve_device(device, disc)
    real_ids = check_set(real_images, real_labels, "real")
    fake_ids = check_set(fake_images, fake_labels, "fake")
    if real_images.shape[1:] != fake_images.shape[1:]:
        raise ValueError(f"real images {list(real_images.shape[1:])} and fake images "
                         f"{list(fake_images.shape[1:])} must have the same per-image shape")
    conditional = getattr(disc, "label_dim", 0) > 0
    if conditional and (real_ids is None or fake_ids is None):
        raise ValueError("a conditional discriminator needs real_labels and fake_labels")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    images = torch.cat([real_images.cpu().float(), fake_images.cpu().float()]).repeat(repeats, 1, 1, 1)
    target = torch.cat([torch.ones(real_images.shape[0]), torch.zeros(fake_images.shape[0])]).repeat(repeats)
    ids = torch.cat([real_ids.cpu(), fake_ids.cpu()]).repeat(repeats) if conditional else None
    gen = make_generator(seed, "cpu")
    n = images.shape[0]
    sigma = (draw_sigma(n, distribution=sigma_distribution, generator=gen) if sigma is None
             else sigma_vector(sigma, n, "cpu").float())
    noisy = images + sigma.reshape(-1, 1, 1, 1) * torch.randn(images.shape, generator=gen)
    was_training = disc.training
    disc.eval()
    try:
        logits = torch.cat([disc(noisy[i:i + batch_size].to(device), sigma[i:i + batch_size].to(device),
                                 ids[i:i + batch_size].to(device) if ids is not None else None).cpu()
                            for i in range(0, n, batch_size)])
    finally:
        disc.train(was_training)
    correct = ((logits > 0).float() == target).float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bands = {name: dict(accuracy=s["accuracy"], bce=s["loss"], n=s["n"])
             for name, s in _band_stats(sigma, correct, bce).items()}
    real = target == 1
    return dict(accuracy=correct.mean().item(), bce=bce.mean().item(), accuracy_real=correct[real].mean().item(),
                accuracy_fake=correct[~real].mean().item(), n=int(n), bands=bands)

