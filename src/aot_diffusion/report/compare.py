"""DVC experiments side by side, readable on one screen: ``aot-diffusion compare`` (``make compare``).

`dvc exp show` prints one column per parameter, metric and dependency. The comparison keeps what varies
among the experiments (``--only-changed``), drops the hash of every changed dependency (DVC always lists
them: a rho experiment changes every sample file), keeps the held-out floor for scale (``--keep``), and
prints the result transposed: a row per parameter or metric, a column per experiment.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import pandas as pd

FLAGS = ("--only-changed", "--drop", r"^(results|plugins|data)/|^params\.yaml$", "--keep", r"^floor\.fi?d_heldout\.")
_ROW_ID = ("Experiment", "rev", "typ", "parent", "Created", "State", "Executor")


def exp_show_command(*extra: str) -> list[str]:
    return ["dvc", "exp", "show", *FLAGS, *extra]


def exp_show_csv(*extra: str, root=".") -> str:
    if shutil.which("dvc") is None:
        raise SystemExit("compare: `dvc` is not on PATH (pip install -e '.[test]' installs it)")
    out = subprocess.run(exp_show_command("--csv", *extra), cwd=root, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"compare: dvc exp show failed:\n{out.stderr.strip()}")
    return out.stdout


def _short(cell: str) -> str:
    """Four significant digits for a number (the CSV keeps them all); anything else as it is."""
    try:
        return f"{float(cell):.4g}" if cell.strip() not in ("", "-") and not cell.isdigit() else cell
    except ValueError:
        return cell


# A text cell wider than this is cut (an `intervals` description is 131 characters) and given in full below.
CELL_WIDTH = 28


def parameter_names(p, prefix: str = "") -> set:
    """The dotted leaf names of a parameter tree, as `dvc exp show` names its parameter columns."""
    if not isinstance(p, dict) or not p:
        return {prefix}
    return set().union(*(parameter_names(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in p.items()))


def _label(name: str, row: pd.Series, base: pd.Series | None, params: list) -> str:
    """An experiment named by what it changed: `name: key=value` (the key's last two parts), `+N` for more."""
    if base is None or row is base:
        return name
    changed = [c for c in params if row[c] != base[c]]
    if not changed:
        return name
    key = ".".join(changed[0].split(".")[-2:])
    return f"{name}: {key}={row[changed[0]]}" + (f" +{len(changed) - 1}" if len(changed) > 1 else "")


def transposed(csv_text: str, params: set | None = None) -> str:
    """A row per parameter or metric, a column per experiment. With ``params`` (parameter names, e.g. from
    :func:`parameter_names`): the changed parameters first, then the metrics, and each experiment labelled by
    what it changed from the baseline. Text cells over :data:`CELL_WIDTH` characters are cut and given in full
    below the table."""
    df = pd.read_csv(io.StringIO(csv_text), dtype=str, keep_default_na=False)
    if df.empty:
        return "no experiments (run `dvc exp run -S ...` first)"
    values = df.drop(columns=[c for c in _ROW_ID if c in df.columns]).map(_short)
    ordered = [c for c in values.columns if params and c in params]
    ordered += [c for c in values.columns if c not in ordered]
    values = values[ordered]
    typ = df["typ"] if "typ" in df.columns else pd.Series([""] * len(df))
    base = next((values.iloc[i] for i, t in enumerate(typ) if t == "baseline"), None)
    names = [exp or rev for exp, rev in zip(df["Experiment"], df["rev"])]
    params_shown = [c for c in ordered if params and c in params]
    values.index = [_label(n, values.iloc[i], base, params_shown) for i, n in enumerate(names)]
    if not len(values.columns):
        return "no parameter or metric differs among the experiments"
    notes: list = []

    def cut(cell: str) -> str:
        if len(cell) <= CELL_WIDTH:
            return cell
        if cell not in notes:
            notes.append(cell)
        return f"{cell[:CELL_WIDTH - 4]}…[{notes.index(cell) + 1}]"

    table = values.map(cut).T.to_string()
    return table + "".join(f"\n[{i + 1}] {text}" for i, text in enumerate(notes))
