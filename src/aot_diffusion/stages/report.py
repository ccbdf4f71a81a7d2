"""Report stages: tables (+ the headline metrics of `dvc exp show`) and figures."""

from __future__ import annotations

from . import Run


def tables(run: Run) -> None:
    from ..report.tables import write_tables

    write_tables(run.p, run.L, log=run.log)


def figures(run: Run) -> None:
    from ..report.figures import write_figures

    write_figures(run.p, run.L, log=run.log)
