"""Load released NVlabs/edm network pickles (and EDM-AOT ones) without running code from them.

EDM's ``torch_utils/persistence.py`` stores the *source code* of every persistent class inside
the pickle: each such object is pickled as a call ``_reconstruct_persistent_obj(meta)`` where
``meta = dict(type='class', version=..., module_src=<source>, class_name=..., state=<__dict__>)``,
and unpickling it normally ``exec``\\ s ``module_src``. A pickle from an untrusted source can of
course also call any other global (``os.system``, ...).

:class:`EDMUnpickler` reads such files with an explicit allow-list of globals: torch's tensor /
parameter / storage rebuild functions, tensor dtypes, ``collections.OrderedDict``, numpy array and
scalar reconstruction, a few inert builtins, and EDM's ``dnnlib.util.EasyDict`` (as a plain dict).
``torch_utils.persistence._reconstruct_persistent_obj`` is replaced by a function that returns a
:class:`PersistentObject` stand-in (class name, state, init args); ``module_src`` is kept as an
inert string and never executed. torch's ``nn.ModuleDict``/``ModuleList``/``Sequential``, which
EDM pickles by reference, become :class:`ModuleStandIn` objects. Storage bytes embedded by
``torch.storage._load_from_bytes`` are read with ``torch.load(..., weights_only=True)``.
Any other global raises ``pickle.UnpicklingError`` naming it.

:func:`load_edm_pickle` then rebuilds the network with :func:`aot_diffusion.networks.build_network`
from the stand-in's init kwargs and loads the weights, collected by walking the nested
``_modules``/``_parameters``/``_buffers`` into an EDM-named state dict, with
:func:`aot_diffusion.networks.load_edm_state_dict`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import inspect
import io
import pickle
import warnings
from typing import Any, Mapping

import numpy as np
import torch

from . import networks

__all__ = [
    "EDMUnpickler", "PersistentObject", "ModuleStandIn", "EasyDict", "load_edm_pickle_data",
    "edm_state_dict", "network_config", "load_edm_pickle",
]


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


def _container(name):
    return type(f"{name}StandIn", (ModuleStandIn,), {"class_name": name})


_CONTAINERS = {name: _container(name) for name in ("ModuleDict", "ModuleList", "Sequential", "ParameterDict",
                                                   "ParameterList")}


# ---------------------------------------------------------------------------------------------
# Safe replacements for the globals an EDM pickle calls.

def _safe_reconstruct_persistent_obj(meta):
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


def _load_storage_from_bytes(data):
    """Replacement for ``torch.storage._load_from_bytes``: torch's weights-only loader, on CPU."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage payload must be bytes")
    try:
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises its own UnpicklingError / RuntimeError variants
        raise pickle.UnpicklingError(f"refusing an embedded tensor storage: {exc}") from exc
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"embedded storage payload held {type(storage).__name__}, not a storage")
    return storage


def _check_storage(storage):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"tensor rebuild got {type(storage).__name__} instead of a storage")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    _check_storage(storage)
    tensor = torch._utils._rebuild_tensor(storage, int(storage_offset), tuple(size), tuple(stride))
    tensor.requires_grad = bool(requires_grad)
    return tensor


def _rebuild_tensor(storage, storage_offset, size, stride):
    _check_storage(storage)
    return torch._utils._rebuild_tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"parameter rebuild got {type(data).__name__} instead of a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


_SAFE_TENSOR_FUNCS = (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    """``torch._tensor._rebuild_from_type_v2`` restricted to plain tensors and parameters."""
    if func not in _SAFE_TENSOR_FUNCS or new_type not in (torch.Tensor, torch.nn.Parameter):
        raise pickle.UnpicklingError(f"refusing tensor rebuild of type {new_type!r} via {func!r}")
    tensor = func(*args)
    if new_type is torch.nn.Parameter and not isinstance(tensor, torch.nn.Parameter):
        tensor = torch.nn.Parameter(tensor, requires_grad=tensor.requires_grad)
    return tensor


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes; latin-1 only."""
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_attr(name):
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return getattr(multiarray, name)


def _numpy_numeric_frombuffer():
    try:  # numpy >= 2
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


_TORCH_DTYPES = ("float16", "float32", "float64", "bfloat16", "half", "float", "double", "uint8", "int8",
                 "int16", "int32", "int64", "short", "int", "long", "bool", "complex64", "complex128")
_STORAGE_TYPES = ("FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "ByteStorage", "CharStorage",
                  "ShortStorage", "IntStorage", "LongStorage", "BoolStorage", "UntypedStorage")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _safe_reconstruct_persistent_obj,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _numpy_attr("_reconstruct")
        allowed[(module, "scalar")] = _numpy_attr("scalar")
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = _numpy_numeric_frombuffer()
    for name in ("set", "frozenset", "slice", "complex", "list", "dict", "tuple", "bytearray", "range"):
        allowed[("builtins", name)] = getattr(__import__("builtins"), name)
    for name in _TORCH_DTYPES:
        allowed[("torch", name)] = getattr(torch, name)
    for name in _STORAGE_TYPES:
        if hasattr(torch, name):
            allowed[("torch", name)] = getattr(torch, name)
    for name, cls in _CONTAINERS.items():
        allowed[("torch.nn.modules.container", name)] = cls
    return allowed


_ALLOWED = _allowed_globals()


class EDMUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only allow-listed globals (see the module docstring)."""

    def __init__(self, file, *, source: str = "pickle", **kwargs):
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module, name):
        # Protocol < 3 pickles name some globals the Python 2 way (``__builtin__.set``).
        key = _compat_pickle.NAME_MAPPING.get((module, name),
                                              (_compat_pickle.IMPORT_MAPPING.get(module, module), name))
        target = _ALLOWED.get(key)
        if target is None:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}' from {self._source}: it is not on the allow-list "
                f"for EDM network pickles (tensors, storages, containers, EDM persistent objects); "
                f"the file may contain code")
        return target

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"refusing persistent id {pid!r} in {self._source}: EDM network pickles "
                                     f"have none (is this a torch.save file? use torch.load(weights_only=True))")


# ---------------------------------------------------------------------------------------------
# Public API.

def load_edm_pickle_data(path) -> Any:
    """Safely unpickle an EDM network pickle; persistent objects become :class:`PersistentObject`."""
    with open(path, "rb") as f:
        return EDMUnpickler(f, source=str(path)).load()


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
    backbone = getattr(networks, "_BACKBONES", {}).get(model_type) or getattr(networks, str(model_type), None)
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
    positional = [p for p in inspect.signature(networks.EDMPrecond.__init__).parameters if p not in ("self",
                                                                                                    "model_kwargs")]
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


def load_edm_pickle(path, key: str = "ema", device="cpu") -> torch.nn.Module:
    """Load the network under ``key`` (``"ema"``, or ``"net"``) of an EDM pickle into ``build_network``.

    No code from the pickle runs. Returns the network (``EDMPrecond``) on ``device`` in eval mode.
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
    net = networks.build_network(network_config(obj))
    networks.load_edm_state_dict(net, edm_state_dict(obj))
    return net.to(device).eval()
