"""Plugins (plugins.py): a researcher's pairing or metric file, named in the parameters, is imported before the
schema judges anything, is refused with the parameter named when it is wrong, and is part of the parameter
records of exactly the stages that import it. The end-to-end run is tests/test_pipeline.py
(test_a_plugin_pairing_and_metric_run_through_the_smoke_run)."""

import shutil
from pathlib import Path

import pytest

from aot_diffusion.aot import PAIRINGS, unregister_pairing
from aot_diffusion.dag import Plan, stage
from aot_diffusion.metrics.scores import METRICS
from aot_diffusion.params import ParamError, compose

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).parent / "fixtures" / "plugins"


def _unload_plugins():
    """The registries as the package defines them (another test in this process may have loaded a plugin)."""
    from aot_diffusion import plugins

    for name in [n for n, v in PAIRINGS.items() if v.__module__.startswith("aot_diffusion_plugins")]:
        unregister_pairing(name)
    for name in [n for n, v in METRICS.items() if v.fn.__module__.startswith("aot_diffusion_plugins")]:
        del METRICS[name]
    plugins._LOADED.clear()


@pytest.fixture
def project(tmp_path):
    _unload_plugins()
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    for kind in ("pairings", "metrics"):
        (tmp_path / "plugins" / kind).mkdir(parents=True)
    yield tmp_path
    _unload_plugins()


def _add(project, kind, name, text=None):
    path = project / "plugins" / kind / f"{name}.py"
    path.write_text(text if text is not None else (PLUGINS / kind / f"{name}.py").read_text())
    return path


def test_a_plugin_pairing_is_a_choice_and_its_metric_a_column(project):
    _add(project, "pairings", "toy_sorted")
    _add(project, "metrics", "toy_brightness")
    uses = {"models": {"aot_uncond": {"pairing": "toy_sorted"}}}
    with pytest.raises(ParamError, match="models.aot_uncond.pairing.*toy_sorted"):  # not listed: not a choice
        compose("smoke", uses, root=project)
    p = compose("smoke", {"plugins": {"pairings": ["toy_sorted"], "metrics": ["toy_brightness"]}, **uses},
                root=project)
    assert p["models"]["aot_uncond"]["pairing"] == "toy_sorted"
    assert "toy_brightness" in METRICS and METRICS["toy_brightness"].headline


def test_a_pairing_plugin_declares_its_options_and_the_records_hold_them(project):
    """The Sinkhorn plugin (plugins/pairings/sinkhorn.py) declares `reg`: a variant that uses it must set it, with
    the declared type and range; its value is in the records of the jobs that train with it, and only theirs."""
    (project / "plugins" / "pairings" / "sinkhorn.py").write_text((ROOT / "plugins/pairings/sinkhorn.py").read_text())
    study = lambda options: {"plugins": {"pairings": ["sinkhorn"]}, "pool_study": {"variants": {  # noqa: E731
        "sinkhorn32": {"pairing": "sinkhorn", "pool_size": 32, **options}}}}
    with pytest.raises(ParamError, match=r"pool_study.variants.sinkhorn32.pairing_options.*declares the options \['reg'\]"):
        compose("smoke", study({}), root=project)
    with pytest.raises(ParamError, match=r"pool_study.variants.sinkhorn32.pairing_options.reg.*must be a number"):
        compose("smoke", study({"pairing_options": {"reg": "big"}}), root=project)
    with pytest.raises(ParamError, match=r"unknown parameter 'pool_study.variants.sinkhorn32.pairing_options.eps'"):
        compose("smoke", study({"pairing_options": {"reg": 0.1, "eps": 1}}), root=project)
    records = {}
    for reg in (0.05, 0.1):
        p = compose("smoke", study({"pairing_options": {"reg": reg}}), root=project)
        plan = Plan(p, project)
        records[reg] = {job: plan.digest(stage(st), k) for job in
                        (("pool_train", "sinkhorn32"), ("pool_train", "pool128"), ("train", "aot_uncond_s0"))
                        for st, k in [job]}
        record = plan.record(stage("pool_train"), "sinkhorn32")
        assert record["params"]["pool_study.variants.sinkhorn32"]["pairing_options"] == {"reg": reg}
        assert list(record["plugins"]) == ["plugins/pairings/sinkhorn.py"]
        assert plan.ctx.trained("sinkhorn32", variant=True)["pairing_options"] == {"reg": reg}
    assert [job for job in records[0.05] if records[0.05][job] != records[0.1][job]] == [("pool_train", "sinkhorn32")]


@pytest.mark.parametrize("kind, name, text, message", [
    ("metrics", "absent", None, r"plugins.metrics\[0\].*no plugin file plugins/metrics/absent.py"),
    ("metrics", "broken", "raise RuntimeError('oops')\n", r"plugins.metrics\[0\].*importing.*RuntimeError: oops"),
    ("metrics", "empty", "x = 1\n", r"registered no metric"),
    ("pairings", "toy_brightness", None, r"plugins.pairings\[0\].*registered metrics.*plugins.metrics"),
    ("metrics", "Bad-Name", "", r"plugins.metrics\[0\].*not a plugin name"),
])
def test_a_wrong_plugin_stops_the_run_naming_the_parameter(project, kind, name, text, message):
    if name != "absent" and name != "Bad-Name":
        if text is None:
            (project / "plugins" / kind / f"{name}.py").write_text((PLUGINS / "metrics" / f"{name}.py").read_text())
        else:
            _add(project, kind, name, text)
    with pytest.raises(ParamError, match=message):
        compose("smoke", {"plugins": {kind: [name]}}, root=project)


def test_a_plugin_edit_changes_the_records_of_what_uses_it_only(project):
    metric = _add(project, "metrics", "toy_brightness")
    pairing = _add(project, "pairings", "toy_sorted")
    p = compose("smoke", {"plugins": {"pairings": ["toy_sorted"], "metrics": ["toy_brightness"]},
                          "pool_study": {"variants": {"toy32": {"pairing": "toy_sorted", "pool_size": 32}}}},
                root=project)
    jobs = [("fd_reference", None), ("fd", "edm_uncond_s0"), ("tables", None), ("pool_fd", "pool128"),
            ("train", "edm_uncond_s0"), ("train", "aot_uncond_s0"), ("pool_train", "toy32"),
            ("pool_train", "pool128"), ("sample", "edm_uncond_s0"), ("train_discriminator", "dg_edm_uncond"),
            ("curvature", "aot_uncond_s0")]

    def digests():
        plan = Plan(p, project)
        return {(st, k): plan.digest(stage(st), k) for st, k in jobs}

    def changed_by(path, text, docstring=False):
        before, original = digests(), path.read_text()
        path.write_text(original.replace('"""', '"""Edited. ', 1) if docstring else original + text)
        try:
            return {job for job, d in digests().items() if d != before[job]}
        finally:
            path.write_text(original)

    # a comment or a docstring is not code
    assert changed_by(metric, "# edited\n") == set() and changed_by(pairing, "", docstring=True) == set()
    assert changed_by(metric, "EDITED = 1\n") == {("fd_reference", None), ("fd", "edm_uncond_s0"), ("tables", None),
                                                  ("pool_fd", "pool128")}
    assert changed_by(pairing, "EDITED = 1\n") == {("pool_train", "toy32")}  # its only user
    record = Plan(p, project).record(stage("pool_train"), "toy32")
    assert list(record["plugins"]) == ["plugins/pairings/toy_sorted.py"]
    assert "plugins" not in Plan(p, project).record(stage("train"), "edm_uncond_s0")  # EDM runs no plugin
