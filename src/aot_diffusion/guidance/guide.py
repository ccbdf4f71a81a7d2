"""Guided sampling: the denoiser corrected by the discriminator's log density ratio,

    D'(x; sigma) = D(x; sigma) + w * sigma^2 * grad_x log(d / (1 - d)),

at the Euler evaluation of each Heun step, inside a sigma window (DG: VP time [0.01, 1]). DG clips
d to [1e-5, 1 - 1e-5] first, so the correction vanishes where the discriminator is that sure.
(DG writes the same term as d_cur -= w * dg_score / sigma, dg_score = -sigma^2 grad log(d / (1 - d)).)

:meth:`GuidedDenoiser.correction` is what DG's boosting sampler (:func:`aot_diffusion.sampling.boosted_sampler`)
reads: the guidance term and each sample's log ratio.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ._inputs import sigma_vector
from .vp import DG_SIGMA_WINDOW

DG_PROB_CLIP = 1e-5  # classifier_lib.get_log_ratio: d = clip(d, 1e-5, 1 - 1e-5)


INACTIVE_LOG_RATIO = 1e7  # DG's log ratio outside its window: "real", so no boost follows


def log_ratio_grad(disc: nn.Module, x: torch.Tensor, sigma, class_labels=None, *,
                   prob_clip: Optional[float] = DG_PROB_CLIP,
                   compute_dtype: torch.dtype = torch.float32, with_log_ratio: bool = False):
    """grad_x log(d / (1 - d)) with d = sigmoid(logit) clipped to [prob_clip, 1 - prob_clip].

    log(d / (1 - d)) is the logit itself, so clipping d is clamping the logit to +-ln((1 - c) / c)
    (same value, same zero gradient outside, without the cancellation of 1 - d in float32).
    ``prob_clip=None``: no clipping. Autograd in ``compute_dtype``; returned in x's dtype, on x's device.
    Per-sample gradients (the logits of different samples are independent). ``with_log_ratio``: also the
    (clamped) log ratio per sample, ``(grad, log_ratio)``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor")
    sigma = sigma_vector(sigma, x.shape[0], x.device).to(compute_dtype)
    with torch.enable_grad():
        xc = x.detach().to(compute_dtype).requires_grad_(True)
        logits = disc(xc, sigma, class_labels)
        if logits.shape != (x.shape[0],):
            raise ValueError(f"discriminator must return logits of shape [{x.shape[0]}], got {list(logits.shape)}")
        if prob_clip is not None:
            if not 0 < prob_clip < 0.5:
                raise ValueError(f"prob_clip must be in (0, 0.5), got {prob_clip}")
            bound = math.log((1 - prob_clip) / prob_clip)
            logits = logits.clamp(-bound, bound)
        (grad,) = torch.autograd.grad(logits.sum(), xc)
    if with_log_ratio:
        return grad.to(x.dtype), logits.detach()
    return grad.to(x.dtype)


class GuidedDenoiser:
    """D'(x; sigma) = D(x; sigma) + weight * sigma^2 * grad_x log(d / (1 - d)) for sigma in the window.

    Has the denoiser signature ``(x, sigma, class_labels)``; pass it as ``denoise_euler`` to
    :func:`aot_diffusion.sampling.edm_sampler` to correct the Euler evaluations only, as DG does.
    DG's weights: 2 unconditional, 1 conditional. ``sigma_window=None`` guides at every sigma.
    Labels reach the discriminator only when it is conditional (``disc.label_dim > 0``).
    ``num_grad_evals`` counts batched discriminator gradient evaluations (report next to the NFE);
    ``num_calls`` counts all calls. ``reset()`` zeroes both.
    """

    def __init__(self, denoise, disc: nn.Module, weight: float, sigma_window=DG_SIGMA_WINDOW,
                 prob_clip: Optional[float] = DG_PROB_CLIP, compute_dtype: torch.dtype = torch.float32):
        lo, hi = sigma_window if sigma_window is not None else (0.0, math.inf)
        if not (0 <= lo <= hi):
            raise ValueError(f"sigma_window must satisfy 0 <= lo <= hi, got {sigma_window!r}")
        if disc is None:
            raise ValueError("GuidedDenoiser needs a discriminator (use the plain denoiser for no guidance)")
        self.denoise, self.disc, self.weight = denoise, disc.eval(), float(weight)
        self.sigma_window = (float(lo), float(hi))
        self.prob_clip, self.compute_dtype = prob_clip, compute_dtype
        self.conditional = getattr(disc, "label_dim", 0) > 0
        self.reset()

    def reset(self):
        self.num_grad_evals = 0
        self.num_calls = 0

    def active(self, sigma) -> bool:
        """Inside the window (a batch of per-sample sigmas, as DG decides: by the smallest)."""
        s = float(torch.as_tensor(sigma).min())
        return self.weight != 0 and self.sigma_window[0] <= s <= self.sigma_window[1]

    def correction(self, x, sigma, class_labels=None, dtype=None):
        """(w sigma^2 grad_x log(d / (1 - d)) in ``dtype`` (default x's), log ratio per sample); outside the
        window (0, INACTIVE_LOG_RATIO)."""
        dtype = dtype or x.dtype
        if not self.active(sigma):
            return torch.zeros_like(x, dtype=dtype), torch.full((x.shape[0],), INACTIVE_LOG_RATIO, device=x.device)
        labels = class_labels if self.conditional else None
        grad, log_ratio = log_ratio_grad(self.disc, x, sigma, labels, prob_clip=self.prob_clip,
                                         compute_dtype=self.compute_dtype, with_log_ratio=True)
        self.num_grad_evals += 1
        s2 = sigma_vector(sigma, x.shape[0], x.device).to(dtype) ** 2
        return self.weight * s2.reshape(-1, *[1] * (x.ndim - 1)) * grad.to(dtype), log_ratio

    def __call__(self, x, sigma, class_labels=None):
        self.num_calls += 1
        denoised = self.denoise(x, sigma, class_labels)
        if not self.active(sigma):
            return denoised
        term, _ = self.correction(x, sigma, class_labels, dtype=denoised.dtype)  # in the denoiser's precision
        return denoised + term
