"""Load released NVlabs/edm network pickles (and EDM-AOT ones) without running code from them.

EDM's ``torch_utils/persistence.py`` stores the *source code* of every persistent class inside
the pickle: each such object is pickled as a call ``_reconstruct_persistent_obj(meta)`` where
``meta = dict(type='class', version=..., module_src=<source>, class_name=..., state=<__dict__>)``,
and unpickling it normally ``exec``\\ s ``module_src``. A pickle from an untrusted source can of
course also call any other global (``os.system``, ...).

:func:`load_edm_pickle_data` reads such files with :mod:`aot_diffusion.safe_pickle` (bounded in bytes
and objects) and an allow-list of globals: torch's tensor / parameter / storage rebuild functions, tensor
dtypes, numpy values, inert containers, and EDM's ``dnnlib.util.EasyDict`` (as a plain dict).
``torch_utils.persistence._reconstruct_persistent_obj`` is replaced by a function that returns a
:class:`PersistentObject` stand-in (class name, state, init args); ``module_src`` is kept as an
inert string and never executed. torch's ``nn.ModuleDict``/``ModuleList``/``Sequential``, which
EDM pickles by reference, become :class:`ModuleStandIn` objects. Storage bytes embedded by
``torch.storage._load_from_bytes`` are read with :func:`aot_diffusion.safe_pickle.safe_torch_load`, under the
checks of this project's .pt files.

:func:`load_edm_pickle` then checks the recorded constructor arguments against :data:`NETWORK_LIMITS`,
builds the network they describe on the meta device (no memory), refuses the pickle unless it holds exactly
those tensors (names and shapes, :func:`aot_diffusion.safe_pickle.check_weights`), and only then builds the
network and loads the weights. A small file can therefore not make it allocate a network larger than the
weights it actually holds.
"""

from __future__ import annotations

import functools
import inspect
import os
import pickle
import warnings
from typing import Any, Mapping

import numpy as np
import torch

from . import networks
from .safe_pickle import BASIC_GLOBALS, check_weights, restricted_load, safe_torch_load

__all__ = [
    "PersistentObject", "ModuleStandIn", "EasyDict", "EDM_GLOBALS", "NETWORK_LIMITS", "load_edm_pickle_data",
    "edm_state_dict", "network_config", "check_network_config", "load_edm_pickle",
]

MAX_PICKLE_BYTES = 4 << 30      # the largest released EDM pickle (ImageNet-64 ADM) is about 1.2 GB
MAX_PICKLE_OBJECTS = 5_000_000  # a released network pickle has some 10^4-10^5 opcodes

# Sane upper bounds on the recorded constructor arguments (EDM's largest networks sit well inside).
NETWORK_LIMITS = dict(img_resolution=1024, img_channels=16, label_dim=100_000, augment_dim=64,
                      model_channels=1024, channel_mult=16, channel_mult_emb=16, channel_mult_noise=16,
                      num_blocks=16, levels=8, attn_resolutions=8, resample_filter=8)


# ---------------------------------------------------------------------------------------------
# Stand-ins for the objects of an EDM pickle.

class EasyDict(dict):
    """Inert stand-in for ``dnnlib.util.EasyDict``: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


class PersistentObject:
    """What a persistent EDM object becomes: its class name and state, no code.

    ``state`` is the object's ``__dict__`` as pickled (for ``nn.Module``\\ s: ``_parameters``,
    ``_buffers``, ``_modules``, ... plus the class's own attributes and EDM's ``_init_args`` /
    ``_init_kwargs``). ``module_src`` is the pickled source code, kept only as a string.
    """

    def __init__(self, meta: Mapping):
        self.type = meta.get("type")
        self.version = meta.get("version")
        self.class_name = meta.get("class_name")
        self.module_src = meta.get("module_src")
        state = meta.get("state")
        self.state = dict(state) if state is not None else {}

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args") or ())

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})

    def __getattr__(self, name):  # convenient read access to pickled attributes (ema.img_resolution)
        state = self.__dict__.get("state", {})
        if name in state:
            return state[name]
        raise AttributeError(f"{type(self).__name__}({self.__dict__.get('class_name')!r}) has no attribute {name!r}")

    def __repr__(self):
        return f"PersistentObject(class_name={self.class_name!r}, state keys={sorted(self.state)[:8]}...)"


class ModuleStandIn:
    """Stand-in for a torch container module pickled by reference (``nn.ModuleDict``, ...)."""

    class_name = "Module"

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected state for {self.class_name}: {type(state).__name__}")
        self.state = dict(state)

    def __repr__(self):
        return f"ModuleStandIn({self.class_name})"


_CONTAINERS = {name: type(f"{name}StandIn", (ModuleStandIn,), {"class_name": name})
               for name in ("ModuleDict", "ModuleList", "Sequential", "ParameterDict", "ParameterList")}


# ---------------------------------------------------------------------------------------------
# Safe replacements for the globals an EDM pickle calls.

def _reconstruct_persistent_obj(meta):
    """Replacement for ``torch_utils.persistence._reconstruct_persistent_obj``: never runs module_src."""
    if not isinstance(meta, dict):
        raise pickle.UnpicklingError(f"persistent object meta must be a dict, got {type(meta).__name__}")
    if meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError(f"unsupported persistent object meta: type={meta.get('type')!r}, "
                                     f"class_name={meta.get('class_name')!r}")
    state = meta.get("state")
    if state is not None and not isinstance(state, dict):
        raise pickle.UnpicklingError(f"persistent object {meta['class_name']} has a non-dict state")
    return PersistentObject(meta)


def _load_storage_from_bytes(data, source="pickle data"):
    """Replacement for ``torch.storage._load_from_bytes``: the checks of our .pt files, then torch's weights-only
    loader, on CPU (a storage's bytes are a whole torch.save file: its own pickle may call bytearray(3 GiB))."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage payload must be bytes")
    where = f"an embedded tensor storage in {source}"
    try:
        storage = safe_torch_load(bytes(data), map_location="cpu", source=where)
    except Exception as exc:  # torch raises its own UnpicklingError / RuntimeError variants
        raise pickle.UnpicklingError(str(exc) if where in str(exc) else f"refusing {where}: {exc}") from exc
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"embedded storage payload held {type(storage).__name__}, not a storage")
    return storage


def _check_storage(storage):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"tensor rebuild got {type(storage).__name__} instead of a storage")


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """``torch._utils._rebuild_tensor(_v2)``: a view of an existing storage (torch checks the bounds)."""
    _check_storage(storage)
    tensor = torch._utils._rebuild_tensor(storage, int(storage_offset), tuple(size), tuple(stride))
    tensor.requires_grad = bool(requires_grad)
    return tensor


def _rebuild_parameter(data, requires_grad, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"parameter rebuild got {type(data).__name__} instead of a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _rebuild_from_type_v2(func, new_type, args, state):
    """``torch._tensor._rebuild_from_type_v2`` restricted to plain tensors and parameters."""
    if func not in (_rebuild_tensor, _rebuild_parameter) or new_type not in (torch.Tensor, torch.nn.Parameter):
        raise pickle.UnpicklingError(f"refusing tensor rebuild of type {new_type!r} via {func!r}")
    tensor = func(*args)
    if new_type is torch.nn.Parameter and not isinstance(tensor, torch.nn.Parameter):
        tensor = torch.nn.Parameter(tensor, requires_grad=tensor.requires_grad)
    return tensor


def _size(dims=()):
    if not isinstance(dims, (list, tuple)):
        raise pickle.UnpicklingError(f"refusing torch.Size of a {type(dims).__name__}")
    return torch.Size(dims)


_TORCH_DTYPES = ("float16", "float32", "float64", "bfloat16", "half", "float", "double", "uint8", "int8",
                 "int16", "int32", "int64", "short", "int", "long", "bool", "complex64", "complex128")

EDM_GLOBALS: dict[tuple[str, str], Any] = {
    **BASIC_GLOBALS,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "Size"): _size,
    ("torch", "device"): torch.device,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    **{("torch", name): getattr(torch, name) for name in _TORCH_DTYPES},
    **{("torch.nn.modules.container", name): cls for name, cls in _CONTAINERS.items()},
}


# ---------------------------------------------------------------------------------------------
# Public API.

def load_edm_pickle_data(path, *, max_bytes: int = MAX_PICKLE_BYTES, max_objects: int = MAX_PICKLE_OBJECTS) -> Any:
    """Safely unpickle an EDM network pickle; persistent objects become :class:`PersistentObject`."""
    source = str(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "pickle data")
    allowed = {**EDM_GLOBALS, ("torch.storage", "_load_from_bytes"): functools.partial(_load_storage_from_bytes,
                                                                                     source=source)}
    return restricted_load(path, allowed, source=source, kind="EDM network pickles (tensors, storages, containers, "
                           "EDM persistent objects)", max_bytes=max_bytes, max_objects=max_objects)


def edm_state_dict(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """EDM-named state dict (``model.enc.32x32_conv.weight``, ...) of a pickled module stand-in.

    Walks ``_parameters``, then persistent ``_buffers``, then ``_modules`` recursively, as
    ``nn.Module.state_dict`` does; ``None`` entries are skipped.
    """
    if not isinstance(obj, (PersistentObject, ModuleStandIn)):
        raise TypeError(f"expected a pickled module stand-in, got {type(obj).__name__}")
    state = obj.state
    out: dict[str, torch.Tensor] = {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = _as_tensor(value, prefix + name)
    non_persistent = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            out[prefix + name] = _as_tensor(value, prefix + name)
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(edm_state_dict(child, prefix + name + "."))
    return out


def _as_tensor(value, name):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value)
    raise TypeError(f"{name}: expected a tensor, got {type(value).__name__}")


def _accepted_keys(model_type) -> set[str]:
    precond = set(inspect.signature(networks.EDMPrecond.__init__).parameters) - {"self", "model_kwargs"}
    backbone = networks._BACKBONES.get(model_type) if isinstance(model_type, str) else None
    if backbone is None:
        return precond
    return precond | (set(inspect.signature(backbone.__init__).parameters)
                      - {"self", "in_channels", "out_channels", "kwargs", "args"})


def network_config(obj: PersistentObject) -> dict:
    """``build_network`` config from a pickled EDMPrecond's init args/kwargs.

    Keys ``build_network`` does not take are dropped with a warning.
    """
    if not isinstance(obj, PersistentObject):
        raise TypeError(f"expected a PersistentObject, got {type(obj).__name__}")
    if obj.class_name != "EDMPrecond":
        raise ValueError(f"the pickled network is a {obj.class_name}; only EDM's EDMPrecond networks are supported "
                         f"(EDM's VP/VE/iDDPM baselines use other preconditionings)")
    if obj.state.get("_init_kwargs") is None and obj.state.get("_init_args") is None:
        raise ValueError("the pickled EDMPrecond has no recorded init arguments (_init_kwargs)")
    config = dict(obj.init_kwargs)
    positional = [p for p in inspect.signature(networks.EDMPrecond.__init__).parameters
                  if p not in ("self", "model_kwargs")]
    if len(obj.init_args) > len(positional):
        raise ValueError(f"too many positional init args for EDMPrecond: {obj.init_args!r}")
    for name, value in zip(positional, obj.init_args):
        config.setdefault(name, value)
    config = {k: (dict(v) if isinstance(v, EasyDict) else v) for k, v in config.items()}
    accepted = _accepted_keys(config.get("model_type", "SongUNet"))
    dropped = sorted(set(config) - accepted)
    if dropped:
        warnings.warn(f"dropping EDMPrecond init kwargs that build_network does not take: "
                      f"{ {k: config[k] for k in dropped} }", stacklevel=2)
    return {k: v for k, v in config.items() if k in accepted}


def _bounded_int(name, value, limit, minimum=0):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not minimum <= value <= limit:
        raise ValueError(f"recorded network argument {name}={value!r} is outside the sane range "
                         f"[{minimum}, {limit}]; refusing to build the network")


def check_network_config(config: Mapping, limits: Mapping = NETWORK_LIMITS) -> None:
    """Refuse constructor arguments beyond ``limits`` (sizes, list lengths) before anything is built."""
    if config.get("model_type", "SongUNet") not in networks._BACKBONES:
        raise ValueError(f"recorded model_type {config.get('model_type')!r} is not one of "
                         f"{sorted(networks._BACKBONES)}")
    for name in ("img_resolution", "img_channels"):
        _bounded_int(name, config.get(name), limits[name], minimum=1)
    for name in ("label_dim", "augment_dim", "model_channels", "channel_mult_emb", "channel_mult_noise",
                 "num_blocks"):
        if name in config:
            _bounded_int(name, config[name], limits[name])
    for name, item_limit, length_limit in (("channel_mult", limits["channel_mult"], limits["levels"]),
                                           ("attn_resolutions", limits["img_resolution"], limits["attn_resolutions"]),
                                           ("resample_filter", 1 << 16, limits["resample_filter"])):
        value = config.get(name, ())
        if not isinstance(value, (list, tuple)) or len(value) > length_limit:
            raise ValueError(f"recorded network argument {name}={value!r} must be a list of at most "
                             f"{length_limit} entries; refusing to build the network")
        for i, item in enumerate(value):
            _bounded_int(f"{name}[{i}]", item, item_limit)


def load_edm_pickle(path, key: str = "ema", device="cpu") -> torch.nn.Module:
    """Load the network under ``key`` (``"ema"``, or ``"net"``) of an EDM pickle into ``build_network``.

    No code from the pickle runs, and no network larger than the pickled weights is allocated.
    Returns the network (``EDMPrecond``) on ``device`` in eval mode.
    """
    data = load_edm_pickle_data(path)
    if isinstance(data, PersistentObject):
        obj = data
    elif isinstance(data, dict):
        if key not in data:
            raise KeyError(f"{path} has no {key!r} entry; it holds {sorted(map(str, data))}")
        obj = data[key]
    else:
        raise ValueError(f"{path} does not hold an EDM network pickle (top level is {type(data).__name__})")
    if not isinstance(obj, PersistentObject):
        raise ValueError(f"{path}[{key!r}] is not a persistent EDM network (got {type(obj).__name__})")
    config = network_config(obj)
    try:
        check_network_config(config)
        with torch.device("meta"):  # names and shapes only, no memory
            expected = networks.build_network(config).state_dict()
    except ValueError as exc:
        raise ValueError(f"{path}[{key!r}]: {exc}") from None
    weights = edm_state_dict(obj)
    check_weights(expected, weights, f"{path}[{key!r}]")  # before the real build
    net = networks.build_network(config)
    networks.load_edm_state_dict(net, weights)
    return net.to(device).eval()
