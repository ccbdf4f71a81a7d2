"""Discriminator Guidance (DG, Kim et al. ICML 2023) and its AOT variant (AOT-DG).

A discriminator d(x_sigma, sigma[, label]) = sigmoid(logit) is trained with binary cross-entropy to
tell real training images (target 1) from samples of the trained diffusion model (target 0), both
perturbed as x + sigma * n. Guided sampling corrects the denoiser at the Euler evaluation of each
Heun step, inside a sigma window:

    D'(x; sigma) = D(x; sigma) + w * sigma^2 * grad_x log(d / (1 - d)),

and log(d / (1 - d)) is exactly the discriminator's logit, so the correction is the gradient of
the logit. (DG writes the same thing as d_cur += w * (-sigma^2 grad) / sigma on the ODE slope.)

Two discriminators are provided:

* :class:`NoiseConditionedDiscriminator`: a small CNN trained from scratch (``digits``, ``smoke``).
* :class:`ADMDiscriminator`: DG's paper-scale model, a frozen pretrained ADM 32x32 classifier
  encoder (guided-diffusion's ``EncoderUNetModel``, checkpoint ``32x32_classifier.pt``, loaded with
  :func:`load_adm_classifier`) whose pre-pooling features feed a small trainable ADM encoder head.
  Like DG it works in the VP parameterisation the classifier was trained in: the VE input x at
  noise level sigma is fed as x / sqrt(1 + sigma^2) at VP time tau(sigma) (beta_min 0.1, beta_max 20),
  embedded as tau * 999.

AOT-DG (:func:`discriminator_batches` / :func:`train_discriminator` with ``aot=True``): the unit
noise of each pool of real images and each pool of fake images is paired with the images by
:func:`aot_diffusion.aot.pair_noise` (class by class with labels) before sigma is drawn.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .aot import labels_to_ids, pair_noise
from .loss import sample_sigma
from .networks import Conv2d, GroupNorm, Linear, PositionalEmbedding, UNetBlock

__all__ = [
    "NoiseConditionedDiscriminator", "ADMEncoderUNet", "ADMDiscriminator", "ADM_CLASSIFIER_32",
    "DG_HEAD_CONFIG", "load_adm_state_dict", "load_adm_classifier", "build_adm_discriminator",
    "sigma_to_vp_time", "vp_time_to_sigma", "DG_SIGMA_WINDOW", "draw_sigma", "SIGMA_DISTRIBUTIONS",
    "discriminator_batches", "train_discriminator", "evaluate_discriminator", "log_ratio_grad",
    "GuidedDenoiser", "guided_denoiser", "DG_DEFAULT_WEIGHTS",
]

# ----------------------------------------------------------------------------------------------
# Noise-level helpers

VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0


def _vp_integral(t):
    """int_0^t beta(s) ds of the linear VP schedule; sigma(t)^2 = exp(this) - 1."""
    return 0.5 * t ** 2 * (VP_BETA_MAX - VP_BETA_MIN) + t * VP_BETA_MIN


def sigma_to_vp_time(sigma):
    """VP diffusion time tau in [0, 1] with the same signal-to-noise ratio as VE noise level sigma."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64) if not isinstance(sigma, torch.Tensor) else sigma
    db = VP_BETA_MAX - VP_BETA_MIN
    return (torch.sqrt(VP_BETA_MIN ** 2 + 2 * db * torch.log1p(sigma ** 2)) - VP_BETA_MIN) / db


def vp_time_to_sigma(t) -> float:
    """Inverse of :func:`sigma_to_vp_time` for a float time."""
    return math.sqrt(math.expm1(_vp_integral(float(t))))


# DG applies guidance for VP times in [0.01, 1.0] (generate.py --time_min/--time_max), i.e.
# sigma in [~0.0447, ~152]: every step of EDM's default [0.002, 80] schedule but the last few.
DG_SIGMA_WINDOW = (vp_time_to_sigma(0.01), vp_time_to_sigma(1.0))

SIGMA_DISTRIBUTIONS = ("lognormal", "dg")


def draw_sigma(n: int, *, distribution: str = "lognormal", P_mean: float = -1.2, P_std: float = 1.2,
               generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Per-sample perturbation levels [n] for discriminator training.

    ``"lognormal"`` (default): EDM's ln sigma ~ N(P_mean, P_std^2), the distribution the diffusion
    model itself was trained on. ``"dg"``: DG's importance-sampled VP time on [1e-5, 1], which is
    exactly ln sigma uniform on [ln sigma(1e-5), ln sigma(1)] = [ln 0.001, ln 152].
    """
    if distribution == "lognormal":
        return sample_sigma(n, P_mean, P_std, generator=generator, device=device).reshape(n)
    if distribution == "dg":
        lo, hi = math.log(vp_time_to_sigma(1e-5)), math.log(vp_time_to_sigma(1.0))
        u = torch.rand([n], generator=generator, device=device)
        return (lo + (hi - lo) * u).exp()
    raise ValueError(f"sigma distribution must be one of {SIGMA_DISTRIBUTIONS}, got {distribution!r}")


def _sigma_vector(sigma, n: int, device) -> torch.Tensor:
    """sigma as a float tensor [n] from a number, a 0-dim tensor, [n] or [n, 1, 1, 1]."""
    sigma = torch.as_tensor(sigma, device=device)
    if sigma.numel() == 1:
        sigma = sigma.reshape(1).expand(n)
    elif sigma.numel() == n:
        sigma = sigma.reshape(n)
    else:
        raise ValueError(f"sigma must be a scalar or have one value per image ({n}), got shape {list(sigma.shape)}")
    if not sigma.is_floating_point():
        sigma = sigma.to(torch.float32)
    if bool((sigma <= 0).any()):
        raise ValueError("sigma must be positive")
    return sigma


def _check_images(x, img_channels, img_resolution, what="x"):
    expected = (img_channels, img_resolution, img_resolution)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != expected:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must have shape [N, {expected[0]}, {expected[1]}, {expected[2]}], got {shape}")


def _check_class_labels(class_labels, n: int, label_dim: int):
    """Validate labels for a discriminator with ``label_dim`` classes (0: unconditional)."""
    if label_dim == 0:
        if class_labels is not None:
            raise ValueError("this discriminator is unconditional (label_dim=0) but class_labels were given")
        return None
    if class_labels is None:
        raise ValueError(f"this discriminator is conditional (label_dim={label_dim}): class_labels are required")
    class_labels = torch.as_tensor(class_labels)
    if class_labels.shape[0] != n:
        raise ValueError(f"class_labels has {class_labels.shape[0]} rows but x has {n} images")
    if class_labels.ndim == 2:
        if class_labels.shape[1] != label_dim:
            raise ValueError(f"one-hot class_labels must have {label_dim} columns, got {class_labels.shape[1]}")
    elif class_labels.ndim == 1:
        if class_labels.is_floating_point() or bool((class_labels < 0).any()) or bool((class_labels >= label_dim).any()):
            raise ValueError(f"class ids must be integers in [0, {label_dim})")
    else:
        raise ValueError(f"class_labels must be ids [N] or one-hot [N, {label_dim}], got {list(class_labels.shape)}")
    return class_labels


# ----------------------------------------------------------------------------------------------
# Small noise-conditioned CNN (offline profiles)


class NoiseConditionedDiscriminator(nn.Module):
    """Small residual CNN d(x_sigma, sigma[, label]) returning logits [N].

    The input is scaled by c_in = 1 / sqrt(sigma^2 + sigma_data^2) as in EDM, the noise level enters
    as a sinusoidal embedding of c_noise = ln(sigma) / 4 (plus a label embedding when
    ``label_dim > 0``) that modulates every residual block; each entry of ``channels`` is one
    resolution level (the first at full resolution, each further one halves it), followed by
    group-norm, SiLU, global average pooling and a linear logit.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 channels: Sequence[int] = (32, 64), blocks_per_level: int = 1, emb_channels: int = 64,
                 dropout: float = 0.0, sigma_data: float = 0.5):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 4:
            raise ValueError(f"channels must be a non-empty list of widths >= 4, got {channels}")
        if img_resolution % (2 ** (len(channels) - 1)):
            raise ValueError(f"img_resolution {img_resolution} cannot be halved {len(channels) - 1} times")
        if blocks_per_level < 1:
            raise ValueError("blocks_per_level must be >= 1")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.sigma_data = sigma_data
        # Constructor arguments, so a saved state dict can be rebuilt: NoiseConditionedDiscriminator(**config).
        self.config = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                           channels=channels, blocks_per_level=blocks_per_level, emb_channels=emb_channels,
                           dropout=dropout, sigma_data=sigma_data)
        self.noise_embed = PositionalEmbedding(emb_channels, endpoint=True)
        self.emb0 = Linear(emb_channels, emb_channels)
        self.emb1 = Linear(emb_channels, emb_channels)
        self.label_embed = Linear(label_dim, emb_channels, bias=False) if label_dim else None
        self.conv_in = Conv2d(img_channels, channels[0], kernel=3)
        blocks = []
        width = channels[0]
        for level, out in enumerate(channels):
            for k in range(blocks_per_level):
                blocks.append(UNetBlock(width, out, emb_channels, down=(level > 0 and k == 0), dropout=dropout))
                width = out
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = GroupNorm(width)
        self.fc_out = Linear(width, 1)

    def forward(self, x: torch.Tensor, sigma, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        _check_images(x, self.img_channels, self.img_resolution)
        n = x.shape[0]
        class_labels = _check_class_labels(class_labels, n, self.label_dim)
        sigma = _sigma_vector(sigma, n, x.device).to(x.dtype)
        c_in = (sigma ** 2 + self.sigma_data ** 2).rsqrt()
        emb = self.noise_embed(sigma.log() / 4)
        if self.label_embed is not None:
            onehot = (F.one_hot(class_labels.long(), self.label_dim) if class_labels.ndim == 1 else class_labels)
            emb = emb + self.label_embed(onehot.to(x.dtype))
        emb = F.silu(self.emb1(F.silu(self.emb0(emb))))
        h = self.conv_in(x * c_in.reshape(-1, 1, 1, 1))
        for block in self.blocks:
            h = block(h, emb)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.fc_out(h).reshape(n)


# ----------------------------------------------------------------------------------------------
# ADM encoder (guided-diffusion EncoderUNetModel), with its checkpoint's parameter names.
#
# Submodule names and Sequential indices below are fixed by the checkpoint layout
# (``input_blocks.{i}.{j}.in_layers.2.weight``, ``out.2.qkv_proj.weight``, ...).


def _adm_norm(channels: int, groups: int) -> nn.GroupNorm:
    return _GroupNorm32(groups, channels)


class _GroupNorm32(nn.GroupNorm):
    """Group norm evaluated in float32 (as ADM does), returned in the input's dtype."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


def _sinusoidal(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """ADM's timestep embedding: [cos(t f_k), sin(t f_k)], f_k = max_period^(-k / half)."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    args = timesteps.float()[:, None] * torch.exp(-math.log(max_period) * k / half)[None]
    emb = torch.cat([args.cos(), args.sin()], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _attend(q, k, v):
    """Softmax attention; q, k, v [B, C, T] -> [B, C, T], with ADM's split 1/sqrt(sqrt(C)) scaling."""
    scale = q.shape[1] ** -0.25
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    w = w.float().softmax(dim=-1).to(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v)


class _ADMResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels, dropout, scale_shift, down, groups):
        super().__init__()
        self.scale_shift, self.down = scale_shift, down
        self.in_layers = nn.Sequential(_adm_norm(channels, groups), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(_adm_norm(out_channels, groups), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x, emb):
        h = self.in_layers[1](self.in_layers[0](x))
        if self.down:  # resample both paths between the activation and the first convolution
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        h = self.in_layers[2](h)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in list(self.out_layers)[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class _ADMAttention(nn.Module):
    """Self-attention over pixels with heads split before q/k/v (ADM's legacy order)."""

    def __init__(self, channels, head_channels, groups):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"{channels} channels are not divisible by num_head_channels={head_channels}")
        self.heads = channels // head_channels
        self.norm = _adm_norm(channels, groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x):
        b, c, hgt, wid = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat)).reshape(b * self.heads, -1, flat.shape[-1])
        q, k, v = qkv.chunk(3, dim=1)
        h = _attend(q, k, v).reshape(b, c, -1)
        return (flat + self.proj_out(h)).reshape(b, c, hgt, wid)


class _ADMAttentionPool(nn.Module):
    """CLIP-style attention pooling: the spatial mean token attends to all tokens (q/k/v split first)."""

    def __init__(self, spatial, channels, head_channels, out_channels):
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"{channels} channels are not divisible by num_head_channels={head_channels}")
        self.heads = channels // head_channels
        self.positional_embedding = nn.Parameter(torch.randn(channels, spatial ** 2 + 1) / channels ** 0.5)
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_channels, 1)

    def forward(self, x):
        b, c = x.shape[:2]
        tokens = x.reshape(b, c, -1)
        tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1)
        tokens = tokens + self.positional_embedding[None].to(tokens.dtype)
        q, k, v = self.qkv_proj(tokens).chunk(3, dim=1)
        t = tokens.shape[-1]
        split = lambda z: z.reshape(b * self.heads, -1, t)  # noqa: E731
        out = _attend(split(q), split(k), split(v)).reshape(b, -1, t)
        return self.c_proj(out)[:, :, 0]


class _Step(nn.ModuleList):
    """One ``input_blocks`` entry: layers applied in turn, res blocks also get the embedding."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _ADMResBlock) else layer(x)
        return x


class _ADMDownsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class ADMEncoderUNet(nn.Module):
    """ADM's half-UNet classifier (guided-diffusion ``EncoderUNetModel``, attention pooling).

    ``attention_resolutions`` lists feature-map resolutions (guided-diffusion's
    ``classifier_attention_resolutions`` string, e.g. 32,16,8) that get self-attention.
    ``num_classes > 0`` adds DG's label embedding (``label_emb``) for conditional heads.
    ``forward(x, timesteps, class_labels=None, features=False)``: ``timesteps`` in ADM's units
    (0..999); with ``features`` it returns the feature map after the middle block instead of logits.
    """

    def __init__(self, image_size: int = 32, in_channels: int = 3, model_channels: int = 128,
                 out_channels: int = 1000, num_res_blocks: int = 4,
                 attention_resolutions: Sequence[int] = (32, 16, 8), channel_mult: Sequence[float] = (1, 2, 4),
                 num_head_channels: int = 64, use_scale_shift_norm: bool = True, resblock_updown: bool = True,
                 dropout: float = 0.0, num_classes: int = 0, norm_groups: int = 32):
        super().__init__()
        self.image_size, self.in_channels, self.model_channels = image_size, in_channels, model_channels
        self.num_classes = num_classes
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes:
            self.label_emb = nn.Embedding(num_classes, emb_dim)
        attn = {int(r) for r in attention_resolutions}
        ch = int(channel_mult[0] * model_channels)
        blocks = [_Step([nn.Conv2d(in_channels, ch, 3, padding=1)])]
        res = image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = int(mult * model_channels)
                layers = [_ADMResBlock(ch, emb_dim, out, dropout, use_scale_shift_norm, False, norm_groups)]
                ch = out
                if res in attn:
                    layers.append(_ADMAttention(ch, num_head_channels, norm_groups))
                blocks.append(_Step(layers))
            if level != len(channel_mult) - 1:
                down = (_ADMResBlock(ch, emb_dim, ch, dropout, use_scale_shift_norm, True, norm_groups)
                        if resblock_updown else _ADMDownsample(ch))
                blocks.append(_Step([down]))
                res //= 2
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = _Step([
            _ADMResBlock(ch, emb_dim, ch, dropout, use_scale_shift_norm, False, norm_groups),
            _ADMAttention(ch, num_head_channels, norm_groups),
            _ADMResBlock(ch, emb_dim, ch, dropout, use_scale_shift_norm, False, norm_groups),
        ])
        self.feature_channels, self.feature_resolution = ch, res
        self.out = nn.Sequential(_adm_norm(ch, norm_groups), nn.SiLU(),
                                 _ADMAttentionPool(res, ch, num_head_channels, out_channels))

    def forward(self, x, timesteps, class_labels=None, features: bool = False):
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != (self.image_size,) * 2:
            raise ValueError(f"x must have shape [N, {self.in_channels}, {self.image_size}, {self.image_size}], "
                             f"got {list(x.shape)}")
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(_sinusoidal(timesteps, self.model_channels))
        if self.num_classes:
            if class_labels is None:
                raise ValueError("this ADM encoder is class-conditional: class_labels are required")
            ids = class_labels.argmax(dim=1) if class_labels.ndim == 2 else class_labels
            emb = emb + self.label_emb(ids.long())
        h = x.float()
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_block(h, emb)
        return h if features else self.out(h)


# DG's classifier_lib.load_classifier settings for 32x32 (the ``32x32_classifier.pt`` checkpoint).
ADM_CLASSIFIER_32 = dict(image_size=32, in_channels=3, model_channels=128, out_channels=1000, num_res_blocks=4,
                         attention_resolutions=(32, 16, 8), channel_mult=(1, 2, 4), num_head_channels=64,
                         use_scale_shift_norm=True, resblock_updown=True)
# DG's trainable head (classifier_lib.load_discriminator): an ADM encoder on the 8x8x512 features.
DG_HEAD_CONFIG = dict(model_channels=128, out_channels=1, num_res_blocks=2, attention_resolutions=(32, 16, 8),
                      channel_mult=(1,), num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True)


def _read_state_dict(path_or_state_dict) -> dict:
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        state = torch.load(path_or_state_dict, map_location="cpu", weights_only=True)
    else:
        state = path_or_state_dict
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a state dict (mapping of names to tensors), got {type(state).__name__}")
    for wrapper in ("state_dict", "model"):  # common checkpoint wrappers
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    out = {}
    for name, value in state.items():
        name = name[len("module."):] if name.startswith("module.") else name  # DDP prefix
        out[name] = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    return out


def load_adm_state_dict(module: ADMEncoderUNet, path_or_state_dict) -> ADMEncoderUNet:
    """Strictly load guided-diffusion ``EncoderUNetModel`` weights (by their original names) into ``module``."""
    state = _read_state_dict(path_or_state_dict)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        def show(names):
            return f"{names[:8]}{' ... (%d in all)' % len(names) if len(names) > 8 else ''}"
        raise KeyError(f"ADM checkpoint does not match the encoder config: missing keys {show(missing)}, "
                       f"unexpected keys {show(unexpected)}")
    bad = [f"{k}: checkpoint {list(state[k].shape)} vs module {list(own[k].shape)}"
           for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError("ADM checkpoint shapes do not match the encoder config: " + "; ".join(bad[:8]))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return module


def load_adm_classifier(path_or_state_dict, **config) -> ADMEncoderUNet:
    """Build the ADM 32x32 classifier (DG's config, overridable by ``config``) and load its checkpoint."""
    return load_adm_state_dict(ADMEncoderUNet(**{**ADM_CLASSIFIER_32, **config}), path_or_state_dict)


class ADMDiscriminator(nn.Module):
    """DG's discriminator: frozen ADM classifier features -> small trainable ADM head -> logit [N].

    ``forward(x, sigma, class_labels=None)`` takes the EDM (VE) input; like DG it feeds the encoder
    x / sqrt(1 + sigma^2) at VP time tau(sigma) (embedded as tau * 999). Only the head is trainable;
    the encoder's graph is built only when gradients w.r.t. the input are needed (guidance).
    """

    def __init__(self, encoder: ADMEncoderUNet, label_dim: int = 0, head_num_classes: Optional[int] = None,
                 **head_config):
        super().__init__()
        self.encoder = encoder
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()
        self.label_dim = label_dim
        self.img_resolution, self.img_channels = encoder.image_size, encoder.in_channels
        cfg = {**DG_HEAD_CONFIG, **head_config}
        num_classes = (head_num_classes if head_num_classes is not None else label_dim) if label_dim else 0
        self.head = ADMEncoderUNet(image_size=encoder.feature_resolution, in_channels=encoder.feature_channels,
                                   num_classes=num_classes, **cfg)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen feature extractor
        return self

    def forward(self, x, sigma, class_labels=None):
        _check_images(x, self.img_channels, self.img_resolution)
        n = x.shape[0]
        class_labels = _check_class_labels(class_labels, n, self.label_dim)
        sigma = _sigma_vector(sigma, n, x.device).to(torch.float64)
        tau = sigma_to_vp_time(sigma)
        x_vp = x / torch.sqrt(1 + sigma ** 2).to(x.dtype).reshape(-1, 1, 1, 1)
        t = (tau * 999).float()
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            feats = self.encoder(x_vp.float(), t, features=True)
        return self.head(feats, t, class_labels).reshape(n)


def build_adm_discriminator(classifier, label_dim: int = 0, **kwargs) -> ADMDiscriminator:
    """DG's discriminator from an ADM classifier checkpoint path / state dict or a built encoder."""
    if not isinstance(classifier, ADMEncoderUNet):
        classifier = load_adm_classifier(classifier)
    return ADMDiscriminator(classifier, label_dim=label_dim, **kwargs)


# ----------------------------------------------------------------------------------------------
# Training data: real (1) / fake (0) batches perturbed with random or AOT-paired noise


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


def _make_generator(generator, seed, device):
    if generator is not None:
        return generator
    gen = torch.Generator(device=device)
    gen.manual_seed(0 if seed is None else int(seed))
    return gen


def _check_set(images, labels, what):
    if not isinstance(images, torch.Tensor) or images.ndim < 2 or not images.is_floating_point():
        raise ValueError(f"{what} images must be a floating-point tensor [N, ...]")
    if images.shape[0] == 0:
        raise ValueError(f"{what} images are empty")
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{what} labels have {labels.shape[0]} rows but there are {images.shape[0]} {what} images")
    return labels_to_ids(labels, images.shape[0]).to(images.device)


def discriminator_batches(real_images: torch.Tensor, fake_images: torch.Tensor, *,
                          real_labels=None, fake_labels=None, aot: bool = False, pool_size: int = 512,
                          batch_size: int = 128, steps: Optional[int] = None,
                          generator: Optional[torch.Generator] = None, seed: Optional[int] = 0,
                          P_mean: float = -1.2, P_std: float = 1.2, sigma_distribution: str = "lognormal",
                          solver: str = "scipy") -> Iterator[dict]:
    """Yield discriminator training batches, half real (target 1), half fake (target 0).

    Pools of ``pool_size`` real and ``pool_size`` fake images are drawn (epoch-wise shuffling) with one
    unit Gaussian noise each; with ``aot`` each pool's noise is reordered by ``pair_noise`` (per class
    when labels are given), otherwise it stays random. A pool is consumed in consecutive chunks of
    ``batch_size // 2`` per side; sigma is then drawn per sample, independently of the pairing
    (EDM's lognormal by default, see :func:`draw_sigma`). Each batch is a dict with ``x`` (noisy input
    ``images + sigma * noise``), ``target`` (float 1/0), ``sigma`` [B], ``class_labels`` (int ids or
    None), ``images``, ``noise`` and ``is_real`` (bool). ``steps=None`` yields forever.
    """
    real_ids = _check_set(real_images, real_labels, "real")
    fake_ids = _check_set(fake_images, fake_labels, "fake")
    if real_images.shape[1:] != fake_images.shape[1:]:
        raise ValueError(f"real images {list(real_images.shape[1:])} and fake images "
                         f"{list(fake_images.shape[1:])} must have the same per-image shape")
    if (real_ids is None) != (fake_ids is None):
        raise ValueError("give class labels for both real and fake images, or for neither")
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
    device = real_images.device
    fake_images = fake_images.to(device=device, dtype=real_images.dtype)
    fake_ids = fake_ids.to(device) if fake_ids is not None else None
    gen = _make_generator(generator, seed, device)
    streams = _IndexStream(real_images.shape[0], gen, device), _IndexStream(fake_images.shape[0], gen, device)
    sets = (real_images, real_ids), (fake_images, fake_ids)
    per_pool = pool_size // half

    def new_pool(side):
        images, ids = sets[side]
        idx = streams[side].take(pool_size)
        pool_images = images[idx]
        pool_ids = ids[idx] if ids is not None else None
        noise = torch.randn(pool_images.shape, generator=gen, device=device, dtype=pool_images.dtype)
        if aot:
            noise = pair_noise(pool_images, noise, labels=pool_ids, solver=solver)
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
                               generator=gen, device=device).to(images.dtype)
            is_real = torch.arange(batch_size, device=device) < half
            yield dict(x=images + sigma.reshape(-1, *[1] * (images.ndim - 1)) * noise,
                       target=is_real.to(images.dtype), sigma=sigma, class_labels=ids,
                       images=images, noise=noise, is_real=is_real)
            step += 1


def _disc_labels(disc, ids):
    return ids if getattr(disc, "label_dim", 0) else None


def train_discriminator(disc: nn.Module, real_images: torch.Tensor, fake_images: torch.Tensor, *,
                        real_labels=None, fake_labels=None, aot: bool = False, pool_size: int = 512,
                        batch_size: int = 128, steps: int = 1000, lr: float = 3e-4, weight_decay: float = 1e-7,
                        generator: Optional[torch.Generator] = None, seed: Optional[int] = 0,
                        P_mean: float = -1.2, P_std: float = 1.2, sigma_distribution: str = "lognormal",
                        log_every: int = 50, solver: str = "scipy",
                        callback: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Train ``disc`` with BCE-with-logits on real (1) vs fake (0) perturbed images.

    Adam with DG's defaults (lr 3e-4, weight decay 1e-7) over the trainable parameters only (the
    frozen ADM encoder is skipped). Batches come from :func:`discriminator_batches` (``aot`` pairs each
    pool's noise with its images). Returns a history: one dict per ``log_every`` steps (and the last)
    with ``step``, ``loss`` and ``accuracy`` averaged over the window, and ``noise_distance``, the mean
    real-image-to-noise Euclidean distance of the window (what AOT lowers).
    """
    if steps < 1 or log_every < 1:
        raise ValueError("steps and log_every must be >= 1")
    conditional = getattr(disc, "label_dim", 0) > 0
    if conditional and (real_labels is None or fake_labels is None):
        raise ValueError("a conditional discriminator needs real_labels and fake_labels")
    params = [p for p in disc.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the discriminator has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    disc.train()
    history, window = [], []
    batches = discriminator_batches(real_images, fake_images, real_labels=real_labels, fake_labels=fake_labels,
                                    aot=aot, pool_size=pool_size, batch_size=batch_size, steps=steps,
                                    generator=generator, seed=seed, P_mean=P_mean, P_std=P_std,
                                    sigma_distribution=sigma_distribution, solver=solver)
    dev = params[0].device
    for step, batch in enumerate(batches, start=1):
        labels = _disc_labels(disc, batch["class_labels"])
        logits = disc(batch["x"].to(dev, torch.float32), batch["sigma"].to(dev, torch.float32),
                      labels.to(dev) if labels is not None else None)
        target = batch["target"].to(dev, torch.float32)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            acc = ((logits > 0).float() == target).float().mean().item()
            real = batch["is_real"]
            dist = (batch["images"][real] - batch["noise"][real]).flatten(1).norm(dim=1).mean().item()
        window.append((loss.item(), acc, dist))
        if step % log_every == 0 or step == steps:
            arr = np.asarray(window)
            entry = dict(step=step, loss=float(arr[:, 0].mean()), accuracy=float(arr[:, 1].mean()),
                         noise_distance=float(arr[:, 2].mean()))
            history.append(entry)
            if callback is not None:
                callback(entry)
            window = []
    disc.eval()
    return history


@torch.no_grad()
def evaluate_discriminator(disc: nn.Module, real_images: torch.Tensor, fake_images: torch.Tensor, *,
                           real_labels=None, fake_labels=None, batch_size: int = 256,
                           generator: Optional[torch.Generator] = None, seed: Optional[int] = 0,
                           P_mean: float = -1.2, P_std: float = 1.2, sigma_distribution: str = "lognormal",
                           sigma=None) -> dict:
    """Accuracy and mean BCE of ``disc`` on held-out real (1) / fake (0) images at random sigma.

    Each image gets one random unit noise and one sigma (drawn as in training, or the fixed ``sigma``).
    Returns dict(accuracy, bce, accuracy_real, accuracy_fake, n).
    """
    real_ids = _check_set(real_images, real_labels, "real")
    fake_ids = _check_set(fake_images, fake_labels, "fake")
    if real_images.shape[1:] != fake_images.shape[1:]:
        raise ValueError(f"real images {list(real_images.shape[1:])} and fake images "
                         f"{list(fake_images.shape[1:])} must have the same per-image shape")
    conditional = getattr(disc, "label_dim", 0) > 0
    if conditional and (real_ids is None or fake_ids is None):
        raise ValueError("a conditional discriminator needs real_labels and fake_labels")
    device = real_images.device
    gen = _make_generator(generator, seed, device)
    dev = next(disc.parameters()).device
    was_training = disc.training
    disc.eval()
    results = {}
    try:
        for name, images, ids, target in (("real", real_images, real_ids, 1.0),
                                          ("fake", fake_images.to(device), fake_ids, 0.0)):
            correct, bce = [], []
            for start in range(0, images.shape[0], batch_size):
                x = images[start:start + batch_size].float()
                n = x.shape[0]
                s = (draw_sigma(n, distribution=sigma_distribution, P_mean=P_mean, P_std=P_std, generator=gen,
                                device=device) if sigma is None else _sigma_vector(sigma, n, device).float())
                noise = torch.randn(x.shape, generator=gen, device=device)
                labels = ids[start:start + batch_size].to(device) if (conditional and ids is not None) else None
                logits = disc((x + s.reshape(-1, 1, 1, 1) * noise).to(dev), s.to(dev),
                              labels.to(dev) if labels is not None else None).cpu()
                t = torch.full_like(logits, target)
                correct.append(((logits > 0).float() == t).float())
                bce.append(F.binary_cross_entropy_with_logits(logits, t, reduction="none"))
            results[name] = torch.cat(correct), torch.cat(bce)
    finally:
        disc.train(was_training)
    correct = torch.cat([results["real"][0], results["fake"][0]])
    bce = torch.cat([results["real"][1], results["fake"][1]])
    return dict(accuracy=correct.mean().item(), bce=bce.mean().item(),
                accuracy_real=results["real"][0].mean().item(), accuracy_fake=results["fake"][0].mean().item(),
                n=int(correct.numel()))


# ----------------------------------------------------------------------------------------------
# Guided sampling

# DG's guidance weights on the first-order (Euler) evaluation, CIFAR-10 (generate.py / paper).
DG_DEFAULT_WEIGHTS = {"unconditional": 2.0, "conditional": 1.0}


def log_ratio_grad(disc: nn.Module, x: torch.Tensor, sigma, class_labels=None, *,
                   compute_dtype: torch.dtype = torch.float32, logit_clip: Optional[float] = None) -> torch.Tensor:
    """grad_x log(d / (1 - d)) = grad_x logit(x, sigma), by autograd in ``compute_dtype`` (float32).

    Returned in x's dtype. Per-sample gradients (the logits of different samples are independent).
    ``logit_clip``: DG clips d to [1e-5, 1 - 1e-5] before the log ratio, i.e. the gradient vanishes
    where |logit| > ln(99999) ~= 11.51; pass that value to reproduce it (default: no clipping).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor")
    sigma = _sigma_vector(sigma, x.shape[0], x.device).to(compute_dtype)
    with torch.enable_grad():
        xc = x.detach().to(compute_dtype).requires_grad_(True)
        logits = disc(xc, sigma, class_labels)
        if logits.shape != (x.shape[0],):
            raise ValueError(f"discriminator must return logits of shape [{x.shape[0]}], got {list(logits.shape)}")
        if logit_clip is not None:
            logits = logits.clamp(-logit_clip, logit_clip)
        (grad,) = torch.autograd.grad(logits.sum(), xc)
    return grad.to(x.dtype)


class GuidedDenoiser:
    """D'(x; sigma) = D(x; sigma) + weight * sigma^2 * grad_x logit(x, sigma) for sigma in the window.

    Has the denoiser signature ``(x, sigma, class_labels)``; pass it as ``denoise_euler`` to
    :func:`aot_diffusion.sampling.edm_sampler` to correct the Euler evaluations only, as DG does.
    ``num_grad_evals`` counts batched discriminator gradient evaluations (report next to the NFE);
    ``num_calls`` counts all calls. ``reset()`` zeroes both.
    """

    def __init__(self, denoise, disc, weight: float, sigma_window=DG_SIGMA_WINDOW,
                 compute_dtype: torch.dtype = torch.float32, logit_clip: Optional[float] = None):
        lo, hi = sigma_window if sigma_window is not None else (0.0, float("inf"))
        if not (0 <= lo <= hi):
            raise ValueError(f"sigma_window must satisfy 0 <= lo <= hi, got {sigma_window!r}")
        self.denoise, self.disc, self.weight = denoise, disc, float(weight)
        self.sigma_window = (float(lo), float(hi))
        self.compute_dtype, self.logit_clip = compute_dtype, logit_clip
        self.conditional = getattr(disc, "label_dim", 0) > 0
        self.reset()
        if disc is not None:
            disc.eval()

    def reset(self):
        self.num_grad_evals = 0
        self.num_calls = 0

    def active(self, sigma) -> bool:
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        return self.weight != 0 and self.disc is not None and self.sigma_window[0] <= s <= self.sigma_window[1]

    def __call__(self, x, sigma, class_labels=None):
        self.num_calls += 1
        denoised = self.denoise(x, sigma, class_labels)
        if not self.active(sigma):
            return denoised
        labels = class_labels if self.conditional else None
        grad = log_ratio_grad(self.disc, x, sigma, labels, compute_dtype=self.compute_dtype,
                              logit_clip=self.logit_clip)
        self.num_grad_evals += 1
        s2 = _sigma_vector(sigma, x.shape[0], x.device).to(denoised.dtype) ** 2
        return denoised + self.weight * s2.reshape(-1, *[1] * (x.ndim - 1)) * grad.to(denoised.dtype)


def guided_denoiser(denoise, disc, weight: float, sigma_window=DG_SIGMA_WINDOW, **kwargs) -> GuidedDenoiser:
    """Wrap ``denoise`` with Discriminator Guidance (see :class:`GuidedDenoiser`).

    DG's defaults: weight 2 (unconditional) / 1 (conditional), window = VP time [0.01, 1].
    """
    return GuidedDenoiser(denoise, disc, weight, sigma_window=sigma_window, **kwargs)
