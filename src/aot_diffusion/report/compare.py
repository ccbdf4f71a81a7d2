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


def transposed(csv_text: str) -> str:
    """A row per parameter or metric, a column per experiment (named as `dvc exp show` names it)."""
    df = pd.read_csv(io.StringIO(csv_text), dtype=str, keep_default_na=False)
    if df.empty:
        return "no experiments (run `dvc exp run -S ...` first)"
    names = [exp or rev for exp, rev in zip(df["Experiment"], df["rev"])]
    values = df.drop(columns=[c for c in _ROW_ID if c in df.columns]).map(_short)
    values.index = names
    return values.T.to_string() if len(values.columns) else "no parameter or metric differs among the experiments"
