"""Discriminator Guidance: discriminators, AOT-paired training batches, guided denoiser, ADM loader."""

import math

import pytest
import torch
from torch.nn import functional as F

import aot_diffusion.guidance as guidance
from aot_diffusion.guidance import (
    ADMDiscriminator, ADMEncoderUNet, NoiseConditionedDiscriminator, discriminator_batches,
    evaluate_discriminator, guided_denoiser, load_adm_classifier, log_ratio_grad, sigma_to_vp_time,
    train_discriminator, vp_time_to_sigma,
)
from aot_diffusion.sampling import edm_sampler

from conftest import gaussian_mixture_denoiser


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


# ---------------------------------------------------------------------------------------------- log-ratio gradient


@pytest.mark.parametrize("label_dim", [0, 3])
def test_log_ratio_grad_matches_finite_differences(label_dim):
    disc = randomize(small_disc(label_dim), scale=0.2).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    labels = torch.tensor([0, 2, 1]) if label_dim else None
    grad64 = log_ratio_grad(disc, x, sigma, labels, compute_dtype=torch.float64)
    assert grad64.dtype == torch.float64 and grad64.shape == x.shape
    # Central differences of the logit (= log(d / (1 - d))) along 12 random pixels, float64.
    eps = 1e-5
    flat = x.reshape(3, -1)
    idx = torch.randint(0, 64, (12,), generator=g)
    for k in idx.tolist():
        xp, xm = flat.clone(), flat.clone()
        xp[:, k] += eps
        xm[:, k] -= eps
        with torch.no_grad():
            lp = disc(xp.reshape(x.shape), sigma, labels)
            lm = disc(xm.reshape(x.shape), sigma, labels)
            d = torch.sigmoid(lp)  # same thing as log(d / (1 - d)) on the probabilities
            assert torch.allclose(torch.log(d / (1 - d)), lp, atol=1e-8)
        fd = (lp - lm) / (2 * eps)
        assert torch.allclose(grad64.reshape(3, -1)[:, k], fd, rtol=1e-5, atol=1e-7)
    # Default path: float32 autograd, returned in x's dtype.
    grad32 = log_ratio_grad(disc, x, sigma, labels)
    assert grad32.dtype == torch.float64
    assert torch.allclose(grad32, grad64, rtol=1e-3, atol=1e-4 * grad64.abs().max().item())


def test_log_ratio_grad_clip_zeroes_saturated_samples():
    disc = small_disc().eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        disc.fc_out.bias.fill_(50.0)  # d ~= 1 everywhere: DG's clip to [1e-5, 1 - 1e-5] kills the gradient
    assert torch.count_nonzero(log_ratio_grad(disc, x, 1.0, logit_clip=math.log(99999))) == 0


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
    guided = guided_denoiser(denoise, disc, 0.0, sigma_window=(0.0, math.inf))
    out = edm_sampler(denoise, latents, num_steps=6, denoise_euler=guided)
    assert torch.equal(out, plain)
    assert guided.num_grad_evals == 0 and guided.num_calls == 6


def test_guidance_applies_formula_inside_window_and_counts_evaluations():
    denoise = _mixture()
    disc = randomize(small_disc(), scale=0.2)
    lo, hi = 0.05, 10.0
    guided = guided_denoiser(denoise, disc, 2.0, sigma_window=(lo, hi))
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


def test_guidance_raises_log_ratio_and_passes_labels_only_to_conditional_disc():
    # Guidance should move samples toward higher discriminator logits (first order).
    disc = randomize(small_disc(label_dim=3), scale=0.2).eval()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    labels = F.one_hot(torch.arange(6) % 3, 3).double()
    sigma = torch.tensor(0.5, dtype=torch.float64)
    identity = lambda x, s, c=None: torch.zeros_like(x)  # noqa: E731
    guided = guided_denoiser(identity, disc, 1e-3, sigma_window=None)
    step = guided(x, sigma, labels)
    with torch.no_grad():
        before, after = disc(x, sigma, labels), disc(x + step, sigma, labels)
    assert (after > before).all()
    uncond = guided_denoiser(identity, small_disc(), 1.0, sigma_window=None)
    uncond(x, sigma, labels)  # an unconditional discriminator ignores the sampler's labels
    assert uncond.num_grad_evals == 1


def test_vp_time_mapping_roundtrip():
    for t in (1e-5, 0.01, 0.3, 1.0):
        s = vp_time_to_sigma(t)
        assert abs(float(sigma_to_vp_time(torch.tensor(s, dtype=torch.float64))) - t) < 1e-9
    lo, hi = guidance.DG_SIGMA_WINDOW
    assert 0.04 < lo < 0.05 and hi > 80


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
    paired = list(discriminator_batches(real, fake, aot=True, **kw))
    random = list(discriminator_batches(real, fake, aot=False, **kw))
    assert _mean_real_distance(paired) < _mean_real_distance(random) - 0.05
    b = paired[0]
    assert b["x"].shape == (16, 1, 8, 8) and b["target"].tolist() == [1.0] * 8 + [0.0] * 8
    sig = b["sigma"].reshape(-1, 1, 1, 1)
    assert torch.allclose(b["x"], b["images"] + sig * b["noise"])
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
    original = guidance.pair_noise

    def spy(images, noise, labels=None, solver="scipy"):
        out = original(images, noise, labels=labels, solver=solver)
        calls.append(dict(images=images, noise=noise, labels=labels, out=out))
        return out

    monkeypatch.setattr(guidance, "pair_noise", spy)
    batches = list(discriminator_batches(real, fake, real_labels=real_labels, fake_labels=fake_labels, aot=True,
                                         pool_size=48, batch_size=16, steps=6, seed=1))
    assert len(calls) == 2  # one real pool and one fake pool
    for call, side in zip(calls, (True, False)):
        assert call["labels"] is not None
        ids = call["labels"]
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
    list(discriminator_batches(real, fake, aot=False, pool_size=48, batch_size=16, steps=6, seed=1))
    assert calls == []  # random noise: no pairing


def test_discriminator_learns_separable_toy_distributions():
    real, fake, _, _ = _toy_sets(n=256, seed=2)
    held_real, held_fake, _, _ = _toy_sets(n=200, seed=3)
    disc = small_disc(seed=4)
    before = evaluate_discriminator(disc, held_real, held_fake, seed=5)
    history = train_discriminator(disc, real, fake, aot=True, pool_size=128, batch_size=64, steps=60, lr=3e-3,
                                  seed=6, log_every=20)
    assert [h["step"] for h in history] == [20, 40, 60]
    assert set(history[0]) >= {"step", "loss", "accuracy", "noise_distance"}
    after = evaluate_discriminator(disc, held_real, held_fake, seed=5)
    assert after["accuracy"] > 0.8 and after["accuracy"] > before["accuracy"] + 0.2
    assert after["bce"] < math.log(2) and after["n"] == 400
    # At a small fixed sigma the two clouds are trivially separable.
    assert evaluate_discriminator(disc, held_real, held_fake, sigma=0.1)["accuracy"] > 0.97


def test_conditional_training_runs_and_uses_labels():
    real, fake, real_labels, fake_labels = _toy_sets()
    disc = small_disc(label_dim=3)
    history = train_discriminator(disc, real, fake, real_labels=real_labels, fake_labels=F.one_hot(fake_labels, 3),
                                  aot=True, pool_size=48, batch_size=16, steps=6, log_every=3)
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    res = evaluate_discriminator(disc, real, fake, real_labels=real_labels, fake_labels=fake_labels)
    assert 0 <= res["accuracy"] <= 1
    with pytest.raises(ValueError, match="needs real_labels"):
        train_discriminator(disc, real, fake, steps=1, pool_size=48, batch_size=16)


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
        guided_denoiser(lambda x, s, c=None: x, disc, 1.0, sigma_window=(2.0, 1.0))


def test_dg_sigma_distribution_is_loguniform_over_vp_times():
    s = guidance.draw_sigma(20000, distribution="dg", generator=torch.Generator().manual_seed(0))
    lo, hi = vp_time_to_sigma(1e-5), vp_time_to_sigma(1.0)
    assert s.min() >= lo * 0.999 and s.max() <= hi * 1.001
    assert abs(s.log().mean().item() - 0.5 * (math.log(lo) + math.log(hi))) < 0.1


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

    def attention(h, p, legacy=True):
        b, c, hh, ww = h.shape
        t = h.reshape(b, c, -1)
        qkv = F.conv1d(gn(t, p + ".norm"), sd[p + ".qkv.weight"], sd[p + ".qkv.bias"])
        heads = c // 16
        q, k, v = qkv.reshape(b * heads, 3 * 16, -1).split(16, dim=1)
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(16), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
        return (t + F.conv1d(a, sd[p + ".proj_out.weight"], sd[p + ".proj_out.bias"])).reshape(b, c, hh, ww)

    half = 16
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
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
    path = tmp_path / "32x32_classifier.pt"
    torch.save(sd, path)
    loaded = load_adm_classifier(path, **TINY_ADM).eval()
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0.0, 250.5, 999.0])
    with torch.no_grad():
        expected = _reference_adm_forward(sd, x, t)
        assert torch.allclose(loaded(x, t), expected, atol=1e-4, rtol=1e-4)
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


def test_adm_discriminator_trains_head_only_and_guides():
    encoder = load_adm_classifier(randomize(ADMEncoderUNet(**TINY_ADM), seed=2, scale=0.1).state_dict(),
                                  **TINY_ADM)
    frozen = {k: v.clone() for k, v in encoder.state_dict().items()}
    disc = ADMDiscriminator(encoder, label_dim=3, model_channels=32, num_head_channels=16, num_res_blocks=1)
    assert disc.head.in_channels == 64 and disc.head.image_size == 4
    g = torch.Generator().manual_seed(0)
    real = torch.randn(32, 3, 8, 8, generator=g) * 0.3 + 0.4
    fake = torch.randn(32, 3, 8, 8, generator=g) * 0.3 - 0.4
    labels = torch.arange(32) % 3
    history = train_discriminator(disc, real, fake, real_labels=labels, fake_labels=labels, aot=True,
                                  pool_size=16, batch_size=16, steps=4, lr=1e-3, log_every=2,
                                  sigma_distribution="dg")
    assert len(history) == 2
    assert all(torch.equal(frozen[k], v) for k, v in disc.encoder.state_dict().items())
    assert not disc.encoder.training
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    grad = log_ratio_grad(disc, x, 0.7, torch.tensor([0, 2]))
    assert grad.shape == x.shape and grad.dtype == torch.float64 and grad.abs().sum() > 0
