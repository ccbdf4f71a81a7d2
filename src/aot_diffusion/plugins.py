"""A researcher's own pairings and metrics, without editing the package: Python files in ``plugins/pairings/``
and ``plugins/metrics/``, named in params.yaml (``plugins.pairings``, ``plugins.metrics``).

params.validate imports them before the schema judges anything (so a model or a study variant may name a pairing
that a plugin registers), every stage process imports them the same way, and the stages that pair noise or
score samples declare the list; a plugin's name *and its code* are part of the records of the jobs that use
it (dag.Plan.plugins_used: scoring jobs every metric plugin, a training job its own pairing's), so an edit
reruns what it affects, at either front door.
A file under ``pairings`` must register pairings only (aot.register_pairing), one under ``metrics`` metrics only
(metrics.scores.register_metric): which list names a file decides which jobs rerun when it changes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Mapping

from .errors import ParamError

__all__ = ["FAMILIES", "plugin_path", "load_plugins"]

PLUGIN_DIR = Path("plugins")
FAMILIES = ("pairings", "metrics")
_LOADED: dict[str, str] = {}  # module name -> sha256 of the file it was imported from


def plugin_path(family: str, name: str) -> Path:
    """``plugins/<family>/<name>.py``, relative to the project root."""
    return PLUGIN_DIR / family / f"{name}.py"


def _registry(family: str) -> dict:
    if family == "pairings":
        from .aot import PAIRINGS

        return PAIRINGS
    from .metrics.scores import METRICS

    return METRICS


def _unregister(family: str, name: str) -> None:
    if family == "pairings":
        from .aot import unregister_pairing

        unregister_pairing(name)
    else:
        del _registry(family)[name]


def _registered_by(module: str, family: str) -> list:
    return [n for n, v in _registry(family).items() if getattr(v, "fn", v).__module__ == module]


def load_plugins(p: Mapping, root: Path | str = ".") -> None:
    """Import every plugin named in ``p['plugins']`` (once per process and content); a missing file, an import
    error, or a file that registers nothing or into the other family's registry stops the run, naming the
    parameter."""
    for family in FAMILIES:
        for i, name in enumerate(p.get("plugins", {}).get(family, [])):
            where, rel = f"plugins.{family}[{i}]", plugin_path(family, name)
            path = Path(root) / rel
            if not path.is_file():
                raise ParamError(f"parameter {where!r}: no plugin file {rel} (a plugin named {name!r} is the file "
                                 f"plugins/{family}/{name}.py in the project root)")
            module = f"aot_diffusion_plugins.{family}.{name}"
            content = hashlib.sha256(path.read_bytes()).hexdigest()
            if _LOADED.get(module) == content:
                continue
            for k in FAMILIES:  # a file imported again (edited, or another copy of the project): its entries anew
                for entry in _registered_by(module, k):
                    _unregister(k, entry)
            spec = importlib.util.spec_from_file_location(module, path)
            code = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(code)
            except Exception as exc:  # the researcher's code: name the file and the error
                raise ParamError(f"parameter {where!r}: importing {rel} failed: {type(exc).__name__}: {exc}") from exc
            sys.modules[module] = code
            other = next(k for k in FAMILIES if k != family)
            if _registered_by(module, other):
                raise ParamError(f"parameter {where!r}: {rel} registered {other} {_registered_by(module, other)}; list "
                                 f"it under plugins.{other} (the list decides what reruns when the file changes)")
            if not _registered_by(module, family):
                raise ParamError(f"parameter {where!r}: {rel} registered no {family[:-1]} (use "
                                 f"{'aot.register_pairing' if family == 'pairings' else 'metrics.scores.register_metric'})")
            _LOADED[module] = content
