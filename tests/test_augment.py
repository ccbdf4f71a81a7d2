"""EDM's non-leaky augmentation pipe (aot_diffusion.augment.AugmentPipe)."""

import math

import pytest
import torch

from aot_diffusion.augment import EDM_CIFAR10_AUGMENT, AugmentPipe, augment_dim

SHAPES = [(16, 3, 32, 32), (16, 1, 8, 8)]


def _images(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


@pytest.mark.parametrize("shape", SHAPES)
def test_p0_is_identity(shape):
    x = _images(shape)
    torch.manual_seed(0)
    y, labels = AugmentPipe(**{**EDM_CIFAR10_AUGMENT, "p": 0})(x)
    assert torch.equal(y, x)
    assert labels.shape == (shape[0], 9) and labels.dtype == torch.float32
    assert torch.count_nonzero(labels) == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_cifar_config_labels(shape):
    x = _images(shape)
    pipe = AugmentPipe(**EDM_CIFAR10_AUGMENT)
    assert pipe.label_dim == augment_dim(**EDM_CIFAR10_AUGMENT) == 9
    torch.manual_seed(1)
    y, labels = pipe(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert labels.shape == (shape[0], 9)
    # xflip=1e8 makes the flip a fair coin for every image; its label is that coin.
    assert set(labels[:, 0].tolist()) <= {0.0, 1.0}
    assert set(labels[:, 1].tolist()) <= {0.0, 1.0}
    # Rotation labels are (cos - 1, sin) of one angle.
    c, s = labels[:, 3] + 1, labels[:, 4]
    torch.testing.assert_close(c ** 2 + s ** 2, torch.ones(shape[0]))


def test_untouched_samples_have_zero_labels_and_same_image():
    x = _images((64, 3, 32, 32))
    torch.manual_seed(2)
    # No xflip here: a sample with all-zero labels was not augmented at all.
    cfg = {**EDM_CIFAR10_AUGMENT, "xflip": 0, "p": 0.3}
    y, labels = AugmentPipe(**cfg)(x)
    assert labels.shape == (64, 8)
    untouched = (labels == 0).all(dim=1)
    assert 0 < int(untouched.sum()) < 64
    assert torch.equal(y[untouched], x[untouched])
    assert not torch.equal(y[~untouched], x[~untouched])


@pytest.mark.parametrize("shape", SHAPES)
def test_pure_xflip(shape):
    x = _images(shape)
    torch.manual_seed(3)
    y, labels = AugmentPipe(p=1, xflip=1)(x)
    assert labels.shape == (shape[0], 1)
    flipped = labels[:, 0] == 1
    assert 0 < int(flipped.sum()) < shape[0]
    assert torch.equal(y[flipped], torch.flip(x[flipped], [3]))
    assert torch.equal(y[~flipped], x[~flipped])


def test_probability_and_distribution():
    """Each transform fires with probability p (EDM's per-sample gate) and has EDM's distribution."""
    n, p = 4000, 0.5
    x = torch.zeros(n, 1, 8, 8)
    torch.manual_seed(4)
    _, labels = AugmentPipe(**{**EDM_CIFAR10_AUGMENT, "p": p})(x)
    # yflip fires with p and then flips with probability 1/2.
    assert abs(labels[:, 1].mean().item() - p / 2) < 0.03
    # scale: the label is w ~ N(0, 1) when applied.
    w = labels[:, 2][labels[:, 2] != 0]
    assert abs(len(w) / n - p) < 0.03 and abs(w.std().item() - 1) < 0.08
    # fractional rotation: uniform angle in (-pi, pi).
    theta = torch.atan2(labels[:, 4], labels[:, 3] + 1)[labels[:, 4] != 0]
    assert abs(len(theta) / n - p) < 0.03 and abs(theta.abs().mean().item() - math.pi / 2) < 0.1
    # translation: both coordinates share one gate.
    assert torch.equal(labels[:, 7] == 0, labels[:, 8] == 0)


def test_deterministic_under_seed():
    x = _images((8, 3, 32, 32))
    pipe = AugmentPipe(**{**EDM_CIFAR10_AUGMENT, "p": 0.5})
    torch.manual_seed(5)
    a = pipe(x)
    torch.manual_seed(5)
    b = pipe(x)
    torch.manual_seed(6)
    c = pipe(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def _field(xs, ys):
    """A smooth analytic image f(x, y) (x right, y down, pixel units centred on the image)."""
    return torch.cos(0.21 * xs + 0.13 * ys + 0.4) + 0.5 * torch.sin(0.09 * xs - 0.17 * ys)


def test_geometry_matches_labels():
    """Resampled images are the transforms the labels describe (EDM's conventions), on smooth images."""
    H = W = 32
    c = (W - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(H) - c, torch.arange(W) - c, indexing="ij")
    x = _field(xs, ys).expand(8, 1, H, W).contiguous()
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))

    def check(pipe, expected_fn, tol):
        torch.manual_seed(11)
        y, labels = pipe(x)
        assert (labels != 0).all()
        expected = torch.stack([expected_fn(labels[i]) for i in range(8)])[:, None]
        # Tolerance: EDM's resampling (sym6 2x upsampling + bilinear) is not exact interpolation.
        assert (y[inner] - expected[inner]).abs().max() < tol

    std = 0.05
    # Translation: content moves by (+w0 * W * std, +w1 * H * std) pixels.
    check(AugmentPipe(p=1, translate_frac=1, translate_frac_std=std),
          lambda l: _field(xs - l[0] * W * std, ys - l[1] * H * std), 0.01)
    # Isotropic scale: content is magnified by 2 ** (w * scale_std).
    check(AugmentPipe(p=1, scale=1),
          lambda l: _field(xs / 2 ** (0.2 * l[0]), ys / 2 ** (0.2 * l[0])), 0.01)
    # Fractional rotation by theta (labels cos - 1, sin): output(p) = input(R(theta) p).
    def rotated(l):
        cos, sin = l[0] + 1, l[1]
        return _field(cos * xs - sin * ys, sin * xs + cos * ys)
    check(AugmentPipe(p=1, rotate_frac=1), rotated, 0.06)


def test_integer_translation_uses_reflection():
    x = _images((32, 1, 8, 8))
    torch.manual_seed(7)
    y, labels = AugmentPipe(p=1, translate_int=1, translate_int_max=0.25)(x)
    tx, ty = (labels[:, 0] * 2).round().long(), (labels[:, 1] * 2).round().long()
    for i in range(32):
        cols = [abs(c - tx[i].item()) if c - tx[i].item() >= 0 else -(c - tx[i].item()) for c in range(8)]
        cols = [min(c, 14 - c) for c in cols]
        rows = [r + ty[i].item() for r in range(8)]
        rows = [(-r if r < 0 else r) for r in rows]
        rows = [min(r, 14 - r) for r in rows]
        assert torch.equal(y[i, 0], x[i, 0][rows][:, cols])


def test_brightness_and_contrast_do_what_their_labels_say():
    """EDM's colour transforms, checked by their effect: brightness adds b = 0.2 * label to every pixel; contrast
    scales each image about its mean by 2 ** (0.5 * label)."""
    x = _images((6, 3, 8, 8))
    torch.manual_seed(3)
    y, labels = AugmentPipe(p=1, brightness=1)(x)
    b = labels[:, labels.abs().sum(0) > 0].squeeze(1)
    assert torch.allclose(y - x, 0.2 * b.view(-1, 1, 1, 1).expand_as(x), atol=1e-6)
    y, labels = AugmentPipe(p=1, contrast=1)(x)
    c = labels[:, labels.abs().sum(0) > 0].squeeze(1)
    centred = lambda t: t - t.mean((1, 2, 3), keepdim=True)  # noqa: E731
    assert torch.allclose(centred(y), centred(x) * 2 ** (0.5 * c.view(-1, 1, 1, 1)), atol=1e-5)


def test_colour_and_other_knobs_run():
    x = _images((8, 3, 16, 16))
    cfg = dict(p=1, xflip=1, rotate_int=1, translate_int=1, brightness=1, contrast=1, lumaflip=1, hue=1,
               saturation=1)
    torch.manual_seed(8)
    y, labels = AugmentPipe(**cfg)(x)
    assert labels.shape == (8, augment_dim(**cfg)) == (8, 11)
    assert torch.isfinite(y).all()
    y1, labels1 = AugmentPipe(**cfg)(x[:, :1])
    assert y1.shape == (8, 1, 16, 16) and labels1.shape == (8, 11)
    with pytest.raises(ValueError):
        AugmentPipe(p=1, brightness=1)(torch.zeros(2, 2, 8, 8))


def test_colour_transforms_do_what_they_are_named_for():
    """EDM's colour transforms as properties: brightness adds one offset per image; hue rotation and saturation
    act around the luma axis (1, 1, 1) and keep each pixel's channel sum; contrast scales each image about 0."""
    x = _images((16, 3, 8, 8))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    y, _ = AugmentPipe(p=1, brightness=1)(x, generator=g())
    d = (y - x).flatten(1)
    torch.testing.assert_close(d, d[:, :1].expand_as(d), rtol=0, atol=1e-5)
    assert d[:, 0].abs().max() > 0.01
    for knob in ("hue", "saturation"):
        y, _ = AugmentPipe(p=1, **{knob: 1})(x, generator=g())
        torch.testing.assert_close(y.sum(1), x.sum(1), rtol=0, atol=1e-4)
        assert (y - x).abs().max() > 0.01, knob
    y, _ = AugmentPipe(p=1, contrast=1)(x, generator=g())
    ratio = (y.flatten(1) / x.flatten(1))
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-3, atol=1e-3)


def test_explicit_generator_is_reproducible_and_leaves_global_rng_alone():
    pipe = AugmentPipe(p=1.0, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    a = pipe(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), before)
    b = pipe(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
