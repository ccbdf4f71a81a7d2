"""The parameter schema: every key of params.yaml with its type, range or choices, and the cross-field rules.
:func:`validate` checks a composed parameter tree against it (params.py composes and loads; this module judges)."""

from __future__ import annotations

import math
import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .aot import ASSIGNMENT_SOLVERS, PAIRING_OPTIONS, PAIRINGS
from .errors import ParamError

__all__ = ["ParamError", "PROFILES", "NAME_PATTERN", "INSTANCE", "SCHEMA", "MODEL", "DISCRIMINATOR", "VARIANT",
           "NETWORK", "ENCODER", "fake_split", "RESOLUTION", "MAX_POOL", "MAX_SAMPLES", "Spec", "validate",
           "check_plugin_names", "check_pairing_options", "Int", "Num", "Bool", "Str", "List"]

PROFILES = ("digits", "smoke", "cifar10", "rehearsal")  # rehearsal: cifar10 at toy size (conf/profile/rehearsal.yaml)


# Names of models, discriminators and study variants become file names, DVC stage names and command
# arguments: nothing a shell or a path could read as syntax.
# Matched whole (`fullmatch`: `$` would also match before a trailing newline).
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")

# A trained model is one model of `models` trained with one of `train.seeds`: its key is <model>_s<seed>.
INSTANCE = re.compile(r"(?P<model>[a-z][a-z0-9_]*)_s(?P<seed>[0-9]+)")


# ---------------------------------------------------------------------------------------------- schema

@dataclass(frozen=True)
class Spec:
    type: str                       # int | num | bool | str | list | map | any
    lo: float | None = None         # inclusive lower bound (numbers; list items)
    hi: float | None = None         # inclusive upper bound
    choices: tuple | Callable[[], tuple] = ()   # a callable: choices read when a value is checked (registries)
    nullable: bool = False
    item: "Spec | None" = None      # list items / map values
    min_len: int = 0
    gt: bool = False                # lower bound exclusive


def Int(lo=None, hi=None, **kw):
    return Spec("int", lo, hi, **kw)


def Num(lo=None, hi=None, **kw):
    return Spec("num", lo, hi, **kw)


def Bool(**kw):
    return Spec("bool", **kw)


def Str(*choices, **kw):
    return Spec("str", choices=choices, **kw)


def List(item, min_len=1, **kw):
    return Spec("list", item=item, min_len=min_len, **kw)


# Sizes refused before anything is allocated: an exact assignment over a pool of n holds an n x n cost matrix
# (16384: 1 GiB in float32); sample counts beyond a million are typos at any scale this pipeline runs.
MAX_POOL, MAX_SAMPLES = 16384, 1_000_000
RESOLUTION = {"digits": 8, "cifar10": 32}  # the datasets' image sizes: a U-Net halves it once per channel_mult level
CHANNELS = {"digits": 1, "cifar10": 3}

# What one job may hold. Counts and batch sizes have hard caps (MAX_BATCH: a typo guard at any scale), and the
# largest arrays a job keeps, estimated from its parameters before anything runs (memory_estimates), stay under
# MEMORY_BUDGET: an 80 GB GPU, or a 128 GiB host with room for the rest. A network may not have more weights
# than the loaders accept from a file (training.load_network).
MEMORY_BUDGET, MAX_BATCH, MAX_NETWORK_PARAMETERS = 64 * 2**30, 65536, 500_000_000

# A model: unconditional or conditional, with its pairing (aot.PAIRINGS: `none` is EDM, `assignment` AOT, or a
# plugin's) and optionally its own pool (default: train.pool_size / pool_size_cond: images drawn at a time).
_PAIRING = Spec("str", choices=lambda: tuple(PAIRINGS))  # read from the registry when checked: plugins add to it
# `pairing_options`: the options its pairing declares (aot.register_pairing), all of them (check_pairing_options).
_OPTIONS = Spec("any", nullable=True)
MODEL = {"conditional": Bool(), "pairing": _PAIRING, "pool_size": Int(1, MAX_POOL, nullable=True),
         "pairing_options": _OPTIONS}
# A discriminator: the model it guides, and how its training pairs noise with images: `model` (as the model it
# guides was trained: DG for an EDM model, AOT-DG for an AOT one), `none`, or a pairing of the registry.
DISCRIMINATOR = {"model": Str(), "pairing": Spec("str", choices=lambda: ("model", *PAIRINGS)),
                 "pairing_options": _OPTIONS}
VARIANT = {"pairing": _PAIRING, "pool_size": Int(1, MAX_POOL), "pairing_options": _OPTIONS}  # a pool-size study variant: a model of the study
NETWORK = {  # EDM's SongUNet / DhariwalUNet constructor arguments that a profile may set
    "model_type": Str("SongUNet", "DhariwalUNet"), "embedding_type": Str("positional", "fourier"),
    "encoder_type": Str("standard", "skip", "residual"), "decoder_type": Str("standard", "skip"),
    "channel_mult_noise": Int(1, 8), "resample_filter": List(Int(1, 8)), "model_channels": Int(1, 1024),
    "channel_mult": List(Int(1, 16)), "channel_mult_emb": Int(1, 16), "num_blocks": Int(1, 16),
    "attn_resolutions": List(Int(1, 1024), min_len=0), "dropout": Num(0, 1),
}
ENCODER = {  # the noise-aware classifier (ADM encoder) that DG's discriminator reads features from
    "model_channels": Int(1, 512), "channel_mult": List(Int(1, 16)), "num_res_blocks": Int(1, 8),
    "attention_resolutions": List(Int(1, 64), min_len=0), "num_head_channels": Int(1, 256),
}

SETTING = {"steps": Int(2, 1000), "rho": Num(1, 1000)}  # one sampler setting (Heun steps, rho)
# What one job of a resource class of stages asks a cluster for (cluster.py); runtime in minutes per job; resubmits: how
# often a job stopped at its time limit is submitted again (training resumes from its checkpoint).
REQUEST = {"cpus_per_task": Int(1, 1024), "mem_mb": Int(100, 10**7), "runtime": Int(1, 10**6), "gpu": Bool(),
           "resubmits": Int(0, 1000)}

SCHEMA: dict[str, Any] = {
    "profile": Str(*PROFILES),
    "seed": Int(0, 2**31 - 1),
    # the researcher's own pairings and metrics: names of files plugins/<family>/<name>.py (plugins.py)
    "plugins": {"pairings": List(Str(), min_len=0), "metrics": List(Str(), min_len=0)},
    "device": Str("auto", "cpu", "cuda"),
    "threads": Int(1, 256),
    "tf32": Bool(),
    "data": {
        "dataset": Str("digits", "cifar10"),
        "test_fraction": Num(0, 0.9, gt=True),  # both splits keep images
        "cifar10_tarball": Str(),
        "cifar10_md5": Str(),
        "cifar10_download": Bool(),
    },
    "models": Spec("map", item=Spec("model")),
    "train": {
        "network": NETWORK,
        "batch_size": Int(1, MAX_BATCH), "batch_per_rank": Int(1, MAX_BATCH, nullable=True),
        "pool_size": Int(1, MAX_POOL), "pool_size_cond": Int(1, MAX_POOL),
        "knn_k": Int(2, 64),
        "solver": Str(*ASSIGNMENT_SOLVERS),
        "total_steps": Int(1), "lr": Num(0, 10, gt=True), "lr_rampup_kimg": Num(0),
        "ema_halflife_kimg": Num(0, gt=True), "ema_rampup_ratio": Num(0, 10, gt=True, nullable=True),
        "P_mean": Num(-10, 10), "P_std": Num(0, 10, gt=True), "augment_p": Num(0, 1),
        "prefetch": Bool(), "log_every": Int(1), "checkpoint_every": Int(1),
        "nproc_per_node": Int(1, 64), "max_nonfinite_steps": Int(1, 1000), "seeds": List(Int(0, 2**31 - 1)),
    },
    "classifier": {"steps": Int(1), "batch_size": Int(1, MAX_BATCH), "lr": Num(0, 10, gt=True), "feature_dim": Int(2, 4096)},
    "sample": {
        "steps": List(Int(2, 1000)), "rho": List(Num(1, 1000)),
        "num_samples": Int(2, MAX_SAMPLES), "seeds": List(Int(0, 2**31 - 1)), "batch_size": Int(1, MAX_BATCH),
        # float32 sampling: below 1e-4 the last steps' sigma^2 terms underflow (sigma_min 1e-40 gave NaN)
        "sigma_min": Num(1e-4, 10), "sigma_max": Num(0, 1e4, gt=True), "grid_steps": List(Int(2, 1000)),
    },
    "fd": {
        "bootstrap": Int(20, 100000), "ci_level": Num(0.5, 0.999), "kid_subsets": Int(1, 1000), "feature_batch": Int(1, MAX_BATCH),
        "allow_download": Bool(),
        "features": Str("classifier", "inception"),
        "headline": Str("heldout", "train"), "interval": Str("two_sample", "one_sample"),
    },
    "curvature": {
        "fine_steps": Int(8, 100000), "num_latents": Int(1, MAX_SAMPLES), "sigma_grid": Int(2, 100000), "rho": Num(1, 1000),
        "coarse_steps": List(Int(2, 1000)), "seed_offset": Int(0),
    },
    "released_pickle": Str(nullable=True),
    "calibration": {"tolerance": Num(0, 100, gt=True), "networks": Spec("map", item=Spec("released_network"))},
    "guidance": {
        "num_fake": Int(2, MAX_SAMPLES), "fake_steps": Int(2, 1000), "fake_rho": Num(1, 1000), "fake_seed_offset": Int(0),
        "heldout_fraction": Num(0, 0.9, gt=True),
        "protocol": Str("early_stop", "dg"), "epochs_uncond": Int(1, 100000), "epochs_cond": Int(1, 100000),
        "encoder": ENCODER,
        "encoder_steps": Int(1), "encoder_batch_size": Int(1, MAX_BATCH), "encoder_lr": Num(0, 10, gt=True),
        "adm_classifier": Str(nullable=True),
        "head_channels": Int(1, 1024), "head_depth": Int(1, 8),
        "pool_size": Int(1, MAX_POOL), "batch_size": Int(2, MAX_BATCH), "max_steps": Int(1), "eval_every": Int(1), "patience": Int(1, 1000),
        "lr": Num(0, 10, gt=True),
        "weight_decay": Num(0, 1), "weight_uncond": Num(0, 100), "weight_cond": Num(0, 100),
        "boosting_uncond": Bool(), "boosting_cond": Bool(),
        "sigma_window": Spec("any", nullable=True),  # null | [low, high] | "validation" (checked below)
        "sample_steps": List(Int(2, 1000)), "rho": List(Num(1, 1000)),
        "paper_setting_uncond": SETTING, "paper_setting_cond": SETTING,
        "discriminators": Spec("map", item=Spec("discriminator")),
    },
    "pool_study": {"rho": Num(1, 1000), "variants": Spec("map", item=Spec("variant"))},
    "resources": {name: REQUEST for name in ("light", "network", "train")},
    "hybrid": {"switch_sigmas": List(Num(0, 1e4, gt=True)), "steps": List(Int(2, 1000)), "rho": Num(1, 1000)},
}

# calibration.networks: a released pickle, and how it was trained (decides the paper's setting it is sampled at)
RELEASED_NETWORK = {"pickle": Str(nullable=True), "pairing": Str("none", "assignment"), "conditional": Bool()}
_RECORDS = {"model": MODEL, "discriminator": DISCRIMINATOR, "variant": VARIANT, "released_network": RELEASED_NETWORK}


def unet_estimates(net: Mapping, res: int) -> tuple[int, int, int]:
    """(weights, activation values kept for the backward pass per image, skip values kept while sampling per
    image) of a U-Net with these constructor arguments at ``res`` x ``res``. Level l has width w = model_channels
    x channel_mult[l] at r = res / 2^l, num_blocks encoder and num_blocks + 1 decoder blocks and a down- or
    upsampling block: 2 num_blocks + 3 blocks of two 3x3 convolutions (about 27 w^2 weights with the decoder's
    concatenated skip) and about 6 activations of w r^2 values each; where it attends, an (r^2)^2 map per head
    and 4 w r^2 more (qkv, projection); the encoder's num_blocks + 1 outputs per level wait for the decoder. Upper bounds, at most 1.3x
    (weights) and 1.4x (activations) the counts of the built networks (tests/test_params.py builds them on the
    meta device)."""
    mc, nb = net.get("model_channels", 128), net.get("num_blocks", 4)
    emb = mc * net.get("channel_mult_emb", 4)
    weights = acts = skips = 0
    for level, mult in enumerate(net.get("channel_mult", [1, 2, 2, 2])):
        w, r, blocks = mc * mult, max(res >> level, 1), 2 * nb + 3
        weights += blocks * (27 * w * w + 2 * w * emb)
        heads = 1 if net.get("model_type", "SongUNet") == "SongUNet" else max(w // 64, 1)  # EDM's two U-Nets
        attends = r in net.get("attn_resolutions", [16])
        acts += blocks * (6 * w * r * r + (heads * r ** 4 + 4 * w * r * r if attends else 0))
        skips += (nb + 1) * w * r * r
    return weights, acts, skips


def per_rank_batch(t: Mapping) -> int:
    """Images per rank per step: train.batch_per_rank, or the batch split over train.nproc_per_node."""
    return t["batch_per_rank"] or t["batch_size"] // t["nproc_per_node"]


def memory_estimates(p: Mapping) -> dict:
    """{parameter: (estimated bytes, what)} of the largest arrays that each size parameter makes a job hold
    (float32: 4 bytes a value; the sampler's float64 state: 8)."""
    res, ch = RESOLUTION[p["data"]["dataset"]], CHANNELS[p["data"]["dataset"]]
    image = res * res * ch
    t, s, c = p["train"], p["sample"], p["curvature"]
    _, acts, skips = unet_estimates(t["network"], res)
    per_rank = per_rank_batch(t)
    return {"train.batch_size": (per_rank * acts * 4 * 2, f"a training step's activations and their gradients "
                                                         f"({per_rank} images per rank)"),
            "sample.batch_size": (s["batch_size"] * (skips * 4 + image * 8 * 4), "a sampler call's skip connections "
                                                                             "and float64 state"),
            "sample.num_samples": (s["num_samples"] * image * 4, "the samples of one setting"),
            "guidance.num_fake": (p["guidance"]["num_fake"] * image * 4, "the discriminator's fake images"),
            "curvature.num_latents": (c["num_latents"] * (2 * c["fine_steps"] + 1) * image * 8,
                                      f"the fine solve's trajectory ({2 * c['fine_steps'] + 1} evaluations)")}


def _check_memory(p: Mapping) -> None:
    weights = unet_estimates(p["train"]["network"], RESOLUTION[p["data"]["dataset"]])[0]
    if weights > MAX_NETWORK_PARAMETERS:
        _fail("train.network", f"describes about {weights:,} weights, over the {MAX_NETWORK_PARAMETERS:,} that a "
                               f"network file may hold (model_channels x channel_mult, num_blocks)")
    for key, (size, what) in memory_estimates(p).items():
        if size > MEMORY_BUDGET:
            _fail(key, f"{what} would take about {size / 2**30:,.0f} GiB, over the {MEMORY_BUDGET / 2**30:.0f} GiB "
                       f"that one job may hold (schema.MEMORY_BUDGET)")


def _fail(path: str, msg: str):
    raise ParamError(f"parameter {path!r}: {msg}")


def _check_value(path: str, value, spec: Spec):
    if value is None:
        if spec.nullable:
            return
        _fail(path, "must be set (got null)")
    k = spec.type
    if k == "bool":
        if not isinstance(value, bool):
            _fail(path, f"must be true or false (a YAML boolean, not {type(value).__name__} {value!r})")
    elif k in ("int", "num"):
        ok = isinstance(value, int) if k == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            _fail(path, f"must be {'an integer' if k == 'int' else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            _fail(path, f"must be finite, got {value!r}")
        if spec.lo is not None and (value <= spec.lo if spec.gt else value < spec.lo):
            _fail(path, f"must be {'>' if spec.gt else '>='} {spec.lo:g}, got {value!r}")
        if spec.hi is not None and value > spec.hi:
            _fail(path, f"must be <= {spec.hi:g}, got {value!r}")
    elif k == "str":
        if not isinstance(value, str):
            _fail(path, f"must be a string, got {value!r}")
        choices = spec.choices() if callable(spec.choices) else spec.choices
        if choices and value not in choices:
            _fail(path, f"must be one of {list(choices)}, got {value!r}")
    elif k == "list":
        if not isinstance(value, list) or len(value) < spec.min_len:
            _fail(path, f"must be a list of at least {spec.min_len} item(s), got {value!r}")
        for i, v in enumerate(value):
            _check_value(f"{path}[{i}]", v, spec.item)
    elif k == "map":
        if not isinstance(value, Mapping) or not value:
            _fail(path, "must be a non-empty mapping of names to entries")
        for name, entry in value.items():
            if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
                _fail(path, f"the name {name!r} is not allowed: names are lower-case letters, digits and '_', "
                            f"starting with a letter ({NAME_PATTERN.pattern})")
            _check_section(f"{path}.{name}", entry, _RECORDS[spec.item.type], required=True)


def _check_section(path: str, node, schema: Mapping, required: bool = True):
    if not isinstance(node, Mapping):
        _fail(path or "<root>", f"must be a mapping, got {node!r}")
    for key in node:
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"; did you mean {(path + '.' if path else '') + close[0]!r}?" if close else ""
            raise ParamError(f"unknown parameter {(path + '.' if path else '') + str(key)!r}{hint}")
    for key, spec in schema.items():
        sub = f"{path}.{key}" if path else key
        if key not in node:
            if required and not (isinstance(spec, Spec) and spec.nullable) and not (schema is NETWORK):
                raise ParamError(f"missing parameter {sub!r} (conf/config.yaml defines every parameter)")
            continue
        if isinstance(spec, Mapping):
            _check_section(sub, node[key], spec, required=schema is not NETWORK and spec is not NETWORK)
        else:
            _check_value(sub, node[key], spec)


def fake_split(g: Mapping) -> tuple[int, int]:
    """(training fakes, held-out fakes) of a guided model. early_stop: the held-out fraction comes out of
    guidance.num_fake; dg: DG trains on all num_fake, and the held-out fakes (for the reported accuracy) are
    sampled on top."""
    held = max(int(g["num_fake"] * g["heldout_fraction"]), 2)
    return (g["num_fake"] - held, held) if g["protocol"] == "early_stop" else (g["num_fake"], held)


def check_pairing_options(p: Mapping) -> None:
    """Each model, study variant and discriminator gives every option its pairing declares (aot.PAIRING_OPTIONS),
    each checked against its declaration, and no options where its pairing declares none."""
    entries = [*((f"models.{n}", e) for n, e in p["models"].items()),
               *((f"pool_study.variants.{n}", e) for n, e in p["pool_study"]["variants"].items()),
               *((f"guidance.discriminators.{n}", e) for n, e in p["guidance"]["discriminators"].items())]
    for where, entry in entries:
        declared, given = PAIRING_OPTIONS.get(entry["pairing"], {}), entry.get("pairing_options")
        if given is not None and not declared:
            _fail(f"{where}.pairing_options", f"the pairing {entry['pairing']!r} takes no options" +
                  (" (a discriminator with pairing 'model' uses its model's)" if entry["pairing"] == "model" else ""))
        if declared:
            if given is None:
                _fail(f"{where}.pairing_options", f"the pairing {entry['pairing']!r} declares the options "
                                                  f"{sorted(declared)}: set them")
            _check_section(f"{where}.pairing_options", given, declared)


def check_plugin_names(p: Mapping) -> None:
    """The `plugins` section alone, before any plugin file is imported (params.validate imports them next)."""
    plugins = p.get("plugins") if isinstance(p, Mapping) else None
    if plugins is not None:
        _check_section("plugins", plugins, SCHEMA["plugins"])
        for family, names in plugins.items():
            for i, name in enumerate(names):
                if not NAME_PATTERN.fullmatch(name):
                    _fail(f"plugins.{family}[{i}]", f"{name!r} is not a plugin name (the file plugins/{family}/<name>.py; "
                                                  f"{NAME_PATTERN.pattern})")


def validate(p: Mapping) -> dict:
    """Check every value against :data:`SCHEMA` and the cross-field rules; return ``p`` as a dict. Pure: the
    registries (pairings, metrics) are as the caller left them (params.validate imports the plugins named first)."""
    check_plugin_names(p)
    _check_section("", p, SCHEMA)
    t, s, g, c = p["train"], p["sample"], p["guidance"], p["curvature"]
    ranks = t["nproc_per_node"]
    if t["batch_size"] % ranks:
        _fail("train.batch_size", f"{t['batch_size']} is not divisible by train.nproc_per_node ({ranks})")
    per_rank = per_rank_batch(t)
    if (t["batch_size"] // ranks) % per_rank:
        _fail("train.batch_per_rank", f"{per_rank} does not divide the per-rank batch {t['batch_size'] // ranks}")
    pools = {f"train.{key}": t[key] for key in ("pool_size", "pool_size_cond")}
    pools.update({f"models.{name}.pool_size": m["pool_size"] for name, m in p["models"].items()
                  if m.get("pool_size") is not None})
    pools.update({f"pool_study.variants.{name}.pool_size": v["pool_size"]
                  for name, v in p["pool_study"]["variants"].items()})
    for key, pool in pools.items():
        if pool < per_rank or pool % per_rank:
            _fail(key, f"the pool ({pool}) must be a multiple of the per-rank mini-batch ({per_rank} = "
                       f"train.batch_size {t['batch_size']} / train.nproc_per_node {ranks})")
    levels, res = len(t["network"].get("channel_mult", [])), RESOLUTION[p["data"]["dataset"]]
    if levels and 2 ** (levels - 1) > res:
        _fail("train.network.channel_mult", f"{levels} levels halve the {res}x{res} images of "
                                            f"{p['data']['dataset']} below one pixel (at most {res.bit_length()} levels)")
    _check_memory(p)
    if s["sigma_min"] >= s["sigma_max"]:
        _fail("sample.sigma_min", f"({s['sigma_min']}) must be below sample.sigma_max ({s['sigma_max']})")
    for key, sub, full in (("sample.grid_steps", s["grid_steps"], s["steps"]),
                           ("guidance.sample_steps", g["sample_steps"], s["steps"]),
                           ("guidance.rho", g["rho"], s["rho"]),
                           ("curvature.coarse_steps", c["coarse_steps"], s["steps"]),
                           ("hybrid.steps", p["hybrid"]["steps"], s["steps"]),
                           ("hybrid.rho", [p["hybrid"]["rho"]], s["rho"])):
        if not set(sub) <= set(full):
            _fail(key, f"{sub} must be a subset of {full} (the sweep it is compared with)")
    if g["protocol"] == "early_stop":  # half real, half fake per batch
        if g["batch_size"] % 2:
            _fail("guidance.batch_size", f"must be even (half real, half fake), got {g['batch_size']}")
        unit, what = g["batch_size"] // 2, "half the batch"
    else:  # DG's: mixed batches drawn from one pool of real and fake images
        unit, what = g["batch_size"], "the batch"
    if g["pool_size"] < unit or g["pool_size"] % unit:
        _fail("guidance.pool_size", f"({g['pool_size']}) must be a multiple of {what} ({unit})")
    train_fakes = fake_split(g)[0]
    if train_fakes < g["pool_size"]:
        _fail("guidance.num_fake", f"{g['num_fake']} fakes leave {train_fakes} for training after the held-out "
                                   f"fraction, fewer than one pool (guidance.pool_size {g['pool_size']})")
    window = g["sigma_window"]
    if window is not None and window != "validation":
        _check_value("guidance.sigma_window", window, List(Num(0, 1e4, gt=True), min_len=2))
        if len(window) != 2 or window[0] >= window[1]:
            _fail("guidance.sigma_window", f"must be null (DG's), [low, high] with low < high, or 'validation' (the "
                                           f"rule on the validation split), got {window}")
    if len(set(t["seeds"])) != len(t["seeds"]):
        _fail("train.seeds", f"repeats a seed: {t['seeds']}")
    check_pairing_options(p)
    for name in p["models"]:
        if INSTANCE.fullmatch(name):
            _fail(f"models.{name}", "a model name may not end in _s<digits>: that suffix names its training seeds")
    for name, d in g["discriminators"].items():
        if d["model"] not in p["models"]:
            _fail(f"guidance.discriminators.{name}.model", f"{d['model']!r} is not one of {sorted(p['models'])}")
    if p["data"]["dataset"] == "cifar10" and p["profile"] not in ("cifar10", "rehearsal"):
        _fail("data.dataset", "cifar10 data belongs to the cifar10 profile (or its rehearsal)")
    if p["fd"]["features"] == "inception" and p["data"]["dataset"] != "cifar10":
        _fail("fd.features", "Inception features are for 32x32 RGB (cifar10); offline profiles use 'classifier'")
    if not re.fullmatch(r"[0-9a-f]{32}", p["data"]["cifar10_md5"]):
        _fail("data.cifar10_md5", f"must be 32 lower-case hex digits, got {p['data']['cifar10_md5']!r}")
    return dict(p)
