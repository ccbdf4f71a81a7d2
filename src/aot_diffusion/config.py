"""params.yaml + profile overlay -> validated parameters. Errors name the offending parameter."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["load_params", "ParamError", "PROFILES", "profile_overlay_path"]

PROFILES = ("digits", "smoke", "cifar10")
ROOT = Path.cwd()


class ParamError(ValueError):
    """A missing, malformed or out-of-range parameter."""


def profile_overlay_path(profile: str, root: Path | None = None) -> Path:
    return (root or Path.cwd()) / "config" / "profiles" / f"{profile}.yaml"


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _get(p: dict, dotted: str):
    node: Any = p
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ParamError(f"missing parameter {dotted!r} (params.yaml or the profile overlay)")
        node = node[part]
    return node


def _int_list(p, name, minimum):
    v = _get(p, name)
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        raise ParamError(f"parameter {name!r} must be a non-empty list of integers, got {v!r}")
    if min(v) < minimum:
        raise ParamError(f"parameter {name!r}: every value must be >= {minimum}, got {v!r}")
    return v


def _pos_int(p, name, minimum=1):
    v = _get(p, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ParamError(f"parameter {name!r} must be an integer >= {minimum}, got {v!r}")
    return v


def _pos_num(p, name):
    v = _get(p, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ParamError(f"parameter {name!r} must be a positive number, got {v!r}")
    return v


def validate(p: dict) -> dict:
    if p.get("profile") not in PROFILES:
        raise ParamError(f"parameter 'profile': unknown profile {p.get('profile')!r}; choose from {list(PROFILES)}")
    if _get(p, "data.dataset") not in ("digits", "cifar10"):
        raise ParamError(f"parameter 'data.dataset' must be 'digits' or 'cifar10', got {p['data']['dataset']!r}")
    frac = _get(p, "data.test_fraction")
    if not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise ParamError(f"parameter 'data.test_fraction' must be in (0, 1), got {frac!r}")
    models = _get(p, "models")
    if not isinstance(models, Mapping) or not models:
        raise ParamError("parameter 'models' must map model names to {aot, conditional}")
    for name, m in models.items():
        if not isinstance(m, Mapping) or set(m) != {"aot", "conditional"}:
            raise ParamError(f"parameter 'models.{name}' must have exactly the keys aot and conditional")
    _get(p, "train.network")
    batch = _pos_int(p, "train.batch_size")
    nproc = _pos_int(p, "train.nproc_per_node")
    per_rank = batch // nproc
    bpr = _get(p, "train.batch_per_rank") or per_rank
    for key in ("train.pool_size", "train.pool_size_cond"):
        pool = _pos_int(p, key)
        if pool < bpr:
            raise ParamError(f"parameter {key!r}: pool ({pool}) is smaller than the per-rank batch ({bpr})")
        if pool % bpr:
            raise ParamError(f"parameter {key!r}: pool ({pool}) is not divisible by the per-rank batch ({bpr})")
    if _get(p, "train.solver") not in ("scipy", "pot"):
        raise ParamError(f"parameter 'train.solver' must be 'scipy' or 'pot', got {p['train']['solver']!r}")
    _pos_int(p, "train.total_steps")
    _pos_num(p, "train.lr")
    _pos_int(p, "classifier.steps")
    _int_list(p, "sample.steps", 2)
    _int_list(p, "sample.grid_steps", 2)
    _int_list(p, "curvature.coarse_steps", 2)
    rho = _get(p, "sample.rho")
    if not isinstance(rho, list) or not rho or not all(isinstance(r, (int, float)) and r > 0 for r in rho):
        raise ParamError(f"parameter 'sample.rho' must be a non-empty list of positive numbers, got {rho!r}")
    _pos_int(p, "sample.num_samples", 2)
    seeds = _get(p, "sample.seeds")
    if not isinstance(seeds, list) or not seeds:
        raise ParamError(f"parameter 'sample.seeds' must be a non-empty list, got {seeds!r}")
    _pos_int(p, "sample.batch_size")
    _pos_int(p, "curvature.fine_steps", 8)
    _pos_int(p, "curvature.num_latents")
    _pos_int(p, "curvature.sigma_grid", 2)
    _pos_int(p, "threads")
    _int_list(p, "guidance.steps_list", 2)
    _pos_int(p, "guidance.num_fake", 2)
    _pos_int(p, "guidance.steps")
    gb = _pos_int(p, "guidance.batch_size", 2)
    if gb % 2:
        raise ParamError(f"parameter 'guidance.batch_size' must be even (half real, half fake), got {gb}")
    discs = _get(p, "guidance.discriminators")
    if not isinstance(discs, Mapping) or not discs:
        raise ParamError("parameter 'guidance.discriminators' must map names to {model, aot}")
    for name, spec in discs.items():
        if not isinstance(spec, Mapping) or spec.get("model") not in models:
            raise ParamError(f"parameter 'guidance.discriminators.{name}.model' must name one of {sorted(models)}")
    if not set(_get(p, "guidance.steps_list")) <= set(_get(p, "sample.steps")) or \
            not set(_get(p, "guidance.rho")) <= set(_get(p, "sample.rho")):
        raise ParamError("parameters 'guidance.steps_list' and 'guidance.rho' must be subsets of 'sample.steps' "
                         "and 'sample.rho' (Table 2 compares guided and unguided runs at the same settings)")
    if not set(_get(p, "sample.grid_steps")) <= set(_get(p, "sample.steps")):
        raise ParamError("parameter 'sample.grid_steps' must be a subset of 'sample.steps'")
    smin, smax = _pos_num(p, "sample.sigma_min"), _pos_num(p, "sample.sigma_max")
    if smin >= smax:
        raise ParamError(f"parameter 'sample.sigma_min' ({smin}) must be below 'sample.sigma_max' ({smax})")
    return p


def load_params(path="params.yaml", profile: str | None = None, overrides: Mapping | None = None) -> dict:
    """Read params.yaml, apply the profile's overlay (config/profiles/<profile>.yaml) and validate."""
    path = Path(path)
    if not path.exists():
        raise ParamError(f"parameter file {path} not found")
    try:
        base = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamError(f"parameter file {path} is not valid YAML: {exc}") from None
    if not isinstance(base, dict):
        raise ParamError(f"parameter file {path} must hold a mapping")
    if profile is not None:
        base["profile"] = profile
    prof = base.get("profile", "digits")
    if prof not in PROFILES:
        raise ParamError(f"parameter 'profile': unknown profile {prof!r}; choose from {list(PROFILES)}")
    overlay = profile_overlay_path(prof, path.resolve().parent)
    params = base
    if prof != "digits":
        if not overlay.exists():
            raise ParamError(f"profile {prof!r} needs its overlay file {overlay}")
        params = _merge(base, yaml.safe_load(overlay.read_text()) or {})
    if overrides:
        params = _merge(params, overrides)
    return validate(params)
