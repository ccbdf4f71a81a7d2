"""Guided sampling: the denoiser corrected by the discriminator's log density ratio,

    D'(x; sigma) = D(x; sigma) + w * sigma^2 * grad_x log(d / (1 - d)),

at the Euler evaluation of each Heun step, inside a sigma window (DG: VP time [0.01, 1]). DG clips
d to [1e-5, 1 - 1e-5] first, so the correction vanishes where the discriminator is that sure.
(DG writes the same term as d_cur -= w * dg_score / sigma, dg_score = -sigma^2 grad log(d / (1 - d)).)

:func:`boosted_sampler` is DG's sampler with its boosting (``--boosting=1``, DG's conditional CIFAR-10 command).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from ._inputs import sigma_vector
from .vp import DG_SIGMA_WINDOW

DG_PROB_CLIP = 1e-5  # classifier_lib.get_log_ratio: d = clip(d, 1e-5, 1 - 1e-5)


# DG's boosting (generate.py): every BOOST_PERIOD steps, samples the discriminator last called fake (log ratio < 0)
# get EDM's churn at S_churn 4; every BOOST_WEIGHT_PERIOD steps their guidance is doubled.
BOOST_PERIOD, BOOST_WEIGHT_PERIOD, BOOST_S_CHURN, BOOST_S_NOISE = 5, 2, 4.0, 1.0
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


def boosted_sampler(denoise: Callable, latents: torch.Tensor, *, num_steps: int, rho: float = 7.0,
                    sigma_min: float = 0.002, sigma_max: float = 80.0, class_labels=None,
                    denoise_euler: GuidedDenoiser, generator: Optional[torch.Generator] = None,
                    period: int = BOOST_PERIOD, weight_period: int = BOOST_WEIGHT_PERIOD,
                    S_churn: float = BOOST_S_CHURN, S_noise: float = BOOST_S_NOISE) -> torch.Tensor:
    """DG's guided Heun sampler with boosting, over the plain ``denoise`` and the guidance of ``denoise_euler``.

    The sampler keeps each sample's last log ratio (+inf at the start). At step i with i % ``period`` == 0 the
    samples whose log ratio < 0 get EDM's churn, gamma = min(S_churn / num_steps, sqrt(2) - 1): sigma_hat =
    (1 + gamma) t_i and x_hat = x + sqrt(sigma_hat^2 - t_i^2) S_noise n (per sample; the others gamma 0); the
    Euler slope is (x_hat - D(x_hat; sigma_hat) - c) / sigma_hat with the guidance term c = w sigma_hat^2 grad
    log(d / (1 - d)), doubled at i % ``weight_period`` == 0 where the new log ratio < 0; the Heun correction is
    unguided (DG's dg_weight_2nd_order 0). Churn noise comes from ``generator`` (CPU), drawn at every step as
    DG draws it. Computation in float64; returns the latents' dtype.
    """
    from ..sampling import sigma_steps

    guided = denoise_euler
    if not isinstance(guided, GuidedDenoiser):
        raise ValueError("boosted_sampler needs the guidance as a GuidedDenoiser (denoise_euler)")
    t_steps = sigma_steps(num_steps, rho, sigma_min, sigma_max, dtype=torch.float64, device=latents.device)
    n, view = latents.shape[0], (-1, *[1] * (latents.ndim - 1))
    boost_gamma = min(S_churn / num_steps, math.sqrt(2) - 1)
    log_ratio = torch.full((n,), math.inf, dtype=torch.float64, device=latents.device)
    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        boost = (log_ratio < 0) if i % period == 0 else torch.zeros(n, dtype=torch.bool, device=latents.device)
        t_hat = t_cur * (1 + boost.to(torch.float64) * boost_gamma)  # [n]
        noise = torch.randn(x_cur.shape, generator=generator, dtype=torch.float64).to(x_cur.device)
        x_hat = x_cur + ((t_hat ** 2 - t_cur ** 2).sqrt() * S_noise).reshape(view) * noise
        denoised = guided.denoise(x_hat, t_hat, class_labels).to(torch.float64)
        guided.num_calls += 1
        term, new_ratio = guided.correction(x_hat, t_hat, class_labels)
        log_ratio = new_ratio.to(torch.float64)
        if i % weight_period == 0:
            term = torch.where((log_ratio < 0).reshape(view), 2 * term, term)
        d_cur = (x_hat - denoised - term.to(torch.float64)) / t_hat.reshape(view)
        x_next = x_hat + (t_next - t_hat).reshape(view) * d_cur
        if i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next, class_labels).to(torch.float64)) / t_next
            x_next = x_hat + (t_next - t_hat).reshape(view) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(latents.dtype)
