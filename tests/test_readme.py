"""The README and its docs pages are the run: their result tables are generated from the default run's files in
docs/results/, every number with a decimal point in the results prose (docs/results.md) is one of those files'
numbers (at the page's rounding), and the README stays short and names only commands that exist."""

import json
import re

import pandas as pd
import pytest

from aot_diffusion.report.readme import update_pages
from test_pipeline import ROOT

RESULTS = ROOT / "docs" / "results"
# Decimal numbers in the results prose that are not measurements of the run (a t quantile, parameter values).
NOT_MEASURED = {"12.7", "0.045", "0.3", "0.5"}
_NUMBER = re.compile(r"(?<![\w.])[+-]?\d+\.\d+(?![\w.])")


def _section(text: str, start: str, end: str | None) -> str:
    return text[text.index(start):text.index(end) if end else None]


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
    stale = update_pages(ROOT, RESULTS, check=True)
    assert not stale, f"generated blocks differ from docs/results (run `aot-diffusion readme`): {stale}"


@pytest.mark.parametrize("start, end, sources", [
    ("## Results (digits profile)", "## Four training seeds", ["*.csv", "metrics.json", "floor.json"]),
    ("## Four training seeds", "## Pool-size study", ["seeds4/*.csv", "seeds4/metrics.json", "*.csv"]),
    ("## Pool-size study", None, ["pool_size_study.md"]),
])
def test_every_results_number_is_in_the_files_it_cites(start, end, sources):
    text = (ROOT / "docs" / "results.md").read_text()
    prose = re.sub(r"<!-- generated: (\w+) -->.*?<!-- end: \1 -->", "", _section(text, start, end), flags=re.S)
    values = _values([p for pattern in sources for p in RESULTS.glob(pattern)])
    missing = [t for t in _NUMBER.findall(prose) if t.lstrip("+-") not in NOT_MEASURED and not _found(t, values)]
    assert not missing, f"docs/results.md numbers not in docs/results ({sources}): {missing}"


def test_the_checker_fails_on_a_number_the_run_did_not_measure():
    values = _values(RESULTS.glob("*.csv"))
    assert not _found("123456.7", values)
    assert json.loads((RESULTS / "metrics.json").read_text())  # the cited files exist and parse


def test_the_readme_is_short_and_its_commands_and_links_exist():
    """Under 12 KB; every `make X` is a Makefile target, every `aot-diffusion X` a subcommand, every Snakemake
    target named after `--cores all` a rule, every relative link a file."""
    import subprocess

    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 12_000
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    assert set(re.findall(r"\bmake ([a-z][\w-]*)", text)) <= targets
    helptext = subprocess.run(["aot-diffusion", "--help"], capture_output=True, text=True, check=True).stdout
    subcommands = set(re.search(r"\{([\w,-]+)\}", helptext)[1].split(","))
    assert set(re.findall(r"aot-diffusion ([a-z][\w-]*)", text)) <= subcommands
    rules = set(re.findall(r"^rule (\w+):", "".join(p.read_text() for p in [ROOT / "Snakefile",
                                                                              *ROOT.glob("workflow/rules/*.smk")]), re.M))
    assert set(re.findall(r"snakemake --cores all (?!--)([a-z_]+)", text)) <= rules
    for link in re.findall(r"\]\(((?!https?:)[^)#]+)\)", text):
        assert (ROOT / link).exists(), link
    for page in ROOT.glob("docs/*.md"):
        for link in re.findall(r"\]\(((?!https?:)[^)#]+)\)", page.read_text()):
            assert (page.parent / link).exists(), f"{page.name}: {link}"
