"""ADM's encoder UNet (guided-diffusion ``EncoderUNetModel``) by its checkpoint's parameter names,
the strict loader for DG's ``32x32_classifier.pt``, and DG's discriminator built on it.

Submodule names and Sequential indices are fixed by the checkpoint layout
(``input_blocks.{i}.{j}.in_layers.2.weight``, ``out.2.qkv_proj.weight``, ...).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..safe_pickle import safe_torch_load
from ._inputs import check_class_labels, check_images, sigma_vector
from .vp import vp_input


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
        self.in_layers = nn.Sequential(_GroupNorm32(groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(_GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[3].weight)  # ADM's zero_module: each block starts as the identity
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

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
        self.norm = _GroupNorm32(groups, channels)
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
    (tau * 999); with ``features`` it returns the feature map after the middle block instead of logits.
    ``config`` holds the constructor arguments: ``ADMEncoderUNet(**m.config)`` rebuilds it.
    """

    def __init__(self, image_size: int = 32, in_channels: int = 3, model_channels: int = 128,
                 out_channels: int = 1000, num_res_blocks: int = 4,
                 attention_resolutions: Sequence[int] = (32, 16, 8), channel_mult: Sequence[float] = (1, 2, 4),
                 num_head_channels: int = 64, use_scale_shift_norm: bool = True, resblock_updown: bool = True,
                 dropout: float = 0.0, num_classes: int = 0, norm_groups: int = 32):
        super().__init__()
        self.config = dict(image_size=image_size, in_channels=in_channels, model_channels=model_channels,
                           out_channels=out_channels, num_res_blocks=num_res_blocks,
                           attention_resolutions=[int(r) for r in attention_resolutions],
                           channel_mult=[m for m in channel_mult], num_head_channels=num_head_channels,
                           use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
                           dropout=dropout, num_classes=num_classes, norm_groups=norm_groups)
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
        self.out = nn.Sequential(_GroupNorm32(norm_groups, ch), nn.SiLU(),
                                 _ADMAttentionPool(res, ch, num_head_channels, out_channels))

    def forward(self, x, timesteps, class_labels=None, features: bool = False):
        check_images(x, self.in_channels, self.image_size)
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(_sinusoidal(timesteps, self.model_channels))
        if self.num_classes:
            if class_labels is None:
                raise ValueError("this ADM encoder is class-conditional: class_labels are required")
            ids = class_labels.argmax(dim=1) if class_labels.ndim == 2 else class_labels  # DG: argmax of one-hot
            emb = emb + self.label_emb(ids.long())
        h = x.float()
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_block(h, emb)
        return h if features else self.out(h)


_DG_CHANNEL_MULT = {8: (1,), 16: (1, 2), 32: (1, 2, 4), 64: (1, 2, 3, 4)}  # script_util.create_classifier


def adm_config_from_dg_args(args: Mapping) -> dict:
    """:class:`ADMEncoderUNet` arguments for DG's ``create_classifier(**args)`` (attention pooling, fp32).

    DG names attention by downsampling factor image_size // resolution; factors below 1 never occur.
    """
    size = int(args["image_size"])
    if size not in _DG_CHANNEL_MULT:
        raise ValueError(f"unsupported image size {size} (DG's create_classifier knows {sorted(_DG_CHANNEL_MULT)})")
    if args.get("classifier_pool", "attention") != "attention" or args.get("classifier_use_fp16", False):
        raise ValueError("only DG's float32 classifiers with attention pooling are supported")
    factors = {size // int(r) for r in str(args["classifier_attention_resolutions"]).split(",")}
    return dict(image_size=size, in_channels=int(args.get("in_channels", 3)),
                model_channels=int(args["classifier_width"]), out_channels=int(args["out_channels"]),
                num_res_blocks=int(args["classifier_depth"]),
                attention_resolutions=tuple(sorted((size // f for f in factors if f >= 1), reverse=True)),
                channel_mult=_DG_CHANNEL_MULT[size], num_head_channels=64,
                use_scale_shift_norm=bool(args["classifier_use_scale_shift_norm"]),
                resblock_updown=bool(args["classifier_resblock_updown"]),
                num_classes=1000 if args.get("condition", False) else 0)  # guided-diffusion's NUM_CLASSES


# DG's classifier_lib.load_classifier settings for 32x32 (the ``32x32_classifier.pt`` checkpoint).
ADM_CLASSIFIER_32 = adm_config_from_dg_args(dict(
    image_size=32, classifier_width=128, classifier_depth=4, classifier_attention_resolutions="32,16,8",
    classifier_use_scale_shift_norm=True, classifier_resblock_updown=True, out_channels=1000))
# DG's trainable head (classifier_lib.load_discriminator): an ADM encoder on the 8x8x512 features,
# with guided-diffusion's 1000-entry label embedding when conditional.
DG_HEAD_CONFIG = dict(model_channels=128, out_channels=1, num_res_blocks=2, attention_resolutions=(32, 16, 8),
                      channel_mult=(1,), num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True)
DG_HEAD_NUM_CLASSES = 1000
DG_CLASSIFIER_URL = "https://github.com/alsdudrla10/DG"


def _read_state_dict(path_or_state_dict) -> dict:
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        state = safe_torch_load(path_or_state_dict)
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
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
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


def adm_config_summary(state: Mapping) -> dict:
    """What a guided-diffusion classifier state dict holds: width, input/output channels, feature map."""
    try:
        return dict(model_channels=int(state["time_embed.0.weight"].shape[1]),
                    in_channels=int(state["input_blocks.0.0.weight"].shape[1]),
                    out_channels=int(state["out.2.c_proj.weight"].shape[0]),
                    feature_channels=int(state["out.0.weight"].shape[0]),
                    feature_tokens=int(state["out.2.positional_embedding"].shape[1]) - 1,
                    input_blocks=len({k.split(".")[1] for k in state if k.startswith("input_blocks.")}))
    except KeyError as err:
        raise KeyError(f"not a guided-diffusion EncoderUNetModel state dict: no {err.args[0]!r}") from None


def norm_groups(channels: int) -> int:
    """ADM's GroupNorm(32), narrowed to the width where that is below 32 (or doesn't divide it)."""
    return math.gcd(32, int(channels))


def encoder_config(encoder: Mapping, **base) -> dict:
    """:class:`ADMEncoderUNet` arguments at the shape the ``guidance.encoder`` parameters give, on top of ``base``."""
    width = int(encoder["model_channels"])
    return dict(base, model_channels=width, channel_mult=tuple(encoder["channel_mult"]),
                num_res_blocks=int(encoder["num_res_blocks"]),
                attention_resolutions=tuple(int(r) for r in encoder["attention_resolutions"]),
                num_head_channels=int(encoder["num_head_channels"]), norm_groups=norm_groups(width))


def dg_classifier_config(encoder: Mapping | None = None) -> dict:
    """DG's 32x32 classifier config, at the shape ``encoder`` (the ``guidance.encoder`` parameters) gives; None:
    DG's published one."""
    return dict(ADM_CLASSIFIER_32) if encoder is None else encoder_config(encoder, **ADM_CLASSIFIER_32)


def load_dg_classifier(path, device="cpu", encoder: Mapping | None = None) -> ADMEncoderUNet:
    """DG's frozen noise-aware 32x32 classifier (``32x32_classifier.pt``, a state dict by DG's names).

    Checks what the file holds against the expected shape (:func:`dg_classifier_config`: DG's published width
    128, depth 4, channel_mult 1,2,4, attention at 32/16/8, attention pooling, 1000 outputs, unless ``encoder``
    says otherwise) before the strict load.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"DG's ADM classifier {str(path)!r} not found. DG publishes it as \"32x32_classifier.pt\" "
            f"(download link in the README of the DG GitHub repository, alsdudrla10/DG: {DG_CLASSIFIER_URL}); "
            f"put the file at the path given by the 'guidance.adm_classifier' parameter.")
    config = dg_classifier_config(encoder)
    state = _read_state_dict(safe_torch_load(path))
    with torch.device("meta"):  # shapes only, no memory
        expected = adm_config_summary(ADMEncoderUNet(**config).state_dict())
    found = adm_config_summary(state)
    diff = {k: (found[k], v) for k, v in expected.items() if found[k] != v}
    if diff:
        what = "DG's published 32x32 classifier" if encoder is None else "the classifier guidance.encoder describes"
        raise ValueError(f"{path} does not hold {what}: "
                         + ", ".join(f"{k} is {a} (expected {b})" for k, (a, b) in diff.items()))
    return load_adm_state_dict(ADMEncoderUNet(**config), state).requires_grad_(False).to(device).eval()


class ADMDiscriminator(nn.Module):
    """DG's discriminator: frozen noise-aware ADM classifier -> feature map -> trainable ADM head -> logit [N].

    ``forward(x, sigma, class_labels=None)`` takes the EDM (VE) input; like DG it feeds the encoder
    alpha x = x / sqrt(1 + sigma^2) at VP time tau(sigma) (see :func:`vp_input`). Only the head is
    trainable; the encoder's graph is built only when gradients w.r.t. the input are needed (guidance).
    ``head_num_classes``: size of the head's label embedding (default ``label_dim``; DG uses 1000).
    """

    def __init__(self, encoder: ADMEncoderUNet, label_dim: int = 0, head_num_classes: Optional[int] = None,
                 **head_config):
        super().__init__()
        if not isinstance(encoder, ADMEncoderUNet):
            raise TypeError(f"encoder must be an ADMEncoderUNet, got {type(encoder).__name__}")
        num_classes = (label_dim if head_num_classes is None else head_num_classes) if label_dim else 0
        if label_dim and num_classes < label_dim:
            raise ValueError(f"head_num_classes ({num_classes}) must cover label_dim ({label_dim})")
        self.encoder = encoder.requires_grad_(False).eval()
        self.label_dim = label_dim
        self.img_resolution, self.img_channels = encoder.image_size, encoder.in_channels
        cfg = {**DG_HEAD_CONFIG, **head_config}
        self.head = ADMEncoderUNet(image_size=encoder.feature_resolution, in_channels=encoder.feature_channels,
                                   num_classes=num_classes, **cfg)
        self.config = dict(label_dim=label_dim, head_num_classes=num_classes, head_config=cfg)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen feature extractor
        return self

    def forward(self, x, sigma, class_labels=None):
        check_images(x, self.img_channels, self.img_resolution)
        n = x.shape[0]
        class_labels = check_class_labels(class_labels, n, self.label_dim)
        x_vp, t = vp_input(x.float(), sigma_vector(sigma, n, x.device))
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            feats = self.encoder(x_vp, t, features=True)
        if class_labels is not None:
            class_labels = class_labels.to(x.device)
        return self.head(feats, t, class_labels).reshape(n)
