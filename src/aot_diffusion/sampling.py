"""EDM's deterministic samplers as plain functions over a denoiser callable (k-diffusion style).

The PF-ODE dx/dsigma = (x - D(x; sigma)) / sigma is integrated over the EDM time steps
t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i < N, and t_N = 0.
Heun takes a second-order correction on every step but the last (NFE = 2N - 1); Euler
takes none (NFE = N). EDM's stochastic churn (S_churn, ...) is supported and off by default.
:func:`boosted_sampler` is DG's guided sampler with its boosting (``--boosting=1``).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

__all__ = ["sigma_steps", "num_function_evals", "edm_sampler", "boosted_sampler", "Denoiser", "latents", "class_labels",
           "sample_batched", "switch_denoiser", "switch_sweep"]

Denoiser = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
ODE_SOLVERS = ("heun", "euler")


def _check_schedule(num_steps, rho, sigma_min, sigma_max):
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")


def sigma_steps(num_steps: int, rho: float = 7.0, sigma_min: float = 0.002, sigma_max: float = 80.0,
                dtype=torch.float64, device=None) -> torch.Tensor:
    """The N + 1 noise levels t_0 = sigma_max > ... > t_{N-1} = sigma_min > t_N = 0."""
    _check_schedule(num_steps, rho, sigma_min, sigma_max)
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])]).to(dtype)


def num_function_evals(num_steps: int, solver: str = "heun") -> int:
    """Denoiser evaluations of one sampler run: 2N - 1 for Heun, N for Euler."""
    if solver not in ODE_SOLVERS:
        raise ValueError(f"solver must be one of {ODE_SOLVERS}, got {solver!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    return 2 * num_steps - 1 if solver == "heun" else num_steps


def edm_sampler(denoise: Denoiser, latents: torch.Tensor, *, num_steps: int, rho: float = 7.0,
                sigma_min: float = 0.002, sigma_max: float = 80.0, solver: str = "heun",
                class_labels: Optional[torch.Tensor] = None, S_churn: float = 0.0, S_min: float = 0.0,
                S_max: float = float("inf"), S_noise: float = 1.0, generator: Optional[torch.Generator] = None,
                denoise_euler: Optional[Denoiser] = None, callback: Optional[Callable[[dict], None]] = None,
                return_trajectory: bool = False):
    """Solve the PF-ODE from unit-variance ``latents`` (scaled by sigma_max) to sigma = 0.

    ``denoise(x, sigma, class_labels)`` returns D(x; sigma); ``sigma`` is a 0-dim tensor.
    ``denoise_euler``, if given, replaces ``denoise`` at the first (Euler) evaluation of each step
    (Discriminator Guidance corrects only that one). Computation runs in float64, as in EDM, and the
    result has the latents' dtype. ``callback`` receives a dict at every evaluation.
    With ``return_trajectory`` it returns ``(samples, trajectory)``, where trajectory holds
    ``sigma`` [E], ``x`` [E, ...] and ``denoised`` [E, ...] of all E evaluations, and ``t_steps``.
    """
    if solver not in ODE_SOLVERS:
        raise ValueError(f"solver must be one of {ODE_SOLVERS}, got {solver!r}")
    if not isinstance(latents, torch.Tensor) or latents.ndim < 2 or not latents.is_floating_point():
        raise ValueError("latents must be a floating-point tensor of shape [N, ...]")
    if class_labels is not None and class_labels.shape[0] != latents.shape[0]:
        raise ValueError(f"class_labels has {class_labels.shape[0]} rows but latents has {latents.shape[0]}")
    t_steps = sigma_steps(num_steps, rho, sigma_min, sigma_max, dtype=torch.float64, device=latents.device)
    denoise_euler = denoise_euler or denoise
    trajectory = {"sigma": [], "x": [], "denoised": []}

    def evaluate(fn, x, t, i, stage):
        denoised = fn(x, t, class_labels).to(torch.float64)
        if denoised.shape != x.shape:
            raise ValueError(f"denoiser returned shape {list(denoised.shape)} for input {list(x.shape)}")
        if return_trajectory:
            trajectory["sigma"].append(t)
            trajectory["x"].append(x)
            trajectory["denoised"].append(denoised)
        if callback is not None:
            callback(dict(i=i, stage=stage, sigma=t, x=x, denoised=denoised))
        return denoised

    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        # Optional EDM churn: raise the noise level a little before the step.
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_churn > 0 and S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur
        if gamma > 0:
            noise = torch.randn(x_cur.shape, generator=generator, dtype=x_cur.dtype, device=x_cur.device)
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * noise

        d_cur = (x_hat - evaluate(denoise_euler, x_hat, t_hat, i, "euler")) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if solver == "heun" and i < num_steps - 1:
            d_prime = (x_next - evaluate(denoise, x_next, t_next, i, "heun")) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

    samples = x_next.to(latents.dtype)
    if not return_trajectory:
        return samples
    return samples, {
        "sigma": torch.stack(trajectory["sigma"]),
        "x": torch.stack(trajectory["x"]),
        "denoised": torch.stack(trajectory["denoised"]),
        "t_steps": t_steps,
    }


# DG's boosting (generate.py): every BOOST_PERIOD steps, samples the discriminator last called fake (log ratio < 0)
# get EDM's churn at S_churn 4; every BOOST_WEIGHT_PERIOD steps their guidance is doubled.
BOOST_PERIOD, BOOST_WEIGHT_PERIOD, BOOST_S_CHURN, BOOST_S_NOISE = 5, 2, 4.0, 1.0


def boosted_sampler(denoise: Callable, latents: torch.Tensor, *, num_steps: int, rho: float = 7.0,
                    sigma_min: float = 0.002, sigma_max: float = 80.0, class_labels=None,
                    denoise_euler, generator: Optional[torch.Generator] = None,
                    period: int = BOOST_PERIOD, weight_period: int = BOOST_WEIGHT_PERIOD,
                    S_churn: float = BOOST_S_CHURN, S_noise: float = BOOST_S_NOISE) -> torch.Tensor:
    """DG's guided Heun sampler with boosting, over the plain ``denoise`` and the guidance of ``denoise_euler`` (a
    guidance.GuidedDenoiser: its ``correction(x, sigma, labels)`` gives the term and the log ratio per sample).

    The sampler keeps each sample's last log ratio (+inf at the start). At step i with i % ``period`` == 0 the
    samples whose log ratio < 0 get EDM's churn, gamma = min(S_churn / num_steps, sqrt(2) - 1): sigma_hat =
    (1 + gamma) t_i and x_hat = x + sqrt(sigma_hat^2 - t_i^2) S_noise n (per sample; the others gamma 0); the
    Euler slope is (x_hat - D(x_hat; sigma_hat) - c) / sigma_hat with the guidance term c = w sigma_hat^2 grad
    log(d / (1 - d)), doubled at i % ``weight_period`` == 0 where the new log ratio < 0; the Heun correction is
    unguided (DG's dg_weight_2nd_order 0). Churn noise comes from ``generator`` (CPU), drawn at every step as
    DG draws it. Computation in float64; returns the latents' dtype.
    """
    guided = denoise_euler
    if not hasattr(guided, "correction"):
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


def switch_denoiser(high: Denoiser, low: Denoiser, sigma_switch: float) -> Denoiser:
    """A hybrid: ``high`` evaluates where sigma > ``sigma_switch``, ``low`` at and below it (per evaluation,
    so a Heun step's correction uses the denoiser of its own sigma)."""

    def denoise(x, sigma, labels):
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        return (high if s > sigma_switch else low)(x, sigma, labels)

    return denoise


def switch_sweep(high: Denoiser, low: Denoiser, latents: torch.Tensor, *, switches, num_steps: int, rho: float = 7.0,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, class_labels=None) -> dict:
    """``{s: edm_sampler(switch_denoiser(high, low, s), latents, ...)}`` for every switch sigma s (deterministic
    Heun), computed once along the steps that all switches share. A Heun step evaluates D at t_i and, but for
    the last step, at t_{i+1}; while both are above s it evaluates only ``high``, so every switch's run is the
    ``high`` run up to its first step that evaluates ``low``. The steps are the same float64 arithmetic as
    :func:`edm_sampler`'s, so each result equals the separate run's to the bit (tests/test_core.py)."""
    t_steps = sigma_steps(num_steps, rho, sigma_min, sigma_max, dtype=torch.float64, device=latents.device)
    last = num_steps - 1

    def first_low_step(s):
        return next((i for i in range(num_steps)
                     if not t_steps[i] > s or (i < last and not t_steps[i + 1] > s)), num_steps)

    branch = {s: first_low_step(float(s)) for s in switches}
    stop = max(branch.values())  # <= num_steps
    shared, x = {}, latents.to(torch.float64) * t_steps[0]
    for i in range(stop + 1):
        shared[i] = x
        if i < stop:
            x = _heun_step(high, x, t_steps, i, class_labels)
    out = {}
    for s, start in branch.items():
        denoise, x = switch_denoiser(high, low, float(s)), shared[start]
        for i in range(start, num_steps):
            x = _heun_step(denoise, x, t_steps, i, class_labels)
        out[s] = x.to(latents.dtype)
    return out


def _heun_step(denoise: Denoiser, x_cur: torch.Tensor, t_steps: torch.Tensor, i: int, labels) -> torch.Tensor:
    """Step i of :func:`edm_sampler` without churn (its arithmetic, operation for operation)."""
    t_cur, t_next = t_steps[i], t_steps[i + 1]
    t_hat = t_cur + 0.0 * t_cur
    d_cur = (x_cur - denoise(x_cur, t_hat, labels).to(torch.float64)) / t_hat
    x_next = x_cur + (t_next - t_hat) * d_cur
    if i < len(t_steps) - 2:
        d_prime = (x_next - denoise(x_next, t_next, labels).to(torch.float64)) / t_next
        x_next = x_cur + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


# ---------------------------------------------------------------------------------------------- sweeps

def latents(seed: int, n: int, shape, device="cpu") -> torch.Tensor:
    """n unit-Gaussian latents [n, *shape] (float64) drawn on the CPU from ``seed``: the same on every
    device, so two models sampled from one seed are paired image for image."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn([n, *shape], generator=g, dtype=torch.float64).to(device)


def class_labels(label_dim: int, n: int, device="cpu") -> Optional[torch.Tensor]:
    """One-hot labels cycling through the classes (image i has class i mod label_dim); None if unconditional."""
    if not label_dim:
        return None
    return torch.eye(label_dim, dtype=torch.float64, device=device)[torch.arange(n, device=device) % label_dim]


def sample_batched(denoise: Denoiser, z: torch.Tensor, labels: Optional[torch.Tensor], batch_size: int,
                   progress: Optional[Callable[[int], None]] = None, sampler: Callable = edm_sampler,
                   **sampler_kwargs) -> torch.Tensor:
    """``sampler`` (default :func:`edm_sampler`) over ``z`` in batches of ``batch_size``; float32 samples on the
    latents' device."""
    chunks = []
    for i in range(0, len(z), batch_size):
        lab = labels[i:i + batch_size] if labels is not None else None
        chunks.append(sampler(denoise, z[i:i + batch_size], class_labels=lab, **sampler_kwargs).float())
        if progress is not None:
            progress(min(i + batch_size, len(z)))
    return torch.cat(chunks)
