"""Report stages: tables (+ the headline metrics of `dvc exp show`), figures, and the pool-size study's report."""

from __future__ import annotations

from . import Run


def tables(run: Run) -> None:
    from ..report.tables import write_tables

    write_tables(run.params, run.layout, log=run.log)


def calibration(run: Run) -> None:
    from ..report.tables import write_calibration

    write_calibration(run.params, run.layout, run.plan.ctx.calibration_keys(), log=run.log)


def figures(run: Run) -> None:
    from ..report.figures import write_figures

    write_figures(run.params, run.layout, log=run.log)


def pool_study(run: Run) -> None:
    from ..report.pool_study import write_pool_study

    write_pool_study(run.params, run.layout.pool_study, log=run.log)
