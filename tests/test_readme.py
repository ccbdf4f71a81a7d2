"""The README is the run: its result tables are generated from the default run's files in docs/results/, and every
number with a decimal point in its results prose is one of those files' numbers (at the README's rounding)."""

import json
import re

import pandas as pd
import pytest

from aot_diffusion.report.readme import update_readme
from test_pipeline import ROOT

RESULTS = ROOT / "docs" / "results"
# Decimal numbers in the results prose that are not measurements of the run (a t quantile, parameter values).
NOT_MEASURED = {"12.7", "0.045", "0.3", "0.5"}
_NUMBER = re.compile(r"(?<![\w.])[+-]?\d+\.\d+(?![\w.])")


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start):text.index(end)]


def _values(paths) -> list[float]:
    values = []
    for path in paths:
        if path.suffix == ".csv":
            df = pd.read_csv(path)
            values += [float(v) for v in df.select_dtypes("number").to_numpy().ravel() if pd.notna(v)]
        elif path.suffix == ".json":
            values += [float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", path.read_text())]
        else:
            values += [float(v) for v in _NUMBER.findall(path.read_text())]
    return values


def _found(token: str, values) -> bool:
    decimals = len(token.split(".")[1])
    x = float(token)
    return any(abs(round(v, decimals) - x) < 10 ** -decimals / 2 + 1e-9 or
               abs(round(abs(v), decimals) - abs(x)) < 10 ** -decimals / 2 + 1e-9 for v in values)


def test_readme_tables_are_generated_from_the_runs_files():
    stale = update_readme(ROOT / "README.md", RESULTS, check=True)
    assert not stale, f"README blocks differ from docs/results (run `aot-diffusion readme`): {stale}"


@pytest.mark.parametrize("start, end, sources", [
    ("## Results (digits profile)", "## Pool-size study", ["*.csv", "metrics.json", "floor.json"]),
    ("## Pool-size study", "## Paper scale", ["pool_size_study.md"]),
])
def test_every_results_number_is_in_the_files_it_cites(start, end, sources):
    text = (ROOT / "README.md").read_text()
    prose = re.sub(r"<!-- generated: (\w+) -->.*?<!-- end: \1 -->", "", _section(text, start, end), flags=re.S)
    values = _values([p for pattern in sources for p in RESULTS.glob(pattern)])
    missing = [t for t in _NUMBER.findall(prose) if t.lstrip("+-") not in NOT_MEASURED and not _found(t, values)]
    assert not missing, f"README numbers not in docs/results ({sources}): {missing}"


def test_the_checker_fails_on_a_number_the_run_did_not_measure():
    values = _values(RESULTS.glob("*.csv"))
    assert not _found("123456.7", values)
    assert json.loads((RESULTS / "metrics.json").read_text())  # the cited files exist and parse
