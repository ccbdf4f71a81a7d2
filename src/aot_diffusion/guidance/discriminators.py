"""Discriminators d(x_sigma, sigma[, label]) = sigmoid(logit): DG's design on a frozen classifier,
a small from-scratch CNN, their configs, and save / load.

DG's design at every scale (:func:`build_discriminator`): a frozen, noise-aware ADM classifier
(DG's ``32x32_classifier.pt`` on CIFAR-10; on digits one that :func:`train_noise_aware_classifier`
trains) feeds its middle-block feature map to a small trainable ADM encoder head with one output.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..safe_pickle import safe_torch_load
from ..networks import Conv2d, GroupNorm, Linear, PositionalEmbedding, UNetBlock
from ..utils import atomic_save
from ._inputs import check_class_labels, check_images, sigma_vector
from .adm import ADMDiscriminator, ADMEncoderUNet, load_adm_state_dict

# Digits (8x8x1, 10 classes): DG's layout scaled down to CPU minutes. The classifier's 4x4x32 feature
# map plays the role of the 8x8x512 map of DG's 32x32 classifier; the head is DG's at width 16.
DIGITS_CLASSIFIER_CONFIG = dict(image_size=8, in_channels=1, model_channels=16, out_channels=10, num_res_blocks=1,
                                attention_resolutions=(4,), channel_mult=(1, 2), num_head_channels=16, norm_groups=8)
DIGITS_HEAD_CONFIG = dict(model_channels=16, out_channels=1, num_res_blocks=1, attention_resolutions=(4,),
                          channel_mult=(1,), num_head_channels=16, norm_groups=8)

_FORMAT = "aot_diffusion.discriminator/1"


def build_discriminator(encoder: ADMEncoderUNet, *, label_dim: int = 0, head_config: Optional[dict] = None,
                        head_num_classes: Optional[int] = None, seed: int = 0, device=None) -> ADMDiscriminator:
    """DG's discriminator on a frozen ``encoder``; the head's initial weights depend on ``seed`` only.

    ``head_config``: ADM encoder arguments of the head (default DG's, width 128, depth 2); ``device``:
    where the discriminator lives (default: the encoder's device).
    """
    device = next(encoder.parameters()).device if device is None else torch.device(device)
    torch.manual_seed(seed)  # before the head is built: identical seeds give identical heads
    disc = ADMDiscriminator(encoder, label_dim=label_dim, head_num_classes=head_num_classes, **(head_config or {}))
    return disc.to(device)


class NoiseConditionedDiscriminator(nn.Module):
    """Small residual CNN d(x_sigma, sigma[, label]) returning logits [N], trained from scratch.

    The input is scaled by c_in = 1 / sqrt(sigma^2 + sigma_data^2) as in EDM, the noise level enters
    as a sinusoidal embedding of c_noise = ln(sigma) / 4 (plus a label embedding when
    ``label_dim > 0``) that modulates every residual block; each entry of ``channels`` is one
    resolution level (the first at full resolution, each further one halves it), followed by
    group-norm, SiLU, global average pooling and a linear logit. A baseline for DG's design.
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
        check_images(x, self.img_channels, self.img_resolution)
        n = x.shape[0]
        class_labels = check_class_labels(class_labels, n, self.label_dim)
        sigma = sigma_vector(sigma, n, x.device).to(x.dtype)
        c_in = (sigma ** 2 + self.sigma_data ** 2).rsqrt()
        emb = self.noise_embed(sigma.log() / 4)
        if self.label_embed is not None:
            class_labels = class_labels.to(x.device)
            onehot = F.one_hot(class_labels.long(), self.label_dim) if class_labels.ndim == 1 else class_labels
            emb = emb + self.label_embed(onehot.to(x.dtype))
        emb = F.silu(self.emb1(F.silu(self.emb0(emb))))
        h = self.conv_in(x * c_in.reshape(-1, 1, 1, 1))
        for block in self.blocks:
            h = block(h, emb)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.fc_out(h).reshape(n)


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_discriminator(path, disc: nn.Module, *, encoder_path=None) -> None:
    """Write ``disc`` (config + weights) atomically, readable with ``torch.load(weights_only=True)``.

    For an :class:`ADMDiscriminator` the frozen encoder is included, or, with ``encoder_path``, only
    referenced by that path (DG's 32x32 classifier need not be copied into every discriminator).
    """
    if isinstance(disc, ADMDiscriminator):
        blob = dict(format=_FORMAT, kind="adm", config=disc.config, encoder_config=disc.encoder.config,
                    head_state=_cpu_state(disc.head))
        if encoder_path is None:
            blob["encoder_state"] = _cpu_state(disc.encoder)
        else:
            blob["encoder_path"] = str(encoder_path)
    elif isinstance(disc, NoiseConditionedDiscriminator):
        if encoder_path is not None:
            raise ValueError("encoder_path applies to an ADMDiscriminator only")
        blob = dict(format=_FORMAT, kind="cnn", config=disc.config, state=_cpu_state(disc))
    else:
        raise TypeError(f"cannot save a {type(disc).__name__}: expected ADMDiscriminator or "
                        "NoiseConditionedDiscriminator")
    atomic_save(blob, path)


def load_discriminator(path, device="cpu", *, encoder_path=None) -> nn.Module:
    """Rebuild a discriminator written by :func:`save_discriminator`, in eval mode on ``device``.

    ``encoder_path`` overrides the encoder path stored in the file (the encoder is loaded strictly).
    """
    blob = safe_torch_load(path)
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a discriminator written by save_discriminator")
    if blob["kind"] == "cnn":
        disc = NoiseConditionedDiscriminator(**blob["config"])
        disc.load_state_dict(blob["state"])
        return disc.to(device).eval()
    encoder = ADMEncoderUNet(**blob["encoder_config"])
    source = encoder_path or blob.get("encoder_path")
    if encoder_path is None and "encoder_state" in blob:
        source = blob["encoder_state"]
    elif source is None:
        raise ValueError(f"{path} references no encoder: pass encoder_path")
    load_adm_state_dict(encoder, source)
    cfg = blob["config"]
    disc = ADMDiscriminator(encoder, label_dim=cfg["label_dim"], head_num_classes=cfg["head_num_classes"],
                            **cfg["head_config"])
    disc.head.load_state_dict(blob["head_state"])
    return disc.to(device).eval()
