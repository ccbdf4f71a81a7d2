"""What a parameter set costs before it is submitted: jobs and GPU-hours per kind of stage (`aot-diffusion plan`).

Counts come from the parameters (training images, sampler runs x NFE x samples, discriminator epochs); rates
are per GPU and stated, not measured here, unless given (``--train-img-per-s``, ``--evals-per-s``; `make
gpu-check` measures both on the device it runs on). The stated rates: a 200 Mimg NCSN++ training run in about
two days on four A100s (the cifar10 profile's resources) is 290 img/s per GPU; a training step costs about three
network evaluations (forward and backward), so sampling runs at about 900 evaluations per second per GPU. A
discriminator step evaluates the frozen classifier and the head once per image; a guided evaluation adds a
gradient through both (counted as two evaluations).
"""

from __future__ import annotations

from typing import Mapping

from .params import guidance_settings, model_instances
from .schema import fake_split

__all__ = ["STATED_RATES", "TRAIN_IMAGES", "estimate", "format_estimate"]

STATED_RATES = {"train_img_per_s": 290.0, "evals_per_s": 900.0, "device": "A100 (stated, not measured)"}
TRAIN_IMAGES = {"cifar10": 50_000, "digits": 898}  # training split sizes (rehearsal: its own 200)


def _nfe(steps: int) -> int:
    return 2 * int(steps) - 1


def estimate(p: Mapping, train_img_per_s: float | None = None, evals_per_s: float | None = None) -> list[dict]:
    """Rows ``{kind, jobs, work, gpu_hours}`` per kind of stage of the default target (training, sampling,
    DG's fakes / discriminators / guided sampling, hybrid samplers, curvature, scoring)."""
    train_rate = train_img_per_s or STATED_RATES["train_img_per_s"]
    eval_rate = evals_per_s or STATED_RATES["evals_per_s"]
    s, g, t = p["sample"], p["guidance"], p["train"]
    n_real = 200 if p["profile"] == "rehearsal" else TRAIN_IMAGES[p["data"]["dataset"]]
    models = model_instances(p)
    rows = []

    def add(kind, jobs, evals, work):
        rows.append(dict(kind=kind, jobs=jobs, work=work, gpu_hours=evals / eval_rate / 3600))

    images = t["total_steps"] * t["batch_size"]
    rows.append(dict(kind="train", jobs=len(models), work=f"{images / 1e6:g} Mimg per model, "
                     f"{t['nproc_per_node']} GPU(s) per job", gpu_hours=len(models) * images / train_rate / 3600))
    sampled = 0
    for key, (model, _) in models.items():
        cond = p["models"][model]["conditional"]
        grid = {(int(st), float(r)) for st in s["steps"] for r in s["rho"]} | set(guidance_settings(p, cond))
        sampled += sum(_nfe(st) for st, _ in grid) * s["num_samples"] * len(s["seeds"])
    add("sample", len(models), sampled, f"{s['num_samples']} samples x {len(s['seeds'])} seeds per setting")
    guided_models = {d["model"] for d in g["discriminators"].values()}
    n_fake = sum(fake_split(g))
    add("fake_samples", len(guided_models), len(guided_models) * n_fake * _nfe(g["fake_steps"]),
        f"{n_fake} fakes per guided model")
    disc_evals, guided_evals = 0, 0
    for d in g["discriminators"].values():
        cond = p["models"][d["model"]]["conditional"]
        if g["protocol"] == "dg":
            epochs = g["epochs_cond"] if cond else g["epochs_uncond"]
            disc_evals += epochs * (n_real + fake_split(g)[0])
        else:
            disc_evals += g["max_steps"] * g["batch_size"]  # at most: early stopping
        guided_evals += sum(_nfe(st) + 2 * st for st, _ in guidance_settings(p, cond)) * s["num_samples"] * len(s["seeds"])
    add("train_discriminator", len(g["discriminators"]), disc_evals,
        f"protocol {g['protocol']}" + (f", epochs {g['epochs_uncond']} / {g['epochs_cond']}" if g["protocol"] == "dg"
                                       else f", at most {g['max_steps']} steps"))
    add("guided_sample", len(g["discriminators"]), guided_evals, "guided evaluations count twice (the gradient)")
    pairs, h = 2, p["hybrid"]
    add("hybrid", 1, pairs * 2 * len(h["switch_sigmas"]) * sum(_nfe(st) for st in h["steps"]) * s["num_samples"],
        "both orders of both pairs at every switch sigma")
    c = p["curvature"]
    add("curvature", len(models), len(models) * c["num_latents"] * (_nfe(c["fine_steps"]) + len(s["rho"]) *
        sum(_nfe(st) for st in c["coarse_steps"])), f"{c['num_latents']} latents, {c['fine_steps']}-step reference")
    sets = 0
    for key, (model, _) in models.items():
        cond = p["models"][model]["conditional"]
        grid = {(int(st), float(r)) for st in s["steps"] for r in s["rho"]} | set(guidance_settings(p, cond))
        sets += len(grid) * len(s["seeds"])
    for d in g["discriminators"].values():
        sets += len(guidance_settings(p, p["models"][d["model"]]["conditional"])) * len(s["seeds"])
    add("fd (features)", len(models) + len(g["discriminators"]), sets * s["num_samples"],
        f"{sets} sample sets through the feature network")
    return rows


def format_estimate(p: Mapping, rows: list[dict], rates: Mapping) -> str:
    total = sum(r["gpu_hours"] for r in rows)
    width = max(len(r["kind"]) for r in rows)
    lines = [f"profile {p['profile']}: {sum(r['jobs'] for r in rows)} jobs of the default target; GPU-hours at "
             f"{rates['train_img_per_s']:g} training img/s and {rates['evals_per_s']:g} network evaluations/s per GPU "
             f"({rates['device']})", ""]
    lines += [f"  {r['kind']:<{width}}  {r['jobs']:>4} jobs  {r['gpu_hours']:>10.1f} GPU-h  {r['work']}" for r in rows]
    lines += ["", f"  {'total':<{width}}  {sum(r['jobs'] for r in rows):>4} jobs  {total:>10.1f} GPU-h "
                  f"({total / 24:.1f} GPU-days)"]
    train = next(r for r in rows if r["kind"] == "train")
    seeds = len(p["train"]["seeds"])
    if seeds > 1:
        lines.append(f"  one training seed (train.seeds: [{p['train']['seeds'][0]}]) saves "
                     f"{train['gpu_hours'] * (seeds - 1) / seeds:.0f} GPU-h of training")
    return "\n".join(lines)

