"""The parameters of a run: composition (defaults + profile + overrides), loading, and the views stages get.

``params.yaml`` holds the *effective* parameters of the run, the one file that every stage reads and
both front doors track. It is composed from ``conf/config.yaml`` (the defaults, i.e. the digits
profile), one ``conf/profile/<name>.yaml`` and command-line overrides, by Hydra:

- ``dvc exp run -S profile=smoke -S train.pool_size=128`` (DVC composes it; ``hydra.enabled``),
- ``snakemake --config profile=smoke train='{pool_size: 128}'`` (the Snakefile calls :func:`resolve`),
- ``aot-diffusion params --profile smoke --set train.pool_size=128`` (by hand).

Overrides are applied last, so they always win over the profile. Every value is then checked
against the schema (schema.py): unknown keys (with the closest known one suggested), types (booleans are
booleans), ranges and cross-field rules all stop the run before any stage starts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import schema
from .errors import ParamError, UndeclaredParam
from .plugins import load_plugins
# the schema's names, re-exported: callers read parameters and their names from one module
from .schema import (DISCRIMINATOR, ENCODER, INSTANCE, MAX_POOL, MAX_SAMPLES, MODEL, NAME_PATTERN, NETWORK,  # noqa: F401
                     PROFILES, RESOLUTION, SCHEMA, VARIANT, Spec)

__all__ = ["ParamError", "UndeclaredParam", "PROFILES", "SCHEMA", "NAME_PATTERN", "load_yaml", "load_params",
           "validate", "compose", "resolve", "flatten", "write_params", "select", "StageParams", "digest",
           "default_profile", "origins", "guidance_settings", "edm_aot_pairs", "instance_key", "split_instance", "model_instances"]

CONF_DIR = "conf"
PARAMS_FILE = "params.yaml"
HEADER = ("# The effective parameters of this run, composed from conf/config.yaml + conf/profile/<profile>.yaml\n"
          "# + overrides (dvc exp run -S / snakemake --config / aot-diffusion params --set). Edit conf/ for\n"
          "# lasting changes: `dvc exp run` recomposes this file from conf/.\n")




def validate(p: Mapping, root: Path | str = ".") -> dict:
    """Import the plugins that ``p`` names (``root``: the project's; they add to the registries the schema reads),
    then check ``p`` against the schema (schema.validate)."""
    schema.check_plugin_names(p)
    if isinstance(p, Mapping) and p.get("plugins") is not None:
        load_plugins(p, root)
    return schema.validate(p)




_INSTANCE = INSTANCE  # <model>_s<seed>: schema.INSTANCE


def instance_key(model: str, seed: int) -> str:
    """The key of ``model`` trained with training seed ``seed`` (jobs, paths and table rows use it)."""
    return f"{model}_s{int(seed)}"


def split_instance(key: str) -> tuple[str, int]:
    """``edm_uncond_s1`` -> ("edm_uncond", 1)."""
    m = _INSTANCE.fullmatch(key)
    if not m:
        raise ParamError(f"{key!r} is not a trained model's key (<model>_s<seed>)")
    return m["model"], int(m["seed"])


def model_instances(p: Mapping) -> dict[str, tuple[str, int]]:
    """Every trained model: {key: (model, training seed)}, models outer, seeds inner."""
    return {instance_key(m, s): (m, s) for m in p["models"] for s in p["train"]["seeds"]}


# ---------------------------------------------------------------------------------------------- YAML

class _StrictLoader(yaml.SafeLoader):
    """YAML without its two traps for a parameter file: a duplicated key (the last one silently wins) and
    anchors/aliases (one line can expand into gigabytes). Both are refused with the file and line."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.MarkedYAMLError("while reading a parameter file", None,
                                       "YAML anchors and aliases are not allowed here", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.MarkedYAMLError("while reading a parameter file", node.start_mark,
                                           f"duplicate key {key!r} (first on line {seen[key] + 1})",
                                           key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path | str):
    """Read one YAML file strictly (no duplicate keys, no aliases); errors name the file and line."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ParamError(f"{path} is not a valid parameter file: {exc}") from None


# ---------------------------------------------------------------------------------------------- composition

def flatten(tree: Mapping, prefix: str = "") -> dict:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (lists stay values)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and k not in ("models", "discriminators", "variants"):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _hydra_value(v) -> str:
    """A value in Hydra's override grammar: strings quoted (a path may hold `$(`, quotes or spaces, and no
    `${...}` is resolved), lists and mappings element by element."""
    if isinstance(v, str):
        quoted = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), v.replace("${", "\\${"))
        return f"'{quoted}'"
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{_hydra_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_hydra_value(x) for x in v) + "]"
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def conf_files(root: Path | str = ".") -> list:
    """What params.yaml is composed from: conf/config.yaml and each profile's file."""
    conf = Path(root) / CONF_DIR
    return [conf / "config.yaml", *sorted((conf / "profile").glob("*.yaml"))]


def check_conf(root: Path | str = ".") -> None:
    """Every conf/ file through the strict loader: Hydra (either door's) would take a duplicated key's last value
    and expand anchors and aliases."""
    for path in conf_files(root):
        load_yaml(path)


def _check_keys(tree: Mapping, where: str = "") -> None:
    """An override's keys are names (a model, a variant) or parameters, before they reach Hydra's grammar."""
    for key, value in tree.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ParamError(f"override {where + str(key)!r}: the name is not allowed (names are lower-case letters, "
                             f"digits and '_', starting with a letter: {NAME_PATTERN.pattern})")
        if isinstance(value, Mapping):
            _check_keys(value, f"{where}{key}.")


def compose(profile: str | None = None, overrides: Mapping | None = None, root: Path | str = ".") -> dict:
    """Defaults + ``conf/profile/<profile>.yaml`` + overrides, composed by Hydra as ``dvc exp run -S`` does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    conf = (Path(root) / CONF_DIR).resolve()
    if not (conf / "config.yaml").exists():
        raise ParamError(f"{conf}/config.yaml not found: run from the repository root")
    check_conf(root)
    args = [] if profile is None else [f"profile={profile}"]
    if profile is not None and profile not in PROFILES:
        raise ParamError(f"parameter 'profile': unknown profile {profile!r}; choose from {list(PROFILES)}")
    _check_keys(overrides or {})
    # `++`: add or override, so a new model or study variant can be added; validate() refuses unknown keys.
    args += [f"++{k}={_hydra_value(v)}" for k, v in flatten(overrides or {}).items()]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=args)
    except Exception as exc:  # hydra's errors name the key; keep them, as a ParamError
        raise ParamError(f"cannot compose parameters with overrides {args}: {exc}") from None
    finally:
        GlobalHydra.instance().clear()
    return validate(OmegaConf.to_container(cfg, resolve=True), root=root)


def load_params(path: Path | str = PARAMS_FILE) -> dict:
    """Read and validate the effective parameter file."""
    path = Path(path)
    if not path.exists():
        raise ParamError(f"parameter file {path} not found (compose it: aot-diffusion params)")
    p = load_yaml(path)
    if not isinstance(p, Mapping):
        raise ParamError(f"parameter file {path} must hold a mapping")
    return validate(p, root=path.resolve().parent)


def resolve(overrides: Mapping | None, path: Path | str = PARAMS_FILE) -> dict:
    """Snakemake's view, composed as DVC composes it: without ``--config``, params.yaml as it is (``dvc repro``);
    with ``--config``, conf/ + the profile + this command's overrides, from scratch (``dvc exp run -S``), never
    stacked on an earlier command's overrides. A command that names no profile gets conf/'s default, as
    ``dvc exp run`` does; when params.yaml holds another profile that is refused rather than switched silently."""
    overrides = _typed(dict(overrides or {}))
    path = Path(path)
    if not overrides:
        return load_params(path)
    root = path.resolve().parent
    profile = overrides.pop("profile", None)
    if profile is None:
        default = default_profile(root)
        current = (load_yaml(path) or {}).get("profile") if path.exists() else None
        if current not in (None, default):
            raise ParamError(f"--config composes params.yaml from conf/ as `dvc exp run -S` does, and this command "
                             f"names no profile, so it would be conf/'s default {default!r}, while params.yaml is the "
                             f"{current!r} profile's: add profile={current} to keep it (or profile={default})")
    return compose(profile, overrides, root=root)


def default_profile(root: Path | str = ".") -> str:
    """The profile conf/config.yaml names (what a composition without ``profile=`` gets)."""
    return load_yaml(Path(root) / CONF_DIR / "config.yaml")["profile"]


def origins(p: Mapping, overrides: Mapping | None = None, root: Path | str = ".") -> dict:
    """Where each effective value comes from: ``conf/config.yaml``, ``conf/profile/<profile>.yaml``, or
    ``override`` (a value that neither file gives: this command's ``--set``, or for an existing params.yaml
    the ``-S`` / ``--config`` that composed it)."""
    root = Path(root)
    defaults = flatten(load_yaml(root / CONF_DIR / "config.yaml"))
    profile_file = root / CONF_DIR / "profile" / f"{p['profile']}.yaml"
    from_profile = flatten(load_yaml(profile_file) or {})
    composed = flatten(compose(p["profile"], root=root))
    given = flatten(overrides or {})
    out = {}
    for key, value in flatten(p).items():
        if key in given or composed.get(key, object()) != value:
            out[key] = "override"
        elif key in from_profile:
            out[key] = str(profile_file.relative_to(root))
        else:
            out[key] = f"{CONF_DIR}/config.yaml" if key in defaults or key == "profile" else "conf/ (a group)"
    return out


def _typed(tree):
    """Command-line values are YAML, as in ``dvc exp run -S``: ``--config 'train={pool_size: 32}'`` gives 32
    however Snakemake parsed it (params.yaml itself stays strict: there a quoted '32' is an error)."""
    if isinstance(tree, Mapping):
        return {k: _typed(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_typed(v) for v in tree]
    if isinstance(tree, str):
        try:
            return yaml.load(tree, Loader=_StrictLoader)  # no aliases on the command line either
        except yaml.YAMLError:
            return tree
    return tree


def write_params(p: Mapping, path: Path | str = PARAMS_FILE) -> bool:
    """Write ``p`` as the effective parameter file if it differs from what is there; True if written."""
    from .utils import atomic_write_text

    path = Path(path)
    if path.exists():
        try:
            if load_yaml(path) == dict(p):
                return False
        except ParamError:
            pass
    atomic_write_text(path, HEADER + yaml.safe_dump(dict(p), sort_keys=False, width=120))
    return True


def select(p: Mapping, keys) -> dict:
    """The values of dotted ``keys`` (what one stage reads): its parameter record."""
    out = {}
    for key in keys:
        node: Any = p
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def digest(obj) -> str:
    """A short content address of a JSON-able value (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def guidance_settings(p: Mapping, conditional: bool) -> list[tuple[int, float]]:
    """The (steps, rho) settings where guidance is evaluated for a model: guidance.sample_steps x guidance.rho
    and the paper's own setting for its conditioning (guidance.paper_setting_{uncond,cond}). The unguided
    model is sampled there too (stage sample), so every guided FD has its paired baseline."""
    g = p["guidance"]
    out = [(int(st), float(r)) for r in g["rho"] for st in g["sample_steps"]]
    paper = g["paper_setting_cond" if conditional else "paper_setting_uncond"]
    if (int(paper["steps"]), float(paper["rho"])) not in out:
        out.append((int(paper["steps"]), float(paper["rho"])))
    return out


def edm_aot_pairs(p: Mapping) -> dict:
    """{"uncond"/"cond": (EDM model, AOT model)}: the first `models` entry of each kind per conditioning, the
    pairs that EDM-minus-AOT differences and the hybrid samplers compare."""
    out = {}
    for cond in (False, True):
        edm = [m for m, s in p["models"].items() if s["conditional"] == cond and s["pairing"] == "none"]
        aot = [m for m, s in p["models"].items() if s["conditional"] == cond and s["pairing"] != "none"]
        if edm and aot:
            out["cond" if cond else "uncond"] = (edm[0], aot[0])
    return out


# Every stage may read the profile: it is the folder its outputs live in.
ALWAYS_READABLE = ("profile",)


class StageParams(Mapping):
    """A read-only view of the parameters one stage declares in the stage table (dag.py). Reading a key
    that is neither declared nor inside / on the way to a declared one raises :class:`UndeclaredParam`,
    naming the stage and the key, so a stage can't depend on what its front doors don't track."""

    def __init__(self, tree: Mapping, declared, stage: str, _prefix: str = ""):
        self._tree, self._stage, self._prefix = tree, stage, _prefix
        self._declared = tuple(declared) + ALWAYS_READABLE

    def _readable(self, path: str) -> bool:
        """Declared, inside a declared section, or on the way to a declared key."""
        return any(path == d or path.startswith(d + ".") or d.startswith(path + ".") for d in self._declared)

    def __getitem__(self, key):
        path = f"{self._prefix}{key}"
        if not self._readable(path):
            raise UndeclaredParam(f"stage {self._stage!r} read parameter {path!r}, which it does not declare in "
                                  f"the stage table (src/aot_diffusion/dag.py): its front doors would not rerun it "
                                  f"when {path!r} changes")
        value = self._tree[key]
        if isinstance(value, Mapping):
            return StageParams(value, self._declared, self._stage, path + ".")
        return copy.deepcopy(value)

    def __iter__(self):
        return (k for k in self._tree if self._readable(f"{self._prefix}{k}"))

    def __len__(self):
        return sum(1 for _ in self)

    def to_dict(self) -> dict:
        """The readable part as plain data (for writing it out)."""
        return {k: (v.to_dict() if isinstance(v, StageParams) else v) for k, v in self.items()}


def device_of(p: Mapping) -> str:
    """``device: auto`` is cuda when available; ``cuda`` without CUDA stops the stage at once."""
    import torch

    want = p["device"]
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise ParamError("parameter 'device': 'cuda' was requested but CUDA is not available on this machine "
                         "(set device: auto or cpu)")
    return want

