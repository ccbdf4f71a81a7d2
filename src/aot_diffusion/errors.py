"""The errors a run stops with on bad input, in one module that imports nothing of the package: every layer (the
schema, the plugin loader, the parameter views, the stages) raises them without importing another layer."""

from __future__ import annotations

__all__ = ["ParamError", "UndeclaredParam"]


class ParamError(ValueError):
    """A missing, unknown, malformed or out-of-range parameter."""


class UndeclaredParam(KeyError):
    """A stage read a parameter that its entry in the stage table (dag.py) does not declare."""

    def __str__(self):
        return self.args[0]
