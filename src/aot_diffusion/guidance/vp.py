"""EDM noise level sigma <-> VP diffusion time, and the noise-level draws of DG and ADM.

DG's classifier and discriminator live in the VP parameterisation (linear beta from 0.1 to 20):
x_tau = alpha(tau) x_0 + sqrt(1 - alpha(tau)^2) n with alpha(tau) = exp(-B(tau) / 2),
B(tau) = int_0^tau beta. The EDM (VE) input x_0 + sigma n has the same signal-to-noise ratio
when sigma^2 = exp(B(tau)) - 1, and then alpha(tau) = 1 / sqrt(1 + sigma^2): the VP input is
the VE input times alpha. ADM embeds the time as tau * 999.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..loss import sample_sigma

VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0
VP_TIME_MIN = 1e-5  # DG's t_min for its time draws
ADM_TIME_SCALE = 999.0  # DG's EncoderUNetModel multiplies tau by 999 before the embedding


def _vp_integral(t):
    """B(t) = int_0^t beta(s) ds of the linear VP schedule; sigma(t)^2 = exp(B(t)) - 1."""
    return 0.5 * t ** 2 * (VP_BETA_MAX - VP_BETA_MIN) + t * VP_BETA_MIN


def sigma_to_vp_time(sigma):
    """VP time tau in [0, 1] with the same signal-to-noise ratio as the VE noise level sigma."""
    sigma = sigma if isinstance(sigma, torch.Tensor) else torch.as_tensor(sigma, dtype=torch.float64)
    db = VP_BETA_MAX - VP_BETA_MIN
    return (torch.sqrt(VP_BETA_MIN ** 2 + 2 * db * torch.log1p(sigma ** 2)) - VP_BETA_MIN) / db


def vp_time_to_sigma(t):
    """Inverse of :func:`sigma_to_vp_time`: a float for a number, a tensor for a tensor."""
    if isinstance(t, torch.Tensor):
        return torch.expm1(_vp_integral(t)).sqrt()
    return math.sqrt(math.expm1(_vp_integral(float(t))))


def vp_input(x: torch.Tensor, sigma: torch.Tensor):
    """(alpha * x, tau * 999): the VE input x at noise level sigma [N] as an ADM model sees it."""
    sigma64 = sigma.to(torch.float64)
    alpha = (1 + sigma64 ** 2).rsqrt().to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    return x * alpha, (sigma_to_vp_time(sigma64) * ADM_TIME_SCALE).float()


# DG applies guidance for VP times in [0.01, 1.0] (generate.py --time_min/--time_max), i.e.
# sigma in [~0.0447, ~152]: every step of EDM's default [0.002, 80] schedule but the last few.
DG_SIGMA_WINDOW = (vp_time_to_sigma(0.01), vp_time_to_sigma(1.0))

# Bands in which held-out discriminator accuracy is reported.
SIGMA_BANDS = {"<0.1": (0.0, 0.1), "0.1-1": (0.1, 1.0), "1-10": (1.0, 10.0), ">10": (10.0, math.inf)}


def wilson_lower(accuracy: float, n: int, z: float = 1.96) -> float:
    """Lower end of the Wilson score interval of a binomial proportion (95 % at z = 1.96)."""
    if n <= 0:
        return 0.0
    centre = accuracy + z * z / (2 * n)
    spread = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def window_from_validation(bands: dict) -> dict:
    """The guidance window by a rule fixed before any result was seen: from DG's lower end (VP time 0.01) up to
    the top of the highest sigma band, counted from the lowest, in which the discriminator's accuracy on the
    *validation* split is above chance by its own 95 % Wilson interval (the bands of :data:`SIGMA_BANDS`; an
    unbounded top band ends at DG's upper end). Above it the discriminator can't tell real from fake, so its
    gradient is noise. No band above chance: no window (no guidance). Returns ``window`` ([low, high] or None)
    and each band's accuracy, n and lower bound."""
    lows = {name: wilson_lower(b["accuracy"], b["n"]) if b["n"] else 0.0 for name, b in bands.items()}
    top = None
    for name, (lo, hi) in SIGMA_BANDS.items():
        if name not in bands or not lows[name] > 0.5:
            break
        top = min(hi, DG_SIGMA_WINDOW[1])
    window = None if top is None or top <= DG_SIGMA_WINDOW[0] else [float(DG_SIGMA_WINDOW[0]), float(top)]
    return dict(window=window, rule="top: highest band from the lowest with validation accuracy above 0.5 by its "
                                    "95% Wilson interval",
                bands={name: dict(accuracy=bands[name]["accuracy"], n=bands[name]["n"], lower=lows[name])
                       for name in bands})

SIGMA_DISTRIBUTIONS = ("dg", "vp_uniform", "lognormal")


def draw_sigma(n: int, *, distribution: str = "dg", P_mean: float = -1.2, P_std: float = 1.2,
               generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Per-sample noise levels sigma [n] (float32) for classifier / discriminator training.

    ``"dg"`` (default): DG's importance-sampled VP time on [1e-5, 1] (vpsde.get_diffusion_time), which
    makes ln sigma^2 = ln(exp(B(tau)) - 1) uniform, i.e. ln sigma uniform on [ln 0.0010, ln 152].
    ``"vp_uniform"``: tau uniform on [1e-5, 1], ADM's uniform timestep sampler for its classifier.
    ``"lognormal"``: EDM's ln sigma ~ N(P_mean, P_std^2), the diffusion model's own training draw.
    """
    if distribution == "dg":
        lo, hi = math.log(vp_time_to_sigma(VP_TIME_MIN)), math.log(vp_time_to_sigma(1.0))
        u = torch.rand([n], generator=generator, device=device)
        return (lo + (hi - lo) * u).exp()
    if distribution == "vp_uniform":
        tau = VP_TIME_MIN + (1 - VP_TIME_MIN) * torch.rand([n], generator=generator, device=device, dtype=torch.float64)
        return vp_time_to_sigma(tau).float()
    if distribution == "lognormal":
        return sample_sigma(n, P_mean, P_std, generator=generator, device=device).reshape(n)
    raise ValueError(f"sigma distribution must be one of {SIGMA_DISTRIBUTIONS}, got {distribution!r}")
