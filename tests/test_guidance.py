"""Discriminator Guidance: DG parity, noise-aware classifier, discriminators, AOT-paired batches, guidance."""

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import aot_diffusion.guidance.training as guidance_training
from aot_diffusion.guidance import (
    ADM_CLASSIFIER_32, DG_SIGMA_WINDOW, DIGITS_CLASSIFIER_CONFIG, DIGITS_HEAD_CONFIG, ADMDiscriminator,
    ADMEncoderUNet, GuidedDenoiser, NoiseConditionedDiscriminator, adm_config_from_dg_args, build_discriminator,
    discriminator_batches, draw_sigma, evaluate_classifier, evaluate_discriminator, fit_discriminator,
    load_adm_classifier, load_adm_state_dict, load_dg_classifier, load_discriminator, log_ratio_grad,
    save_discriminator, sigma_to_vp_time, optimise_discriminator, train_noise_aware_classifier, vp_input,
    vp_time_to_sigma,
)
from aot_diffusion.sampling import edm_sampler

from conftest import FIXTURES, gaussian_mixture_denoiser

DG_GOLDEN = FIXTURES / "dg_reference" / "dg_discriminator_cond_golden.npz"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: one thread is faster than two and immune to a busy second core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_disc(label_dim=0, seed=0, **kw):
    torch.manual_seed(seed)
    return NoiseConditionedDiscriminator(8, 1, label_dim=label_dim, channels=(8, 16), emb_channels=16, **kw)


def randomize(module, seed=0, scale=0.3):
    """Random non-zero weights everywhere (zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


# A digits-sized classifier / head, smaller still so that tests take seconds.
TINY_CLASSIFIER = dict(DIGITS_CLASSIFIER_CONFIG, model_channels=8, num_head_channels=8, norm_groups=4, out_channels=3)
TINY_HEAD = dict(DIGITS_HEAD_CONFIG, model_channels=8, num_head_channels=8, norm_groups=4)


def dg_log_ratio(logits, clip=1e-5):
    """DG's get_log_ratio on the probability: d = clip(sigmoid(logit)), log(d / (1 - d))."""
    d = torch.sigmoid(logits).clamp(clip, 1 - clip)
    return torch.log(d / (1 - d))


# ---------------------------------------------------------------------------------------------- DG parity


def _golden_discriminator():
    z = np.load(DG_GOLDEN)
    clf_cfg = adm_config_from_dg_args(json.loads(str(z["classifier_args"])))
    head_cfg = adm_config_from_dg_args(json.loads(str(z["discriminator_args"])))
    encoder = load_adm_state_dict(ADMEncoderUNet(**clf_cfg), {k[11:]: torch.from_numpy(z[k]) for k in z.files
                                                             if k.startswith("classifier/")})
    head_num_classes = head_cfg.pop("num_classes")
    for k in ("image_size", "in_channels"):  # the head reads the encoder's feature map
        assert head_cfg.pop(k) == {"image_size": encoder.feature_resolution,
                                   "in_channels": encoder.feature_channels}[k]
    disc = ADMDiscriminator(encoder, label_dim=z["class_labels"].shape[1], head_num_classes=head_num_classes,
                            **head_cfg)
    load_adm_state_dict(disc.head, {k[14:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("discriminator/")})
    inputs = {k: torch.from_numpy(z[k]) for k in ("x", "sigma", "class_labels", "d", "dg_score")}
    return disc.eval(), inputs


def test_dg_discriminator_reproduces_dg_probability_and_guidance_term():
    disc, g = _golden_discriminator()
    assert disc.head.label_emb.num_embeddings == 1000  # guided-diffusion's NUM_CLASSES
    with torch.no_grad():
        d = torch.sigmoid(disc(g["x"], g["sigma"], g["class_labels"]))
    assert (d - g["d"]).abs().max() < 1e-5
    # dg_score = -sigma^2 grad_x log(d / (1 - d)), per sample to 1e-3 of its largest entry.
    score = -g["sigma"].reshape(-1, 1, 1, 1) ** 2 * log_ratio_grad(disc, g["x"], g["sigma"], g["class_labels"])
    err = (score - g["dg_score"]).flatten(1).abs().max(dim=1).values
    assert (err <= 1e-3 * g["dg_score"].flatten(1).abs().max(dim=1).values).all()
    # GuidedDenoiser adds exactly -w * dg_score (DG's correction) to the denoiser output.
    guided = GuidedDenoiser(lambda x, s, c=None: torch.zeros_like(x), disc, 1.0, sigma_window=None)
    assert torch.allclose(guided(g["x"], g["sigma"], g["class_labels"]), -g["dg_score"],
                          atol=1e-3 * g["dg_score"].abs().max().item())
    # The labels matter: other classes give other probabilities (a label-blind head would not).
    with torch.no_grad():
        d_other = torch.sigmoid(disc(g["x"], g["sigma"], g["class_labels"].roll(1, dims=1)))
    assert (d_other - g["d"]).abs().max() > 1e-3


def test_vp_mapping_matches_dg_vpsde():
    for t in (1e-5, 0.01, 0.3, 1.0):
        s = vp_time_to_sigma(t)
        assert abs(float(sigma_to_vp_time(torch.tensor(s, dtype=torch.float64))) - t) < 1e-9
    lo, hi = DG_SIGMA_WINDOW
    assert 0.04 < lo < 0.05 and hi > 80
    # vp_input = DG's marginal mean exp(-B(tau)/2) times the input, at tau * 999.
    sigma = torch.tensor([0.002, 0.5, 3.0, 80.0])
    x = torch.randn(4, 1, 2, 2)
    x_vp, t = vp_input(x, sigma)
    tau = sigma_to_vp_time(sigma.double())
    mean = torch.exp(-0.25 * tau ** 2 * (20 - 0.1) - 0.5 * tau * 0.1)
    assert torch.allclose(x_vp, x * mean.float().reshape(-1, 1, 1, 1), rtol=1e-5)
    assert torch.allclose(t, (tau * 999).float())


def test_dg_sigma_draw_follows_dg_importance_sampling():
    n = 20000
    s = draw_sigma(n, distribution="dg", generator=torch.Generator().manual_seed(0))
    # DG's vpsde.get_diffusion_time(importance_sampling=True), written out independently.
    b0, b1, t_min = 0.1, 20.0, 1e-5

    def antiderivative(t):
        integral = 0.5 * t ** 2 * (b1 - b0) + t * b0
        return math.log(1 - math.exp(-integral)) + integral
    z = antiderivative(1.0) - antiderivative(t_min)
    u = torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log_sigma2 = z * u + antiderivative(t_min)
    tau = (-b0 + torch.sqrt(b0 ** 2 + 2 * (b1 - b0) * torch.log1p(torch.exp(log_sigma2)))) / (b1 - b0)
    q = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    ours, dg = sigma_to_vp_time(s.double()).quantile(q), tau.quantile(q)
    assert (ours - dg).abs().max() < 0.01
    uniform = sigma_to_vp_time(draw_sigma(n, distribution="vp_uniform", generator=torch.Generator().manual_seed(2)))
    assert (uniform.double().quantile(q) - q).abs().max() < 0.01  # ADM's classifier draw: tau uniform


# ---------------------------------------------------------------------------------------------- log-ratio gradient


@pytest.mark.parametrize("label_dim", [0, 3])
def test_log_ratio_grad_matches_finite_differences_of_dg_log_ratio(label_dim):
    disc = randomize(small_disc(label_dim), scale=0.2).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    labels = torch.tensor([0, 2, 1]) if label_dim else None
    grad = log_ratio_grad(disc, x, sigma, labels, compute_dtype=torch.float64)
    assert grad.dtype == torch.float64 and grad.shape == x.shape

    def log_ratio(z):
        with torch.no_grad():
            return dg_log_ratio(disc(z, sigma, labels))

    # Directional derivatives of DG's log(d / (1 - d)) along random directions cover every pixel:
    # a wrong gradient anywhere (sign, scale, a missing path) moves them.
    eps = 1e-5
    for _ in range(4):
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)
        fd = (log_ratio(x + eps * v) - log_ratio(x - eps * v)) / (2 * eps)
        assert torch.allclose((grad * v).flatten(1).sum(1), fd, rtol=1e-5, atol=1e-8)
    # ... and single pixels.
    for k in torch.randint(0, 64, (6,), generator=g).tolist():
        e = torch.zeros_like(x).reshape(3, -1)
        e[:, k] = eps
        e = e.reshape(x.shape)
        fd = (log_ratio(x + e) - log_ratio(x - e)) / (2 * eps)
        assert torch.allclose(grad.reshape(3, -1)[:, k], fd, rtol=1e-5, atol=1e-8)
    # Default path: float32 autograd, returned in x's dtype.
    grad32 = log_ratio_grad(disc, x, sigma, labels)
    assert grad32.dtype == torch.float64
    assert torch.allclose(grad32, grad, rtol=1e-3, atol=1e-4 * grad.abs().max().item())
    if label_dim:  # the class changes the gradient
        other = log_ratio_grad(disc, x, sigma, (labels + 1) % 3, compute_dtype=torch.float64)
        assert (other - grad).abs().max() > 1e-3 * grad.abs().max()


def test_log_ratio_grad_follows_dg_probability_clip():
    disc = small_disc().eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        disc.fc_out.bias.fill_(50.0)  # d ~= 1: DG's clip to [1e-5, 1 - 1e-5] kills the gradient
    assert torch.count_nonzero(log_ratio_grad(disc, x, 1.0)) == 0
    assert torch.count_nonzero(log_ratio_grad(disc, x, 1.0, prob_clip=None)) > 0
    with torch.no_grad():
        disc.fc_out.bias.fill_(math.log(99999) - 1.0)  # just inside the clip: gradient kept
    assert torch.count_nonzero(log_ratio_grad(disc, x, 1.0)) > 0


# ---------------------------------------------------------------------------------------------- guided sampling


def _mixture():
    g = torch.Generator().manual_seed(3)
    means = torch.randn(4, 64, generator=g, dtype=torch.float64)
    return gaussian_mixture_denoiser(means, 0.3, torch.full((4,), 0.25))


def test_weight_zero_guidance_is_exactly_unguided():
    denoise = _mixture()
    disc = randomize(small_disc(), scale=0.2)
    latents = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    plain = edm_sampler(denoise, latents, num_steps=6)
    guided = GuidedDenoiser(denoise, disc, 0.0, sigma_window=(0.0, math.inf))
    out = edm_sampler(denoise, latents, num_steps=6, denoise_euler=guided)
    assert torch.equal(out, plain)
    assert guided.num_grad_evals == 0 and guided.num_calls == 6


def test_guidance_applies_formula_inside_window_and_counts_evaluations():
    denoise = _mixture()
    disc = randomize(small_disc(), scale=0.2)
    lo, hi = 0.05, 10.0
    guided = GuidedDenoiser(denoise, disc, 2.0, sigma_window=(lo, hi))
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    for s in (0.01, 100.0):  # outside: D unchanged, no discriminator call
        assert torch.equal(guided(x, torch.tensor(s, dtype=torch.float64)), denoise(x, s))
    assert guided.num_grad_evals == 0
    sigma = torch.tensor(1.5, dtype=torch.float64)
    expected = denoise(x, sigma) + 2.0 * 1.5 ** 2 * log_ratio_grad(disc, x, sigma)
    assert torch.allclose(guided(x, sigma), expected, atol=1e-12)
    assert guided.num_grad_evals == 1

    guided.reset()
    latents = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    steps = 8
    calls = []
    out = edm_sampler(denoise, latents, num_steps=steps, denoise_euler=guided,
                      callback=lambda info: calls.append((info["stage"], float(info["sigma"]))))
    inside = sum(1 for stage, s in calls if stage == "euler" and lo <= s <= hi)
    assert 0 < inside < steps
    assert guided.num_grad_evals == inside and guided.num_calls == steps
    assert not torch.equal(out, edm_sampler(denoise, latents, num_steps=steps))


def test_guidance_raises_log_ratio_with_the_sampler_labels():
    # A small guided step moves samples toward higher discriminator logits of *their* class.
    disc = randomize(small_disc(label_dim=3), scale=0.2).eval()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    labels = F.one_hot(torch.arange(6) % 3, 3).double()
    sigma = torch.tensor(0.5, dtype=torch.float64)
    zero = lambda x, s, c=None: torch.zeros_like(x)  # noqa: E731
    guided = GuidedDenoiser(zero, disc, 1e-3, sigma_window=None)
    step = guided(x, sigma, labels)
    with torch.no_grad():
        before, after = disc(x, sigma, labels), disc(x + step, sigma, labels)
    assert (after > before).all()
    assert (guided(x, sigma, labels.roll(1, dims=1)) - step).abs().max() > 1e-3 * step.abs().max()
    uncond = GuidedDenoiser(zero, small_disc(), 1.0, sigma_window=None)
    uncond(x, sigma, labels)  # an unconditional discriminator ignores the sampler's labels
    assert uncond.num_grad_evals == 1


# ---------------------------------------------------------------------------------------------- AOT-DG batches


def _toy_sets(n=96, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, 1, 8, 8, generator=g) * 0.3 + 0.5
    fake = torch.randn(n, 1, 8, 8, generator=g) * 0.3 - 0.5
    real_labels = torch.arange(n) % classes
    fake_labels = torch.randint(0, classes, (n,), generator=g)
    return real, fake, real_labels, fake_labels


def _mean_real_distance(batches):
    d = [(b["images"][b["is_real"]] - b["noise"][b["is_real"]]).flatten(1).norm(dim=1) for b in batches]
    return torch.cat(d).mean().item()


def test_aot_batches_pair_noise_lowering_image_noise_distance():
    real, fake, _, _ = _toy_sets()
    kw = dict(pool_size=48, batch_size=16, steps=12, seed=7)
    paired = list(discriminator_batches(real, fake, pairing="assignment", **kw))
    random = list(discriminator_batches(real, fake, pairing="none", **kw))
    assert _mean_real_distance(paired) < _mean_real_distance(random) - 0.05
    b = paired[0]
    assert b["x"].shape == (16, 1, 8, 8) and b["target"].tolist() == [1.0] * 8 + [0.0] * 8
    assert torch.allclose(b["x"], b["images"] + b["sigma"].reshape(-1, 1, 1, 1) * b["noise"])
    # Each pool's pairing is the exact assignment: no swap of two noises lowers the total distance.
    pool_imgs = torch.cat([p["images"][p["is_real"]] for p in paired[:6]])
    pool_noise = torch.cat([p["noise"][p["is_real"]] for p in paired[:6]])
    cost = torch.cdist(pool_imgs.flatten(1).double(), pool_noise.flatten(1).double())
    diag = cost.diagonal()
    swap_gain = diag[:, None] + diag[None, :] - cost - cost.T
    assert swap_gain.max() <= 1e-9


def test_aot_pairing_is_classwise_and_actually_used(monkeypatch):
    real, fake, real_labels, fake_labels = _toy_sets()
    calls = []
    original = guidance_training.pair

    def spy(name, images, noise, labels=None, **options):  # DG pairs through the registry, by assignment
        out = original(name, images, noise, labels, **options)
        calls.append(dict(name=name, images=images, noise=noise, labels=labels, out=out))
        return out

    monkeypatch.setattr(guidance_training, "pair", spy)
    batches = list(discriminator_batches(real, fake, real_labels=real_labels, fake_labels=fake_labels, pairing="assignment",
                                         pool_size=48, batch_size=16, steps=6, seed=1))
    assert len(calls) == 2 and {c["name"] for c in calls} == {"assignment"}  # one real pool and one fake pool
    for call, side in zip(calls, (True, False)):
        ids = call["labels"]
        assert ids is not None
        # Every noise row stays within the class of the image it was drawn for.
        for i in range(ids.shape[0]):
            src = (call["noise"] == call["out"][i]).all(dim=(1, 2, 3)).nonzero().flatten()
            assert src.numel() == 1 and ids[src.item()] == ids[i]
        assert not torch.equal(call["out"], call["noise"])
        # ... and the batches carry exactly this paired noise and these labels.
        used = torch.cat([b["noise"][b["is_real"] == side] for b in batches])
        used_ids = torch.cat([b["class_labels"][b["is_real"] == side] for b in batches])
        assert torch.equal(used, call["out"]) and torch.equal(used_ids, ids)

    calls.clear()
    list(discriminator_batches(real, fake, pairing="none", pool_size=48, batch_size=16, steps=6, seed=1))
    assert calls == []  # random noise: no pairing


# ---------------------------------------------------------------------------------------------- training / evaluation


def test_discriminator_learns_and_is_evaluated_per_sigma_band():
    real, fake, _, _ = _toy_sets(n=256, seed=2)
    held_real, held_fake, _, _ = _toy_sets(n=200, seed=3)
    disc = small_disc(seed=4)
    before = evaluate_discriminator(disc, held_real, held_fake, seed=5)
    history = optimise_discriminator(disc, real, fake, pairing="assignment", pool_size=128, batch_size=64, steps=60, lr=3e-3,
                                  seed=6, log_every=20, sigma_distribution="lognormal")
    assert [h["step"] for h in history] == [20, 40, 60]
    assert set(history[0]) >= {"step", "loss", "accuracy", "noise_distance"}
    after = evaluate_discriminator(disc, held_real, held_fake, seed=5, repeats=2)
    assert after == evaluate_discriminator(disc, held_real, held_fake, seed=5, repeats=2)  # fixed seed
    bands = after["bands"]
    assert list(bands) == ["<0.1", "0.1-1", "1-10", ">10"] and sum(b["n"] for b in bands.values()) == after["n"] == 800
    assert after["bce"] < before["bce"] and after["accuracy"] > before["accuracy"] + 0.1
    # The two clouds are trivially separable at small sigma, and indistinguishable at large sigma.
    assert bands["<0.1"]["accuracy"] > 0.97 and bands["<0.1"]["bce"] < 0.2
    assert bands[">10"]["accuracy"] < 0.8
    assert evaluate_discriminator(disc, held_real, held_fake, sigma=0.05)["bands"]["<0.1"]["n"] == 400


def test_early_stopping_keeps_the_weights_of_the_best_heldout_bce():
    """A scripted validation curve: improves until the 2nd check, then worsens. Training stops after `patience`
    checks without a new best and the trainable weights are those at the best check, exactly."""
    real, fake, _, _ = _toy_sets(n=128, seed=2)
    disc = small_disc(seed=4)
    curve, snapshots = iter([0.60, 0.50, 0.55, 0.58, 0.70, 0.71]), []

    def validate(d):
        snapshots.append({n: p.detach().clone() for n, p in d.named_parameters() if p.requires_grad})
        return dict(bce=next(curve), accuracy=0.5)

    history = optimise_discriminator(disc, real, fake, pool_size=64, batch_size=32, steps=100, lr=3e-3, seed=6,
                                  log_every=5, sigma_distribution="lognormal", validate=validate, patience=3)
    assert [h["step"] for h in history] == [5, 10, 15, 20, 25]  # 3 checks after the best at step 10
    assert [h["best"] for h in history] == [False, True, False, False, False]
    assert [h["val_bce"] for h in history] == [0.60, 0.50, 0.55, 0.58, 0.70]
    kept = {n: p for n, p in disc.named_parameters() if p.requires_grad}
    assert all(torch.equal(kept[n], snapshots[1][n]) for n in kept)
    assert not all(torch.equal(kept[n], snapshots[-1][n]) for n in kept)  # it did move on, then went back


def _label_only_sets(n, seed):
    """Real: class 0 bright, class 1 dark; fake: the reverse. The images alone are identically
    distributed, so only a discriminator that uses the labels can tell real from fake."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    sign = (1 - 2 * labels).float().reshape(-1, 1, 1, 1)
    real = sign * 0.5 + 0.2 * torch.randn(n, 1, 8, 8, generator=g)
    fake = -sign * 0.5 + 0.2 * torch.randn(n, 1, 8, 8, generator=g)
    return real, fake, labels


def test_conditional_discriminator_learns_from_labels():
    real, fake, labels = _label_only_sets(128, seed=0)
    disc = small_disc(label_dim=2, seed=1)
    optimise_discriminator(disc, real, fake, real_labels=labels, fake_labels=F.one_hot(labels, 2), pairing="assignment",
                        pool_size=64, batch_size=32, steps=60, lr=3e-3, log_every=20, sigma_distribution="lognormal")
    held_real, held_fake, held = _label_only_sets(100, seed=2)
    right = evaluate_discriminator(disc, held_real, held_fake, real_labels=held, fake_labels=held, sigma=0.1)
    wrong = evaluate_discriminator(disc, held_real, held_fake, real_labels=1 - held, fake_labels=1 - held, sigma=0.1)
    assert right["accuracy"] > 0.9 and wrong["accuracy"] < 0.1
    with pytest.raises(ValueError, match="needs real_labels"):
        optimise_discriminator(disc, real, fake, steps=1, pool_size=48, batch_size=16)


def test_noise_aware_classifier_is_deterministic_and_trained_on_noisy_inputs():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.zeros(64, 1, 8, 8), torch.randint(0, 3, (64,), generator=g)
    seen = []

    def spy(module, args):
        if isinstance(module, ADMEncoderUNet) and module.training:
            seen.append((args[0].detach().clone(), args[1].detach().clone()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(spy)
    try:
        model, metrics = train_noise_aware_classifier(images, labels, config=TINY_CLASSIFIER, steps=4, batch_size=32,
                                                      seed=3, log=None, log_every=2)
    finally:
        handle.remove()
    assert len(seen) == 4
    x, t = torch.cat([s[0] for s in seen]), torch.cat([s[1] for s in seen])
    # Clean images are all zero, so what the classifier sees is pure VP noise: std sqrt(1 - alpha(tau)^2).
    alpha = 1 / torch.sqrt(1 + vp_time_to_sigma(t.double() / 999) ** 2)
    expected, observed = torch.sqrt(1 - alpha ** 2), x.flatten(1).double().std(dim=1)
    assert (observed - expected).abs().max() < 0.35 and abs((observed / expected).mean() - 1) < 0.05
    assert t.min() < 200 and t.max() > 800  # VP times over [0, 1], embedded as tau * 999
    assert [h["step"] for h in metrics["history"]] == [2, 4]
    assert set(metrics["bands"]) == {"<0.1", "0.1-1", "1-10", ">10"} and 0 <= metrics["train_accuracy"] <= 1
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # Seeds are set before the model is built: the same seed gives bitwise the same weights.
    again, _ = train_noise_aware_classifier(images, labels, config=TINY_CLASSIFIER, steps=4, batch_size=32, seed=3,
                                            log=None)
    other, _ = train_noise_aware_classifier(images, labels, config=TINY_CLASSIFIER, steps=4, batch_size=32, seed=4,
                                            log=None)
    a, b, c = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    held = evaluate_classifier(model, torch.randn(20, 1, 8, 8), labels[:20], seed=1, repeats=2)
    assert held["n"] == 40 and sum(b["n"] for b in held["bands"].values()) == 40


def _tiny_encoder(seed=0):
    torch.manual_seed(seed)
    return randomize(ADMEncoderUNet(**TINY_CLASSIFIER), seed=seed, scale=0.1).requires_grad_(False).eval()


def test_dg_discriminator_trains_head_only_and_is_reproducible():
    encoder = _tiny_encoder()
    frozen = {k: v.clone() for k, v in encoder.state_dict().items()}
    real, fake, labels = _label_only_sets(32, seed=0)
    kw = dict(real_labels=labels, fake_labels=labels, label_dim=2, pairing="assignment", pool_size=16, batch_size=16, steps=4,
              lr=1e-3, weight_decay=1e-2, seed=5, head_config=TINY_HEAD, log_every=2)
    disc, history = fit_discriminator(encoder, real, fake, **kw)
    assert len(history) == 2 and disc.head.in_channels == encoder.feature_channels
    assert all(torch.equal(frozen[k], v) for k, v in disc.encoder.state_dict().items())  # bitwise frozen
    assert not disc.encoder.training and not any(p.requires_grad for p in disc.encoder.parameters())
    initial = build_discriminator(_tiny_encoder(), label_dim=2, head_config=TINY_HEAD, seed=5)
    assert not all(torch.equal(v, initial.head.state_dict()[k]) for k, v in disc.head.state_dict().items())
    twin_encoder = _tiny_encoder()
    torch.rand(7)  # whatever happened to the global RNG before, the seed decides the head
    twin, _ = fit_discriminator(twin_encoder, real, fake, **kw)
    assert all(torch.equal(v, twin.head.state_dict()[k]) for k, v in disc.head.state_dict().items())
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    grad = log_ratio_grad(disc, x, 0.7, torch.tensor([0, 1]))
    assert grad.shape == x.shape and grad.dtype == torch.float64 and grad.abs().sum() > 0
    assert (log_ratio_grad(disc, x, 0.7, torch.tensor([1, 0])) - grad).abs().max() > 0


def test_save_and_load_discriminator(tmp_path):
    encoder = _tiny_encoder(1)
    disc = randomize(build_discriminator(encoder, label_dim=2, head_config=TINY_HEAD, seed=2), seed=3, scale=0.1)
    x, sigma, labels = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 5.0]), torch.tensor([0, 1, 1])
    with torch.no_grad():
        expected = disc(x, sigma, labels)
    save_discriminator(tmp_path / "d.pt", disc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.pt"]  # atomic: no temporary left behind
    blob = torch.load(tmp_path / "d.pt", weights_only=True)
    assert blob["kind"] == "adm" and "encoder_state" in blob
    loaded = load_discriminator(tmp_path / "d.pt")
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, labels), expected)
    # Referenced encoder: the discriminator file holds the head only.
    torch.save(encoder.state_dict(), tmp_path / "encoder.pt")
    save_discriminator(tmp_path / "ref.pt", disc, encoder_path=tmp_path / "encoder.pt")
    assert "encoder_state" not in torch.load(tmp_path / "ref.pt", weights_only=True)
    with torch.no_grad():
        assert torch.equal(load_discriminator(tmp_path / "ref.pt")(x, sigma, labels), expected)
    cnn = randomize(small_disc(label_dim=2), seed=4, scale=0.1).eval()
    save_discriminator(tmp_path / "cnn.pt", cnn)
    with torch.no_grad():
        assert torch.equal(load_discriminator(tmp_path / "cnn.pt")(x, sigma, labels), cnn(x, sigma, labels))
    torch.save({"state": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a discriminator"):
        load_discriminator(tmp_path / "other.pt")


# ---------------------------------------------------------------------------------------------- ADM classifier

TINY_ADM = dict(image_size=8, in_channels=3, model_channels=32, out_channels=5, num_res_blocks=1,
                attention_resolutions=(4,), channel_mult=(1, 2), num_head_channels=16)


def _reference_adm_forward(sd, x, timesteps, features=False):
    """A direct functional forward of guided-diffusion's EncoderUNetModel from its raw state dict,
    for TINY_ADM (scale-shift norm, res-block downsampling, attention at 4x4, attention pooling)."""
    def gn(h, p):
        return F.group_norm(h.float(), 32, sd[p + ".weight"], sd[p + ".bias"])

    def conv(h, p, pad=1):
        return F.conv2d(h, sd[p + ".weight"], sd[p + ".bias"], padding=pad)

    def resblock(h, p, emb, down=False):
        a = F.silu(gn(h, p + ".in_layers.0"))
        if down:
            a, h = F.avg_pool2d(a, 2), F.avg_pool2d(h, 2)
        a = conv(a, p + ".in_layers.2")
        e = F.linear(F.silu(emb), sd[p + ".emb_layers.1.weight"], sd[p + ".emb_layers.1.bias"])[:, :, None, None]
        scale, shift = e.chunk(2, dim=1)
        a = gn(a, p + ".out_layers.0") * (1 + scale) + shift
        a = conv(F.silu(a), p + ".out_layers.3")
        skip = conv(h, p + ".skip_connection", pad=0) if p + ".skip_connection.weight" in sd else h
        return skip + a

    def attention(h, p):
        b, c, hh, ww = h.shape
        t = h.reshape(b, c, -1)
        qkv = F.conv1d(gn(t, p + ".norm"), sd[p + ".qkv.weight"], sd[p + ".qkv.bias"])
        q, k, v = qkv.reshape(b * (c // 16), 3 * 16, -1).split(16, dim=1)
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(16), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
        return (t + F.conv1d(a, sd[p + ".proj_out.weight"], sd[p + ".proj_out.bias"])).reshape(b, c, hh, ww)

    freqs = torch.exp(-math.log(10000) * torch.arange(16) / 16)
    args = timesteps[:, None].float() * freqs[None]
    temb = torch.cat([args.cos(), args.sin()], dim=1)
    emb = F.linear(F.silu(F.linear(temb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    h = conv(x, "input_blocks.0.0")
    h = resblock(h, "input_blocks.1.0", emb)             # 8x8, 32 ch
    h = resblock(h, "input_blocks.2.0", emb, down=True)  # -> 4x4
    h = resblock(h, "input_blocks.3.0", emb)             # 4x4, 64 ch
    h = attention(h, "input_blocks.3.1")
    h = resblock(h, "middle_block.0", emb)
    h = attention(h, "middle_block.1")
    h = resblock(h, "middle_block.2", emb)
    if features:
        return h
    h = F.silu(gn(h, "out.0"))
    b, c = h.shape[:2]
    t = h.reshape(b, c, -1)
    t = torch.cat([t.mean(-1, keepdim=True), t], dim=-1) + sd["out.2.positional_embedding"][None]
    qkv = F.conv1d(t, sd["out.2.qkv_proj.weight"], sd["out.2.qkv_proj.bias"])
    q, k, v = (z.reshape(b * 4, 16, -1) for z in qkv.chunk(3, dim=1))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(16), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
    return F.conv1d(a, sd["out.2.c_proj.weight"], sd["out.2.c_proj.bias"])[:, :, 0]


def test_adm_classifier_loads_original_key_names(tmp_path):
    source = randomize(ADMEncoderUNet(**TINY_ADM), seed=11, scale=0.15)
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    # guided-diffusion's EncoderUNetModel names for this config.
    for name, shape in {"time_embed.0.weight": (128, 32), "input_blocks.0.0.weight": (32, 3, 3, 3),
                        "input_blocks.1.0.in_layers.2.weight": (32, 32, 3, 3),
                        "input_blocks.1.0.emb_layers.1.weight": (64, 128),
                        "input_blocks.2.0.out_layers.3.weight": (32, 32, 3, 3),
                        "input_blocks.3.0.skip_connection.weight": (64, 32, 1, 1),
                        "input_blocks.3.1.qkv.weight": (192, 64, 1), "input_blocks.3.1.proj_out.bias": (64,),
                        "middle_block.1.norm.weight": (64,), "middle_block.2.out_layers.0.bias": (64,),
                        "out.0.weight": (64,), "out.2.positional_embedding": (64, 17),
                        "out.2.qkv_proj.weight": (192, 64, 1), "out.2.c_proj.weight": (5, 64, 1)}.items():
        assert tuple(sd[name].shape) == shape, name
    assert len(sd) == 77
    path = tmp_path / "classifier.pt"
    torch.save(sd, path)
    loaded = load_adm_classifier(path, **TINY_ADM).eval()
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0.0, 250.5, 999.0])
    with torch.no_grad():
        assert torch.allclose(loaded(x, t), _reference_adm_forward(sd, x, t), atol=1e-4, rtol=1e-4)
        assert torch.allclose(loaded(x, t, features=True), _reference_adm_forward(sd, x, t, features=True),
                              atol=1e-4, rtol=1e-4)
    # DDP-prefixed keys load too; wrong names fail loudly, naming the keys.
    load_adm_classifier({"module." + k: v for k, v in sd.items()}, **TINY_ADM)
    bad = dict(sd)
    bad["out.2.extra"] = bad.pop("out.2.c_proj.bias")
    with pytest.raises(KeyError, match=r"missing keys \['out.2.c_proj.bias'\].*unexpected keys \['out.2.extra'\]"):
        load_adm_classifier(bad, **TINY_ADM)
    with pytest.raises(ValueError, match="out.2.c_proj.weight"):
        load_adm_classifier(sd, **{**TINY_ADM, "out_channels": 7})


def test_load_dg_classifier_checks_the_published_config(tmp_path):
    missing = tmp_path / "checkpoints" / "32x32_classifier.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_dg_classifier(missing)
    for needle in (str(missing), "alsdudrla10/DG", "README", "32x32_classifier.pt", "guidance.adm_classifier"):
        assert needle in str(err.value)
    torch.save(ADMEncoderUNet(**TINY_ADM).state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match=r"model_channels is 32 \(expected 128\).*out_channels is 5"):
        load_dg_classifier(tmp_path / "tiny.pt")
    # A file with DG's published layout (zeros in half precision keep the test light) loads, frozen.
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ADMEncoderUNet(**ADM_CLASSIFIER_32).state_dict().items()}
    torch.save({k: torch.full(s, 0.01, dtype=torch.float16) for k, s in shapes.items()}, tmp_path / "dg.pt")
    clf = load_dg_classifier(tmp_path / "dg.pt")
    assert clf.feature_channels == 512 and clf.feature_resolution == 8 and not clf.training
    assert not any(p.requires_grad for p in clf.parameters())
    assert float(clf.time_embed[0].weight[0, 0]) == pytest.approx(0.01, rel=1e-3)


# ---------------------------------------------------------------------------------------------- input errors


def test_clear_errors_on_bad_input():
    real, fake, real_labels, fake_labels = _toy_sets()
    disc = small_disc()
    with pytest.raises(ValueError, match="shape"):
        disc(torch.randn(2, 3, 8, 8), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        disc(torch.randn(2, 1, 8, 8), torch.ones(3))
    with pytest.raises(ValueError, match="unconditional"):
        disc(torch.randn(2, 1, 8, 8), 1.0, torch.tensor([0, 1]))
    cond = small_disc(label_dim=3)
    with pytest.raises(ValueError, match="rows"):
        cond(torch.randn(2, 1, 8, 8), 1.0, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="required"):
        cond(torch.randn(2, 1, 8, 8), 1.0)
    with pytest.raises(ValueError, match="class ids"):
        cond(torch.randn(2, 1, 8, 8), 1.0, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="same per-image shape"):
        next(discriminator_batches(real, torch.randn(96, 1, 4, 4)))
    with pytest.raises(ValueError, match="labels have 95 rows"):
        next(discriminator_batches(real, fake, real_labels=real_labels[:95], fake_labels=fake_labels))
    with pytest.raises(ValueError, match="both"):
        next(discriminator_batches(real, fake, real_labels=real_labels))
    with pytest.raises(ValueError, match="pool_size"):
        next(discriminator_batches(real, fake, pool_size=200, batch_size=16))
    with pytest.raises(ValueError, match="even"):
        next(discriminator_batches(real, fake, pool_size=48, batch_size=15))
    with pytest.raises(ValueError, match="sigma distribution"):
        next(discriminator_batches(real, fake, pool_size=48, batch_size=16, sigma_distribution="uniform"))
    with pytest.raises(ValueError, match="sigma"):
        log_ratio_grad(disc, torch.randn(2, 1, 8, 8), torch.ones(3))
    with pytest.raises(ValueError, match="sigma_window"):
        GuidedDenoiser(lambda x, s, c=None: x, disc, 1.0, sigma_window=(2.0, 1.0))
    with pytest.raises(ValueError, match="needs class labels"):
        train_noise_aware_classifier(real, None, config=TINY_CLASSIFIER, steps=1)
    with pytest.raises(ValueError, match="out_channels=3"):
        train_noise_aware_classifier(real, torch.arange(96) % 5, config=TINY_CLASSIFIER, steps=1)
    with pytest.raises(ValueError, match="do not fit"):
        train_noise_aware_classifier(torch.randn(4, 3, 8, 8), torch.zeros(4), config=TINY_CLASSIFIER, steps=1)
    with pytest.raises(TypeError, match="ADMEncoderUNet"):
        ADMDiscriminator(disc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_everything_stays_on_the_cuda_device():
    real, fake, labels = _label_only_sets(32, seed=0)
    encoder, _ = train_noise_aware_classifier(real, labels, config=TINY_CLASSIFIER, steps=2, batch_size=16,
                                              device="cuda", log=None)
    assert next(encoder.parameters()).is_cuda
    disc, _ = fit_discriminator(encoder, real, fake, real_labels=labels, fake_labels=labels, label_dim=2, pairing="assignment",
                                pool_size=16, batch_size=16, steps=2, head_config=TINY_HEAD, device="cuda")
    assert all(p.is_cuda for p in disc.parameters())
    res = evaluate_discriminator(disc, real, fake, real_labels=labels, fake_labels=labels)
    assert 0 <= res["accuracy"] <= 1
    x = torch.randn(2, 1, 8, 8, device="cuda")
    out = GuidedDenoiser(lambda x, s, c=None: x, disc, 1.0, sigma_window=None)(x, 0.5, labels[:2].cuda())
    assert out.is_cuda


# ---------------------------------------------------------------------------------------------- DG's boosting

def _dg_boosted_reference(net, disc_logit, w, latents, labels, steps, rho, noises, window=(0.0, float("inf"))):
    """DG's generate.py edm_sampler with boosting=1, restated from its formulas over plain callables: last log
    ratio per sample (+inf at first), churn S_churn 4 (gamma = min(4 / steps, sqrt2 - 1)) where it is < 0 at
    i % 5 == 0, guidance w * (-sigma^2 grad log r) / sigma added to the Euler slope, doubled where the new log
    ratio < 0 at i % 2 == 0; log ratio 1e7 outside the window; no second-order guidance."""
    import math

    smin, smax = 0.002, 80.0
    i_ = torch.arange(steps, dtype=torch.float64)
    t = (smax ** (1 / rho) + i_ / (steps - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    n = latents.shape[0]
    log_ratio = torch.full((n,), float("inf"), dtype=torch.float64)
    x_next = latents.double() * t[0]
    for i in range(steps):
        t_cur, t_next = t[i], t[i + 1]
        churn = torch.zeros(n, dtype=torch.float64)
        if i % 5 == 0:
            churn[log_ratio < 0] = 4.0
        gamma = torch.minimum(churn / steps, torch.full((n,), math.sqrt(2) - 1, dtype=torch.float64))
        t_hat = t_cur + gamma * t_cur
        x_hat = x_next + (t_hat ** 2 - t_cur ** 2).sqrt()[:, None, None, None] * noises[i]
        d_cur = (x_hat - net(x_hat, t_hat, labels)) / t_hat[:, None, None, None]
        if window[0] <= float(t_hat.min()) <= window[1]:
            xg = x_hat.clone().requires_grad_(True)
            lr = disc_logit(xg, t_hat)
            grad = torch.autograd.grad(lr.sum(), xg)[0]
            log_ratio = lr.detach()
            score = -(t_hat[:, None, None, None] ** 2) * grad
            if i % 2 == 0:
                score[log_ratio < 0] *= 2
            d_cur = d_cur + w * score / t_hat[:, None, None, None]
        else:
            log_ratio = torch.full((n,), 1e7, dtype=torch.float64)
        x_new = x_hat + (t_next - t_hat)[:, None, None, None] * d_cur
        if i < steps - 1:
            d_prime = (x_new - net(x_new, t_next, labels)) / t_next
            x_new = x_hat + (t_next - t_hat)[:, None, None, None] * (0.5 * d_cur + 0.5 * d_prime)
        x_next = x_new
    return x_next


class _ToyDisc(torch.nn.Module):
    """A linear logit in x (a fixed direction) whose sign differs between samples: some boosted, some not."""
    label_dim = 0

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.direction = torch.nn.Parameter(torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64),
                                            requires_grad=False)

    def forward(self, x, sigma, labels=None):
        return (x.double() * self.direction).flatten(1).sum(1) / (1 + sigma.double())


def test_boosting_matches_dgs_formula_on_a_toy_discriminator():
    from aot_diffusion.guidance import GuidedDenoiser
    from aot_diffusion.sampling import boosted_sampler, edm_sampler

    def net(x, sigma, labels):  # the ideal denoiser of N(0, 0.25 I) data, per-sample sigma
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1)
        return x * 0.25 / (0.25 + s ** 2)

    disc = _ToyDisc()
    steps, rho, w = 11, 7.0, 2.0
    z = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    noises = [torch.randn(z.shape, generator=g, dtype=torch.float64) for _ in range(steps)]
    guided = GuidedDenoiser(net, disc, w, sigma_window=None, prob_clip=None, compute_dtype=torch.float64)
    ours = boosted_sampler(net, z, num_steps=steps, rho=rho, denoise_euler=guided,
                           generator=torch.Generator().manual_seed(5))
    ref = _dg_boosted_reference(net, lambda x, s: disc(x, s), w, z, None, steps, rho, noises)
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10)
    # the boost did something: some samples' first-step log ratio is negative, so steps 5 and 10 churn them
    plain = boosted_sampler(net, z, num_steps=steps, rho=rho, denoise_euler=guided,
                            generator=torch.Generator().manual_seed(5), S_churn=0.0, weight_period=10 ** 6)
    assert not torch.allclose(ours, plain)
    assert guided.num_grad_evals == 2 * steps


def test_boosting_outside_the_window_is_dgs_unguided_sampler():
    """Outside DG's window the log ratio is 1e7 ("real"): no churn, no guidance; the result is EDM's Heun."""
    from aot_diffusion.guidance import GuidedDenoiser
    from aot_diffusion.sampling import boosted_sampler, edm_sampler

    def net(x, sigma, labels):
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1)
        return x * 0.25 / (0.25 + s ** 2)

    z = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    guided = GuidedDenoiser(net, _ToyDisc(), 2.0, sigma_window=(1e4, 1e5), compute_dtype=torch.float64)
    out = boosted_sampler(net, z, num_steps=8, rho=7.0, denoise_euler=guided, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, edm_sampler(net, z, num_steps=8, rho=7.0), rtol=1e-12, atol=1e-12)
    assert guided.num_grad_evals == 0


def test_dg_protocol_batches_mix_real_and_fake_and_cover_both_every_epoch():
    """DG's train.py: one shuffled union of reals and fakes, batches of a varying real share, every image once
    per epoch; AOT-DG pairs noise over each mixed pool."""
    from aot_diffusion.guidance import discriminator_batches

    real = torch.rand(24, 1, 4, 4)
    fake = torch.rand(16, 1, 4, 4) + 5  # tell them apart by value
    batches = list(discriminator_batches(real, fake, pool_size=8, batch_size=4, steps=10, seed=0, mixed=True,
                                         pairing="assignment"))
    seen = torch.cat([b["images"] for b in batches])
    assert len(seen) == 40 and len(torch.unique(seen.flatten(1), dim=0)) == 40  # one epoch: each image once
    for b in batches:
        assert torch.equal(b["is_real"], b["images"].flatten(1).mean(1) < 3) and torch.equal(b["target"], b["is_real"].float())
    shares = {int(b["is_real"].sum()) for b in batches}
    assert len(shares) > 1  # not half and half
    with pytest.raises(ValueError, match="multiple of batch_size"):
        next(discriminator_batches(real, fake, pool_size=6, batch_size=4, steps=1, mixed=True))


# ---------------------------------------------------------------------------------------------- DG's window rule

def _bands(*accuracies, n=400):
    from aot_diffusion.guidance import SIGMA_BANDS

    return {name: dict(accuracy=a, n=n) for name, a in zip(SIGMA_BANDS, accuracies)}


def test_window_rule_stops_below_the_first_band_at_chance():
    from aot_diffusion.guidance import DG_SIGMA_WINDOW, window_from_validation

    assert window_from_validation(_bands(0.8, 0.6, 0.52, 0.5))["window"] == pytest.approx([DG_SIGMA_WINDOW[0], 1.0])
    assert window_from_validation(_bands(0.8, 0.6, 0.6, 0.6))["window"] == pytest.approx(list(DG_SIGMA_WINDOW))
    assert window_from_validation(_bands(0.52, 0.9, 0.9, 0.9))["window"] is None  # 0.52 of 400: not above chance
    assert window_from_validation(_bands(0.8, 0.5, 0.9, 0.9))["window"] == pytest.approx([DG_SIGMA_WINDOW[0], 0.1])
    low = window_from_validation(_bands(0.6, 0.5, 0.5, 0.5, n=20))  # 12 of 20: chance by its own interval
    assert low["window"] is None and low["bands"]["<0.1"]["lower"] < 0.5


def test_the_window_is_chosen_on_the_validation_split_before_the_test_split_is_read(monkeypatch):
    """train_discriminator with guidance.sigma_window 'validation': the rule sees the evaluation of the
    validation halves of the held-out images only, and the test halves are read after it has chosen."""
    import types

    import numpy as np

    from aot_diffusion import guidance as dg
    from aot_diffusion.stages import guidance as stage

    calls, m = [], 5
    test_real = torch.arange(2 * m, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 1, 8, 8)
    data = dict(train_images=np.zeros((40, 1, 8, 8), np.float32), train_labels=np.zeros(40, np.int64),
                test_images=test_real.numpy(), test_labels=np.zeros(2 * m, np.int64), num_classes=10)
    fakes = dict(images=np.zeros((50, 1, 8, 8), np.float32), labels=np.zeros(50, np.int64), conditional=False)

    class Fakes(dict):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def evaluate(disc, real, fake, **kw):
        which = "validation" if float(real[:, 0, 0, 0].max()) < m else "test"  # validation rows are 0..m-1
        calls.append(which)
        acc = 0.9 if which == "validation" else 0.5
        return dict(accuracy=acc, bce=0.5, bands=_bands(acc, acc, 0.5, 0.5))

    choose = dg.window_from_validation

    def rule(bands):
        calls.append("rule")
        return choose(bands)

    monkeypatch.setattr(stage, "load_dataset", lambda path: data)
    monkeypatch.setattr(stage, "safe_np_load", lambda path: Fakes(fakes))
    monkeypatch.setattr(stage, "_load_encoder", lambda run: None)
    monkeypatch.setattr(stage, "_head_config", lambda run: {})
    monkeypatch.setattr(dg, "evaluate_discriminator", evaluate)
    monkeypatch.setattr(dg, "window_from_validation", rule)
    disc = torch.nn.Linear(1, 1)
    monkeypatch.setattr(dg, "fit_discriminator", lambda *a, **kw: (disc, [dict(step=1, loss=0.5, val_bce=0.5,
                                                                               best=True)]))
    monkeypatch.setattr(dg, "save_discriminator", lambda path, d: None)
    monkeypatch.setattr(stage, "_as_stored", lambda images: torch.as_tensor(np.asarray(images)))
    written = {}
    g = dict(num_fake=50, heldout_fraction=0.2, protocol="early_stop", pool_size=8, batch_size=8, max_steps=2,
             lr=1e-3, weight_decay=0.0, eval_every=1, patience=1, sigma_window="validation")
    run = types.SimpleNamespace(
        params={"guidance": g, "seed": 0, "train": {"solver": "auto"}}, key="dg_x", device="cpu",
        discriminator=lambda: dict(model="edm_uncond", instance="edm_uncond_s0", conditional=False, pairing="none",
                                   pairing_options={}),
        guidance_choice=lambda name: {"epochs": 1}[name], log=lambda msg: None,
        layout=types.SimpleNamespace(dataset="d", fakes=lambda k: "f", discriminator=lambda k: "x",
                                     discriminator_curve=lambda k: __import__("pathlib").Path("/dev/null"),
                                     discriminator_metrics=lambda k: "m"),
        write_json=lambda path, obj: written.update(obj))
    monkeypatch.setattr("aot_diffusion.utils.AtomicPath", lambda path, suffix="": __import__("contextlib").nullcontext("/dev/null"))
    stage.train_discriminator(run)
    assert calls.index("rule") < calls.index("test") and calls[:calls.index("rule")] == ["validation"]
    assert written["sigma_window"]["window"] == pytest.approx([dg.DG_SIGMA_WINDOW[0], 1.0])
