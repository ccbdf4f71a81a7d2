"""Unit tests of the core library: schedules, NFE, networks, loss, input errors."""


import pytest
import torch

from aot_diffusion.loss import EDMLoss, loss_weight
from aot_diffusion.networks import build_network
from aot_diffusion.sampling import edm_sampler, num_function_evals, sigma_steps, switch_denoiser, switch_sweep

TINY = dict(model_type="SongUNet", img_resolution=8, img_channels=1, model_channels=16, channel_mult=[1, 2],
            num_blocks=1, attn_resolutions=[4], dropout=0.0)


def edm_t(i, n, rho, smin=0.002, smax=80.0):
    return (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho


@pytest.mark.parametrize("steps,rho", [(14, 90), (15, 72), (18, 7)])
def test_sigma_schedule_at_paper_settings(steps, rho):
    t = sigma_steps(steps, rho)
    assert t.shape == (steps + 1,) and t.dtype == torch.float64
    assert t[0].item() == pytest.approx(80.0, rel=1e-12)
    assert t[steps - 1].item() == pytest.approx(0.002, rel=1e-10)
    assert t[-1].item() == 0.0
    assert bool((t[:-1] > t[1:]).all())
    for i in (1, steps // 2, steps - 2):
        assert t[i].item() == pytest.approx(edm_t(i, steps, rho), rel=1e-12)


@pytest.mark.parametrize("steps,nfe", [(18, 35), (14, 27), (15, 29), (2, 3)])
def test_nfe_is_2n_minus_1(steps, nfe):
    assert num_function_evals(steps, "heun") == nfe
    assert num_function_evals(steps, "euler") == steps
    calls = []
    edm_sampler(lambda x, s, c: (calls.append(1), x * 0)[1], torch.randn(2, 1, 4, 4), num_steps=steps)
    assert len(calls) == nfe


def test_sampler_dtype_and_trajectory():
    lat64 = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    out, traj = edm_sampler(lambda x, s, c: 0.5 * x, lat64, num_steps=5, return_trajectory=True)
    assert out.dtype == torch.float64
    assert traj["x"].shape == (9, 3, 1, 4, 4) and traj["denoised"].shape == (9, 3, 1, 4, 4)
    assert traj["sigma"][0].item() == pytest.approx(80.0)
    out32 = edm_sampler(lambda x, s, c: 0.5 * x, lat64.float(), num_steps=5)
    assert out32.dtype == torch.float32


def _heun_scalar(f, sigmas):
    """EDM's Heun on a scalar ODE dx/dsigma = f(x, sigma), Euler on the last step to sigma = 0."""
    x = float(sigmas[0])
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        d = f(x, a)
        x_next = x + (b - a) * d
        x = x + (b - a) * 0.5 * (d + f(x_next, b)) if b > 0 else x_next
    return x


@pytest.mark.parametrize("steps", [18, 200])
def test_sampler_solves_the_gaussian_ode(steps):
    """Data N(0, s^2 I): the ideal denoiser is D(x, sigma) = s^2 / (s^2 + sigma^2) x, the ODE is linear in x, and
    x(0) = x(sigma_max) * s / sqrt(s^2 + sigma_max^2). The sampler equals a scalar Heun written here on the
    same schedule, converges to the exact map, and records the denoiser's output at each trajectory point."""
    s2 = 0.25
    denoise = lambda x, sigma, c: s2 / (s2 + sigma ** 2) * x  # noqa: E731
    lat = torch.randn(4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out, traj = edm_sampler(denoise, lat, num_steps=steps, return_trajectory=True)
    schedule = sigma_steps(steps).double().tolist()
    sigma_max = schedule[0]
    gain = _heun_scalar(lambda x, sig: (x - denoise(x, sig, None)) / sig, schedule) / sigma_max
    assert torch.allclose(out, traj["x"][0] * gain, rtol=1e-9, atol=1e-12)
    exact = (s2 / (s2 + sigma_max ** 2)) ** 0.5
    assert gain == pytest.approx(exact, rel=0.06 if steps == 18 else 2e-3)
    for x, d, sigma in zip(traj["x"], traj["denoised"], traj["sigma"]):
        assert torch.allclose(d, denoise(x, sigma.item(), None))


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=1), "num_steps"),
    (dict(num_steps=5, solver="rk4"), "solver"),
    (dict(num_steps=5, rho=0), "rho"),
    (dict(num_steps=5, sigma_min=1.0, sigma_max=0.5), "sigma_min"),
])
def test_sampler_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        edm_sampler(lambda x, s, c: x, torch.randn(2, 1, 4, 4), **kwargs)


def test_sampler_rejects_bad_denoiser_shape_and_labels():
    with pytest.raises(ValueError, match="denoiser returned shape"):
        edm_sampler(lambda x, s, c: x[:, :, :2], torch.randn(2, 1, 4, 4), num_steps=3)
    with pytest.raises(ValueError, match="class_labels"):
        edm_sampler(lambda x, s, c: x, torch.randn(2, 1, 4, 4), num_steps=3, class_labels=torch.zeros(3, 10))
    with pytest.raises(ValueError, match="latents"):
        edm_sampler(lambda x, s, c: x, torch.zeros(4, dtype=torch.long), num_steps=3)


@pytest.mark.parametrize("preset,label_dim,expected", [
    ("ncsnpp", 0, 56_397_827), ("ncsnpp", 10, 56_400_643), ("ddpmpp", 0, 55_733_891), ("ddpmpp", 10, 55_735_299),
])
def test_cifar10_parameter_counts(preset, label_dim, expected):
    with torch.device("meta"):  # counts only; no memory for 56M weights
        net = build_network(dict(preset=preset, img_resolution=32, img_channels=3, label_dim=label_dim,
                                 augment_dim=9, dropout=0.13))
    assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize("variant", [
    dict(embedding_type="fourier", encoder_type="residual", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
    dict(encoder_type="skip", decoder_type="skip"),
    dict(label_dim=10, augment_dim=9),
])
def test_songunet_variants_run(variant):
    """Each variant is a per-image function (no image leaks into another's output), uses its conditioning
    inputs, and is deterministic in eval mode; parity with EDM itself: tests/test_parity.py."""
    _check_network(build_network({**TINY, **variant}), variant.get("label_dim", 0), variant.get("augment_dim", 0))


def _check_network(net, label_dim, augment_dim):
    torch.manual_seed(0)
    with torch.no_grad():  # zero-initialised output layers would make every input give c_skip x
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    net.eval()
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.5, 2.0, 10.0])
    kw = {}
    if label_dim:
        kw["class_labels"] = torch.eye(label_dim)[:3]
    if augment_dim:
        kw["augment_labels"] = torch.randn(3, augment_dim) * 0.5
    with torch.no_grad():
        out = net(x, sigma, **kw)
        assert out.shape == x.shape and torch.equal(out, net(x, sigma, **kw))
        alone = net(x[1:2], sigma[1:2], **{k: v[1:2] for k, v in kw.items()})
        torch.testing.assert_close(alone, out[1:2], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(net(x, sigma * 2, **kw), out)  # sigma is an input, not ignored
        if label_dim:
            other = dict(kw, class_labels=kw["class_labels"].roll(1, dims=1))  # every image another class
            assert not torch.allclose(net(x, sigma, **other), out)
        if augment_dim:
            assert not torch.allclose(net(x, sigma, **dict(kw, augment_labels=torch.zeros(3, augment_dim))), out)


def test_dhariwal_unet_runs():
    net = build_network(dict(model_type="DhariwalUNet", img_resolution=8, img_channels=1, model_channels=16,
                             channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], label_dim=3))
    _check_network(net, 3, 0)


def test_precond_at_large_sigma_is_c_skip_dominated():
    # With zero-initialised output weights F ~ 0, so D(x; sigma) ~ c_skip x = sigma_data^2/(sigma^2+sigma_data^2) x.
    net = build_network(TINY).eval()
    for p in net.model.dec.parameters():
        p.data.zero_()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = net(x, torch.tensor(3.0))
    torch.testing.assert_close(out, 0.25 / (9 + 0.25) * x)


def test_network_input_errors():
    net = build_network(TINY)
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(2, 3, 8, 8), torch.tensor(1.0))
    with pytest.raises(ValueError, match="sigma"):
        net(torch.randn(2, 1, 8, 8), torch.ones(3))
    with pytest.raises(ValueError, match="unknown network config keys"):
        build_network({**TINY, "num_blockz": 2})
    with pytest.raises(ValueError, match="img_channels"):
        build_network({"img_resolution": 8})
    with pytest.raises(ValueError, match="encoder_type"):
        build_network({**TINY, "encoder_type": "bogus"})


def test_edm_loss_weight_and_value():
    assert loss_weight(torch.tensor(0.5)).item() == pytest.approx((0.25 + 0.25) / 0.0625)
    images, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    sigma = torch.full([4], 2.0)
    identity = lambda x, s, c, augment_labels=None: x  # D(x) = x -> error sigma * n
    loss = EDMLoss()(identity, images, noise, sigma=sigma)
    torch.testing.assert_close(loss, loss_weight(torch.tensor(2.0)) * (2.0 * noise) ** 2)
    with pytest.raises(ValueError, match="same shape"):
        EDMLoss()(identity, images, noise[:2])


def test_edm_loss_sigma_distribution():
    g = torch.Generator().manual_seed(0)
    from aot_diffusion.loss import sample_sigma
    log_s = sample_sigma(20000, generator=g).log()
    assert log_s.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert log_s.std().item() == pytest.approx(1.2, abs=0.03)


def test_a_killed_writers_temporary_files_are_removed_by_the_next_run(tmp_path):
    from aot_diffusion.utils import AtomicPath, remove_stale_temps

    target = tmp_path / "samples.npz"
    with pytest.raises(KeyboardInterrupt):
        with AtomicPath(target, suffix=".npz") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt  # AtomicPath cleans up after an exception...
    killed = tmp_path / ".samples.npz.k1ll3d.tmp.npz"  # ...but not after SIGKILL: what that leaves
    killed.write_bytes(b"half")
    other = tmp_path / ".other.npz.x.tmp.npz"
    other.write_bytes(b"someone else's")
    assert remove_stale_temps(target) == [killed]
    assert not killed.exists() and other.exists()


def test_hybrid_sampler_switches_denoisers_by_the_sigma_of_each_evaluation():
    """Above the switch the first denoiser evaluates, at and below it the second; the limits are the pure ones."""
    calls = []

    def tagged(tag, scale):
        def denoise(x, sigma, labels):
            calls.append((tag, float(sigma.reshape(-1)[0])))
            return x * scale
        return denoise

    a, b = tagged("a", 0.5), tagged("b", 0.9)
    z = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    edm_sampler(switch_denoiser(a, b, 2.0), z, num_steps=6)
    assert calls and all((tag == "a") == (s > 2.0) for tag, s in calls)
    assert {tag for tag, _ in calls} == {"a", "b"}
    pure = edm_sampler(a, z, num_steps=6)
    assert torch.equal(edm_sampler(switch_denoiser(a, b, 0.0), z, num_steps=6), pure)
    assert torch.equal(edm_sampler(switch_denoiser(b, a, 1e9), z, num_steps=6), pure)


@pytest.mark.parametrize("steps", [2, 3, 7, 18])
def test_a_switch_sweep_equals_the_separate_hybrid_runs_to_the_bit(steps):
    """The hybrid stage's sweep shares the steps above its switches; every switch's result is the separate run's,
    bit for bit, including switches above sigma_max (pure `low`) and below sigma_min (pure `high`)."""
    torch.manual_seed(0)
    w = torch.randn(16, 16, dtype=torch.float32) * 0.2
    calls = []

    def high(x, sigma, labels):
        calls.append("high")
        return (x.float().reshape(len(x), -1) @ w).reshape(x.shape) / (1 + sigma.float() ** 2)

    def low(x, sigma, labels):
        calls.append("low")
        return torch.tanh(x.float()) / (1 + sigma.float())

    z = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    switches = [100.0, 10.0, 2.0, 0.5, 0.001]
    calls.clear()
    swept = switch_sweep(high, low, z, switches=switches, num_steps=steps)
    shared = len(calls)
    calls.clear()
    separate = {s: edm_sampler(switch_denoiser(high, low, s), z, num_steps=steps) for s in switches}
    assert all(torch.equal(swept[s], separate[s]) for s in switches)
    assert shared < len(calls) if steps > 2 else shared == len(calls)  # fewer evaluations where steps are shared
    wrong = switch_sweep(low, high, z, switches=[2.0], num_steps=steps)[2.0]
    assert not torch.equal(wrong, separate[2.0])  # the roles are not interchangeable
