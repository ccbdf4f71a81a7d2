"""EDM's non-leaky augmentation pipeline (Karras et al. 2022, NVlabs/edm ``training/augment.py``).

Written for this project after EDM's ``AugmentPipe``; same knobs, same per-sample probabilities,
same random draws in the same order, same augmentation labels. The network is conditioned on
the labels (``augment_dim``), so it learns to undo augmentations that never leak into samples,
which are generated with all-zero labels.

EDM's CIFAR-10 configuration (``train.py --augment=0.12``) is :data:`EDM_CIFAR10_AUGMENT`:
``AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)``,
whose labels have 9 entries per image, in this order::

    0  xflip            1 if the image was mirrored left-right (xflip=1e8: a fair coin for every image)
    1  yflip            1 if mirrored top-bottom
    2  scale            w, isotropic scale 2 ** (w * scale_std)
    3  rotate cos - 1   cos(theta) - 1 of the fractional rotation theta
    4  rotate sin       sin(theta)
    5  aniso x          w * cos(r): anisotropic scale 2 ** (w * aniso_std) along direction r
    6  aniso y          w * sin(r)
    7  translate x      tx / (W * translate_frac_std)
    8  translate y      ty / (H * translate_frac_std)

Other enabled knobs insert their labels at EDM's positions: ``rotate_int`` (2 entries) and
``translate_int`` (2) after yflip; ``brightness`` (1), ``contrast`` (1), ``lumaflip`` (1),
``hue`` (2), ``saturation`` (1) at the end. Each transform is applied to a sample with
probability ``p * multiplier`` (capped at 1); a sample it skips gets zero labels for it.

The geometric transforms are composed into one inverse matrix per image and executed as in EDM:
reflect padding, 2x upsampling with the ``sym6`` wavelet low-pass filter, bilinear resampling
through ``affine_grid``/``grid_sample``, and filtered 2x downsampling. Unlike EDM, images whose
geometric matrix is the identity are left out of that resampling round trip (it is an identity
up to float rounding for them), so unaugmented images come back bit-exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["AugmentPipe", "EDM_CIFAR10_AUGMENT", "augment_dim", "SYM6"]

# Low-pass filter of Daubechies' symlet-6 wavelet (the resampling filter EDM uses).
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)

EDM_CIFAR10_AUGMENT = dict(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)

# Number of label entries contributed by each knob, in EDM's order.
_LABEL_WIDTHS = (("xflip", 1), ("yflip", 1), ("rotate_int", 2), ("translate_int", 2), ("scale", 1),
                 ("rotate_frac", 2), ("aniso", 2), ("translate_frac", 2), ("brightness", 1), ("contrast", 1),
                 ("lumaflip", 1), ("hue", 2), ("saturation", 1))


def augment_dim(**knobs) -> int:
    """Length of the augmentation label vector for the given ``AugmentPipe`` knobs (9 for CIFAR-10)."""
    return sum(width for name, width in _LABEL_WIDTHS if float(knobs.get(name, 0)) > 0)


# ---------------------------------------------------------------------------------------------
# Batched homogeneous matrices [N, 3, 3] (2D) and [N, 4, 4] (colour space).

def _eye(n, size, device):
    return torch.eye(size, device=device).expand(n, size, size).clone()


def _translate(tx, ty):
    m = _eye(tx.shape[0], 3, tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _scale(sx, sy):
    m = _eye(sx.shape[0], 3, sx.device)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate(theta):
    """Counter-clockwise rotation by ``theta`` in (x, y) pixel coordinates."""
    m = _eye(theta.shape[0], 3, theta.device)
    c, s = theta.cos(), theta.sin()
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def _const(value, n, device):
    return torch.full([n], float(value), device=device)


class AugmentPipe:
    """EDM's augmentation pipe. ``pipe(images)`` -> ``(augmented_images, labels)``.

    ``images``: float tensor [N, C, H, W] in [-1, 1] (C = 3, or 1 when colour transforms are
    off or for luminance images). ``labels``: float32 [N, augment_dim] (see module docstring).
    All knobs default to 0 (disabled); ``p`` multiplies every probability. Randomness comes from
    ``generator`` when given (the training loop's per-pool generator, safe in a background thread),
    else torch's global generator.
    """

    def __init__(self, p=1,
                 xflip=0, yflip=0, rotate_int=0, translate_int=0, translate_int_max=0.125,
                 scale=0, rotate_frac=0, aniso=0, translate_frac=0, scale_std=0.2, rotate_frac_max=1,
                 aniso_std=0.2, aniso_rotate_prob=0.5, translate_frac_std=0.125,
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2,
                 contrast_std=0.5, hue_max=1, saturation_std=1):
        self.p = float(p)
        # Pixel blitting.
        self.xflip, self.yflip = float(xflip), float(yflip)
        self.rotate_int, self.translate_int = float(rotate_int), float(translate_int)
        self.translate_int_max = float(translate_int_max)
        # General geometric transforms.
        self.scale, self.rotate_frac, self.aniso = float(scale), float(rotate_frac), float(aniso)
        self.translate_frac = float(translate_frac)
        self.scale_std, self.rotate_frac_max = float(scale_std), float(rotate_frac_max)
        self.aniso_std, self.aniso_rotate_prob = float(aniso_std), float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std)
        # Colour transforms.
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.hue_max, self.saturation_std = float(hue_max), float(saturation_std)
        self.init_kwargs = dict(
            p=p, xflip=xflip, yflip=yflip, rotate_int=rotate_int, translate_int=translate_int,
            translate_int_max=translate_int_max, scale=scale, rotate_frac=rotate_frac, aniso=aniso,
            translate_frac=translate_frac, scale_std=scale_std, rotate_frac_max=rotate_frac_max,
            aniso_std=aniso_std, aniso_rotate_prob=aniso_rotate_prob, translate_frac_std=translate_frac_std,
            brightness=brightness, contrast=contrast, lumaflip=lumaflip, hue=hue, saturation=saturation,
            brightness_std=brightness_std, contrast_std=contrast_std, hue_max=hue_max,
            saturation_std=saturation_std)

    @property
    def label_dim(self) -> int:
        return augment_dim(**self.init_kwargs)

    def __repr__(self):
        on = {k: v for k, v in self.init_kwargs.items() if k == "p" or (k in dict(_LABEL_WIDTHS) and float(v) > 0)}
        return f"AugmentPipe({', '.join(f'{k}={v}' for k, v in on.items())})"

    def _gate(self, multiplier, shape, device, generator=None):
        """Per-sample Bernoulli(p * multiplier) mask (EDM draws it after the parameters)."""
        return torch.rand(shape, device=device, generator=generator) < multiplier * self.p

    # -----------------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None):
        if images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {list(images.shape)}")
        N, C, H, W = images.shape
        device = images.device
        labels: list[torch.Tensor] = []

        # Pixel blitting: exact flips, quarter turns and integer translations.
        if self.xflip > 0:
            w = torch.randint(2, [N, 1, 1, 1], device=device, generator=generator)
            w = torch.where(self._gate(self.xflip, [N, 1, 1, 1], device, generator), w, 0)
            images = torch.where(w == 1, images.flip(3), images)
            labels.append(w)
        if self.yflip > 0:
            w = torch.randint(2, [N, 1, 1, 1], device=device, generator=generator)
            w = torch.where(self._gate(self.yflip, [N, 1, 1, 1], device, generator), w, 0)
            images = torch.where(w == 1, images.flip(2), images)
            labels.append(w)
        if self.rotate_int > 0:
            if H != W:
                raise ValueError("rotate_int needs square images")
            w = torch.randint(4, [N, 1, 1, 1], device=device, generator=generator)
            w = torch.where(self._gate(self.rotate_int, [N, 1, 1, 1], device, generator), w, 0)
            flip_x, flip_y = (w == 1) | (w == 2), (w == 2) | (w == 3)
            images = torch.where(flip_x, images.flip(3), images)
            images = torch.where(flip_y, images.flip(2), images)
            images = torch.where((w == 1) | (w == 3), images.transpose(2, 3), images)
            labels += [flip_x, flip_y]
        if self.translate_int > 0:
            w = torch.rand([2, N, 1, 1, 1], device=device, generator=generator) * 2 - 1
            w = torch.where(self._gate(self.translate_int, [1, N, 1, 1, 1], device, generator), w, 0)
            tx = (w[0] * (W * self.translate_int_max)).round().to(torch.int64)
            ty = (w[1] * (H * self.translate_int_max)).round().to(torch.int64)
            images = self._shift_reflect(images, tx, ty)
            labels += [tx / (W * self.translate_int_max), ty / (H * self.translate_int_max)]

        # General geometric transforms: one inverse matrix (output pixel -> input pixel) per image,
        # in pixel coordinates centred on the image.
        G_inv = None

        def compose(m):
            nonlocal G_inv
            G_inv = m if G_inv is None else G_inv @ m

        if self.scale > 0:
            w = torch.randn([N], device=device, generator=generator)
            w = torch.where(self._gate(self.scale, [N], device, generator), w, 0)
            s = torch.exp2(w * self.scale_std)
            compose(_scale(1 / s, 1 / s))
            labels.append(w)
        if self.rotate_frac > 0:
            w = (torch.rand([N], device=device, generator=generator) * 2 - 1) * (math.pi * self.rotate_frac_max)
            w = torch.where(self._gate(self.rotate_frac, [N], device, generator), w, 0)
            compose(_rotate(w))  # inverse of rotating the content by -w
            labels += [w.cos() - 1, w.sin()]
        if self.aniso > 0:
            w = torch.randn([N], device=device, generator=generator)
            r = (torch.rand([N], device=device, generator=generator) * 2 - 1) * math.pi
            w = torch.where(self._gate(self.aniso, [N], device, generator), w, 0)
            r = torch.where(torch.rand([N], device=device, generator=generator) < self.aniso_rotate_prob, r, 0)
            s = torch.exp2(w * self.aniso_std)
            compose(self._aniso_inv(s, r))
            labels += [w * r.cos(), w * r.sin()]
        if self.translate_frac > 0:
            w = torch.randn([2, N], device=device, generator=generator)
            w = torch.where(self._gate(self.translate_frac, [1, N], device, generator), w, 0)
            compose(_translate(-w[0] * (W * self.translate_frac_std), -w[1] * (H * self.translate_frac_std)))
            labels += [w[0], w[1]]

        if G_inv is not None:
            moved = (G_inv - torch.eye(3, device=device)).abs().flatten(1).amax(1) > 0
            if bool(moved.any()):
                idx = moved.nonzero().flatten()
                images = images.clone()
                images[idx] = self._resample(images[idx], G_inv[idx])

        # Colour transforms: one 4x4 affine matrix per image acting on (r, g, b, 1).
        M = None
        luma = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device) / math.sqrt(3)
        luma_outer = torch.outer(luma, luma)
        I_4 = torch.eye(4, device=device)

        def apply(m):
            nonlocal M
            M = m if M is None else m @ M

        if self.brightness > 0:
            w = torch.randn([N], device=device, generator=generator)
            w = torch.where(self._gate(self.brightness, [N], device, generator), w, 0)
            b = w * self.brightness_std
            m = _eye(N, 4, device)
            m[:, 0, 3] = m[:, 1, 3] = m[:, 2, 3] = b
            apply(m)
            labels.append(w)
        if self.contrast > 0:
            w = torch.randn([N], device=device, generator=generator)
            w = torch.where(self._gate(self.contrast, [N], device, generator), w, 0)
            c = torch.exp2(w * self.contrast_std)
            m = _eye(N, 4, device)
            m[:, 0, 0] = m[:, 1, 1] = m[:, 2, 2] = c
            apply(m)
            labels.append(w)
        if self.lumaflip > 0:
            w = torch.randint(2, [N, 1, 1], device=device, generator=generator)
            w = torch.where(self._gate(self.lumaflip, [N, 1, 1], device, generator), w, 0)
            apply(I_4 - 2 * luma_outer * w)  # Householder reflection of the luma axis
            labels.append(w)
        if self.hue > 0:
            w = (torch.rand([N], device=device, generator=generator) * 2 - 1) * (math.pi * self.hue_max)
            w = torch.where(self._gate(self.hue, [N], device, generator), w, 0)
            apply(self._rotate_about(luma[:3], w))
            labels += [w.cos() - 1, w.sin()]
        if self.saturation > 0:
            w = torch.randn([N, 1, 1], device=device, generator=generator)
            w = torch.where(self._gate(self.saturation, [N, 1, 1], device, generator), w, 0)
            apply(luma_outer + (I_4 - luma_outer) * torch.exp2(w * self.saturation_std))
            labels.append(w)

        if M is not None:
            flat = images.reshape(N, C, H * W)
            if C == 3:
                flat = M[:, :3, :3] @ flat + M[:, :3, 3:]
            elif C == 1:
                m = M[:, :3, :].mean(dim=1, keepdim=True)  # effect on grey = mean of the RGB rows
                flat = flat * m[:, :, :3].sum(dim=2, keepdim=True) + m[:, :, 3:]
            else:
                raise ValueError("colour augmentations need RGB (3 channels) or L (1 channel) images")
            images = flat.reshape(N, C, H, W)

        out = torch.cat([x.to(torch.float32).reshape(N, -1) for x in labels], dim=1) if labels \
            else torch.zeros([N, 0], device=device)
        return images, out

    # -----------------------------------------------------------------------------------------
    @staticmethod
    def _aniso_inv(s, r):
        """rotate(-r) @ scale(1/s, s) @ rotate(r), in closed form so that s = 1 gives exactly I."""
        c2, s2, cs = r.cos() ** 2, r.sin() ** 2, r.cos() * r.sin()
        a, b = 1 / s, s
        m = _eye(s.shape[0], 3, s.device)
        m[:, 0, 0] = 1 + (a - 1) * c2 + (b - 1) * s2
        m[:, 1, 1] = 1 + (a - 1) * s2 + (b - 1) * c2
        m[:, 0, 1] = m[:, 1, 0] = (b - a) * cs
        return m

    @staticmethod
    def _shift_reflect(images, tx, ty):
        """Integer translation with mirror (reflect) boundary, per image.

        As in EDM, output pixel (x, y) reads input pixel (x - tx, y + ty), mirrored at the borders.
        """
        N, C, H, W = images.shape
        device = images.device
        xs = torch.arange(W, device=device).view(1, 1, 1, W) - tx.view(N, 1, 1, 1)
        ys = torch.arange(H, device=device).view(1, 1, H, 1) + ty.view(N, 1, 1, 1)
        # Reflect about the first and last pixel: period 2 * (size - 1).
        xs = (W - 1) - ((W - 1) - xs.remainder(2 * W - 2)).abs()
        ys = (H - 1) - ((H - 1) - ys.remainder(2 * H - 2)).abs()
        rows = torch.gather(images, 2, ys.expand(N, C, H, W))
        return torch.gather(rows, 3, xs.expand(N, C, H, W))

    @staticmethod
    def _rotate_about(axis, theta):
        """[N, 4, 4] rotation by ``theta`` about the unit 3-vector ``axis`` (Rodrigues)."""
        N = theta.shape[0]
        K = torch.zeros(3, 3, device=theta.device)
        x, y, z = axis
        K[0, 1], K[0, 2], K[1, 0], K[1, 2], K[2, 0], K[2, 1] = -z, y, z, -x, -y, x
        s, c = theta.sin().view(N, 1, 1), theta.cos().view(N, 1, 1)
        R = torch.eye(3, device=theta.device) * c + K * s + torch.outer(axis, axis) * (1 - c)
        m = _eye(N, 4, theta.device)
        m[:, :3, :3] = R
        return m

    @staticmethod
    def _resample(images, G_inv):
        """Apply inverse matrices ``G_inv`` [n, 3, 3] (centred pixel coords) to ``images`` [n, C, H, W]."""
        n, C, H, W = images.shape
        device, dtype = images.device, images.dtype
        taps = len(SYM6)
        pad = taps // 4  # border the filters need, in original pixels
        cx, cy = (W - 1) / 2, (H - 1) / 2

        # Reflect-pad just enough to cover where the output corners land in the input.
        corners = torch.tensor([[-cx, -cy, 1.0], [cx, -cy, 1.0], [cx, cy, 1.0], [-cx, cy, 1.0]], device=device)
        src = (G_inv @ corners.t())[:, :2, :]  # [n, xy, corner]
        reach = src.permute(1, 0, 2).flatten(1)  # [xy, n * corner]
        need = torch.cat([-reach, reach]).amax(dim=1)  # [left, top, right, bottom] in centred coords
        need = need + torch.tensor([2 * pad - cx, 2 * pad - cy] * 2, device=device)
        need = need.clamp(min=0).minimum(torch.tensor([W - 1, H - 1] * 2, device=device, dtype=need.dtype))
        left, top, right, bottom = (int(v) for v in need.ceil().tolist())
        images = F.pad(images, [left, right, top, bottom], mode="reflect")
        # Centre of the padded image relative to the original centre.
        G = _translate(_const((left - right) / 2, n, device), _const((top - bottom) / 2, n, device)) @ G_inv

        # 2x upsampling (zero insertion + sym6 low-pass) as a strided transposed convolution.
        h = torch.tensor(SYM6, dtype=dtype, device=device)
        images = F.conv_transpose2d(images.reshape(n * C, 1, *images.shape[2:]), h.view(1, 1, 1, taps),
                                    stride=(1, 2), padding=(0, taps // 2 - 1))
        images = F.conv_transpose2d(images, h.view(1, 1, taps, 1), stride=(2, 1), padding=(taps // 2 - 1, 0))
        images = images.reshape(n, C, *images.shape[2:])
        ones = torch.ones(n, device=device)
        G = _scale(2 * ones, 2 * ones) @ G @ _scale(ones / 2, ones / 2)
        G = _translate(-ones / 2, -ones / 2) @ G @ _translate(ones / 2, ones / 2)

        # Resample onto a 2x grid of the output (plus the filter border), normalised coordinates.
        out_h, out_w = (H + 2 * pad) * 2, (W + 2 * pad) * 2
        in_h, in_w = images.shape[2], images.shape[3]
        G = _scale(2 / in_w * ones, 2 / in_h * ones) @ G @ _scale(out_w / 2 * ones, out_h / 2 * ones)
        grid = F.affine_grid(G[:, :2, :].to(dtype), [n, C, out_h, out_w], align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # Low-pass and decimate by 2, then crop the border.
        images = images.reshape(n * C, 1, out_h, out_w)
        images = F.conv2d(images, h.view(1, 1, 1, taps), stride=(1, 2), padding=(0, (taps - 1) // 2))
        images = images[:, :, :, pad:-pad]
        images = F.conv2d(images, h.view(1, 1, taps, 1), stride=(2, 1), padding=((taps - 1) // 2, 0))
        images = images[:, :, pad:-pad, :]
        return images.reshape(n, C, H, W)
