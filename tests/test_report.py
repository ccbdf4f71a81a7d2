"""Table and figure logic on a small fixture (no pipeline run): the floor row, paired differences marked
outside the noise only when their interval excludes 0, metric names, and figures with their content."""

import json

import numpy as np
import pandas as pd
import pytest

from aot_diffusion.layout import Layout, sample_key
from aot_diffusion.params import compose, edm_aot_pairs, guidance_settings, model_instances
from aot_diffusion.layout import TABLE_NAMES
from aot_diffusion.report import figures, tables
from aot_diffusion.sample_files import write_sweep
from aot_diffusion.utils import atomic_write_text

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    """Stage outputs of a made-up smoke run (two training seeds, two sampling seeds): EDM's samples are
    noisier than AOT's at NFE 3 only."""
    root = tmp_path_factory.mktemp("run")
    p = compose("smoke", root=ROOT)
    L = Layout("smoke", root)
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 4))
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    L.fd_reference.parent.mkdir(parents=True)
    np.savez(L.fd_reference, mu=mu, sigma=sigma, mu_heldout=mu, sigma_heldout=sigma, ref_features=ref,
             train_features=ref, heldout_features=ref)
    atomic_write_text(L.fd_floor, json.dumps(dict(n=64, features="test", metrics=dict(
        fd=dict(value=0.1, low=0.05, high=0.2), kid=dict(value=0.0, low=-0.01, high=0.01)))))
    atomic_write_text(L.feature_network_metrics, json.dumps({"classifier_test_accuracy": 0.9}))
    atomic_write_text(L.effective_params, "profile: smoke\n")
    n = 64
    for key, (model, train_seed) in model_instances(p).items():
        spec = p["models"][model]
        rows, feats, images = [], {}, {}
        grid = [(st, float(r)) for r in p["sample"]["rho"] for st in p["sample"]["steps"]]
        grid += [x for x in guidance_settings(p, spec["conditional"]) if x not in grid]
        for steps, rho in grid:
            for seed in p["sample"]["seeds"]:
                shift = 3.0 if (spec["pairing"] == "none" and steps == 2) else 0.0  # EDM much worse at the fewest steps
                f = rng.normal(size=(n, 4)) + shift
                feats[sample_key(steps, rho, seed)] = f
                images[(steps, rho, seed)] = np.clip(rng.normal(size=(n, 1, 8, 8)) * 0.3, -1, 1)
                value = 1 + shift ** 2 + 0.5 * train_seed + 0.1 * seed
                rows.append(dict(model=key, steps=steps, rho=rho, nfe=2 * steps - 1, seed=seed, n=n,
                                 disc_grad_evals=0, fd=value, fd_low=value - 0.5, fd_high=value + 0.5, kid=0.1,
                                 kid_low=0.0, kid_high=0.2, fd_heldout=value + 1, fd_heldout_low=value + 0.5,
                                 fd_heldout_high=value + 1.5, nn_train_dist=3.0))
        L.fd(key).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(L.fd(key), index=False)
        np.savez(L.features(key), **feats)
        write_sweep(L.samples(key), images)
        L.loss_log(key).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(dict(step=[2, 4, 6], kimg=[0.1, 0.2, 0.3], loss=[2.0, 1.5, 1.2])).to_csv(L.loss_log(key))
        L.curvature(key).parent.mkdir(parents=True, exist_ok=True)
        grid = np.geomspace(0.002, 80, 8)
        np.savez(L.curvature(key), sigma=grid, kappa_mean=grid * 0, grid=grid, kappa_grid=grid * 0 + 0.01,
                 trunc_steps=np.array([2, 3]), trunc_rho=np.array([7.0, 7.0]), trunc_nfe=np.array([3, 5]),
                 trunc_error=np.array([0.5, 0.2]), strip=np.zeros((8, 1, 8, 8)), strip_sigma=grid,
                 strip_x=np.zeros((8, 1, 8, 8)))
        atomic_write_text(L.curvature_metrics(key), json.dumps(dict(
            curvature_mean=0.01, truncation=[dict(steps=2, rho=7, nfe=3, error=0.5)])))
    bands = {b: dict(accuracy=0.5, bce=0.7, n=10) for b in ("<0.1", "0.1-1", "1-10", ">10")}
    for disc, d in p["guidance"]["discriminators"].items():
        src = tables.first(p, d["model"])
        L.guided_fd(disc).parent.mkdir(parents=True, exist_ok=True)
        pd.read_csv(L.fd(src)).to_csv(L.guided_fd(disc), index=False)
        np.savez(L.guided_features(disc), **dict(np.load(L.features(src))))
        L.discriminator_metrics(disc).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(L.discriminator_metrics(disc), json.dumps(dict(heldout=dict(accuracy=0.6, bands=bands),
                                                                         steps_run=6, best_step=4)))
        pd.DataFrame(dict(step=[2, 4, 6], loss=[0.7, 0.6, 0.5], val_bce=[0.69, 0.6, 0.65],
                          best=[False, True, False])).to_csv(L.discriminator_curve(disc), index=False)
    hyb = []
    for pair, (edm, aot) in edm_aot_pairs(p).items():
        for above in ("aot", "edm"):
            for switch in p["hybrid"]["switch_sigmas"]:
                for steps in p["hybrid"]["steps"]:
                    hyb.append(dict(pair=pair, above=f"{above} (x)", below="y", switch_sigma=switch, steps=steps,
                                    rho=p["hybrid"]["rho"], nfe=2 * steps - 1, seed=0, n=n, fd=2.0, fd_low=1.0,
                                    fd_high=3.0, fd_heldout=2.5, fd_heldout_low=1.5, fd_heldout_high=3.5,
                                    nn_train_dist=3.0))
    L.hybrid_fd.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(hyb).to_csv(L.hybrid_fd, index=False)
    tables.write_tables(p, L, log=lambda m: None)  # the FD figures draw the tables' CSVs
    return p, L


def test_tables_floor_row_paired_differences_and_metric_names(fixture_run):
    p, L = fixture_run
    t1, t2, t3 = tables.write_tables(p, L, log=lambda m: None)
    assert t1.iloc[0]["model"].startswith("real") and t1.iloc[0]["fd"] == 0.1
    diffs = pd.read_csv(L.table("aot_vs_edm"))
    few = diffs[diffs["steps"] == 2]
    assert few["outside_noise"].all() and (few["low"] > 0).all()  # EDM clearly worse at NFE 3
    assert not diffs[diffs["steps"] == 3]["outside_noise"].any()  # same distribution: inside the noise
    assert not t2["outside_noise"].any()  # guided == unguided here
    metrics = json.loads(L.metrics.read_text())
    # headline only: floors, EDM minus AOT at every rho and NFE, memorisation, curvature, DG gains
    assert metrics["floor.fd"] == dict(value=0.1, interval="[0.05, 0.2]") and metrics["floor.kid"]["value"] == 0.0
    steps_rho = [(st, r) for st in p["sample"]["steps"] for r in p["sample"]["rho"]]
    assert {f"aot_vs_edm.{pair}.fd_heldout_rho{r:g}_nfe{2 * st - 1}" for pair in ("uncond", "cond")
            for st, r in steps_rho} <= set(metrics)
    # memorisation at the sweep's largest NFE; DG at the paper's setting (Table 2 has the others)
    assert {"dg_edm_uncond.gain_fd_heldout_rho90_nfe5", "dg_edm_cond.gain_fd_heldout_rho72_nfe5",
            "edm_uncond.nn_train_dist_rho7_nfe5", "edm_uncond.curvature_mean"} <= set(metrics)
    assert not any(k.startswith("dg_") and "_rho7_" in k for k in metrics)
    assert not any(".nn_train_dist" in k and not k.endswith("_nfe5") for k in metrics if not k.startswith("floor."))
    gain = metrics["dg_edm_uncond.gain_fd_heldout_rho90_nfe5"]
    row = t2[(t2["discriminator"] == "dg_edm_uncond") & (t2["rho"] == 90)].iloc[0]
    assert gain["gain"] == pytest.approx(row["gain"])  # the bounds: two columns in `dvc exp show`, not three
    assert json.loads(gain["interval"]) == pytest.approx([row["gain_low"], row["gain_high"]], rel=1e-3)
    assert not any(k.startswith("hybrid.") or ".fd_rho" in k or "accuracy_by_sigma" in k for k in metrics)
    assert not any("fid" in k for k in metrics)
    assert "FD (digits-classifier features)" in L.table("table1_fd_vs_nfe", "md").read_text()


def test_a_mean_over_seeds_comes_with_an_interval_over_seeds(fixture_run):
    """Two sampling seeds (smoke): Table 1 gives their mean FD with a t-interval over the seeds, never the
    first seed's bootstrap interval beside the mean; one seed gives that seed's value and interval."""
    import scipy.stats

    p, L = fixture_run
    assert len(p["sample"]["seeds"]) == 2
    t1, _, _ = tables.write_tables(p, L, log=lambda m: None)
    raw = pd.read_csv(L.fd("edm_uncond_s0"))
    row = t1[(t1["model"] == "edm_uncond") & (t1["train_seed"] == 0) & (t1["rho"] == 7) & (t1["steps"] == 2)].iloc[0]
    per_seed = raw[(raw["rho"] == 7) & (raw["steps"] == 2)].sort_values("seed")
    first = per_seed.iloc[0]
    assert row["seeds"] == 2 and row["fd"] == pytest.approx(per_seed["fd"].mean())
    assert (row["fd_low"], row["fd_high"]) != (first["fd_low"], first["fd_high"])
    half = scipy.stats.t.ppf(0.975, 1) * per_seed["fd"].std(ddof=1) / 2 ** 0.5
    assert row["fd_low"] == pytest.approx(row["fd"] - half) and row["fd_high"] == pytest.approx(row["fd"] + half)
    one = tables._summary(per_seed.iloc[:1], 0.95).iloc[0]
    assert (one["fd"], one["fd_low"], one["fd_high"]) == (first["fd"], first["fd_low"], first["fd_high"])


def test_intervals_are_labelled_with_the_configured_level(fixture_run):
    """fd.ci_level 0.9: every table caption, the pool study's header and the metric keys say 90 %, none 95 %."""
    import copy

    p, L = fixture_run
    q = copy.deepcopy(p)
    q["fd"]["ci_level"] = 0.9
    tables.write_tables(q, L, log=lambda m: None)
    for name in ("table1_fd_vs_nfe", "table2_guidance", "aot_vs_edm", "hybrid_switch"):
        text = L.table(name, "md").read_text()
        assert "90%" in text and "95%" not in text, name
    intervals = json.loads(L.metrics.read_text())["intervals"]
    assert intervals.startswith("90%") and "95%" not in intervals
    tables.write_tables(p, L, log=lambda m: None)  # back to the fixture's 0.95 for the other tests
    assert json.loads(L.metrics.read_text())["intervals"].startswith("95%")


def test_figures_have_their_content(fixture_run, monkeypatch):
    p, L = fixture_run
    drawn = {}
    real_save = figures._save

    def spy(fig, path):
        axes = fig.get_axes()
        drawn[path.stem + ".axes"] = axes
        drawn[path.stem] = dict(lines=sum(len(a.get_lines()) for a in axes), images=sum(len(a.get_images()) for a in axes),
                                title=" ".join([fig._suptitle.get_text() if fig._suptitle else ""] +
                                               [a.get_title() for a in axes]))
        real_save(fig, path)

    monkeypatch.setattr(figures, "_save", spy)
    figures.write_figures(p, L, log=lambda m: None)
    models = len(p["models"])
    # one curve with its interval per model and rho panel, plus the floor line in each panel
    assert sum(len(a.containers) for a in drawn["fd_vs_nfe.axes"]) == len(p["sample"]["rho"]) * models
    assert "smoke profile" in drawn["fd_vs_nfe"]["title"] and "64 samples" in drawn["fd_vs_nfe"]["title"]
    assert drawn["curvature_vs_sigma"]["lines"] == models
    assert drawn["samples_low_nfe"]["images"] == models
    assert drawn["teaser_denoiser_strip"]["images"] == models * 8
    assert drawn["rho_steps_heatmap"]["images"] == models
    assert drawn["loss_curves"]["lines"] == models * len(p["train"]["seeds"])  # every trained model
    looks = {(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in drawn["loss_curves.axes"][0].get_lines()}
    assert len(looks) == models * len(p["train"]["seeds"])  # each seed of each model its own style
    assert "mean of 2 training seeds" in drawn["fd_vs_nfe"]["title"]
    discs = len(p["guidance"]["discriminators"])
    assert drawn["dg_learning_curves"]["lines"] == 3 * discs + 2  # held-out, training, kept step; chance per panel
    # hybrid: per pair, NFE and order one line from pure to pure through the switch points
    assert drawn["hybrid_switch"]["lines"] == len(edm_aot_pairs(p)) * len(p["hybrid"]["steps"]) * 2
    assert all(L.figure(name).exists() for name in drawn if not name.endswith(".axes"))
    # What is drawn is the table's numbers: edm_uncond's curve at rho 7 is its mean over training seeds.
    t1 = pd.read_csv(L.table("table1_fd_vs_nfe"))
    want = t1[(t1["model"] == "edm_uncond") & (t1["train_seed"] == "mean") & (t1["rho"] == 7)].sort_values("nfe")
    line = next(c for c in drawn["fd_vs_nfe.axes"][0].containers if c.get_label() == "edm_uncond").lines[0]
    assert list(line.get_xdata()) == list(want["nfe"]) and np.allclose(line.get_ydata(), want["fd_heldout"])
    assert np.allclose(line.get_ydata(), [11.3, 2.3])  # the fixture's values (fd_heldout = fd + 1)


def test_every_fd_figure_draws_its_tables_numbers_and_names_the_statistic(fixture_run, monkeypatch):
    """Each FD figure's points are its table's headline statistic (Table 1's rows, Table 2, the hybrid table),
    its intervals the table's, its y axis names the statistic; PDFs embed TrueType (Type 42) fonts, no Type 3."""
    p, L = fixture_run
    drawn, save = {}, figures._save

    def keep_and_save(fig, path):  # the axes as drawn, and the files (the PDFs' fonts are checked below)
        drawn[path.stem] = fig.get_axes()
        save(fig, path)

    monkeypatch.setattr(figures, "_save", keep_and_save)
    figures.write_figures(p, L, log=lambda m: None)
    t1, t2 = pd.read_csv(L.table("table1_fd_vs_nfe")), pd.read_csv(L.table("table2_guidance"))
    hybrid = pd.read_csv(L.table("hybrid_switch"))
    rows = t1[t1["train_seed"] == "mean"]
    for ax, rho in zip(drawn["fd_vs_nfe"], sorted(rows["rho"].dropna().unique())):
        assert ax.get_ylabel().startswith("fd_heldout: FD") and "held-out" in ax.get_ylabel()
        for c in ax.containers:
            want = rows[(rows["model"] == c.get_label()) & (rows["rho"] == rho)].sort_values("nfe")
            x, y = c.lines[0].get_data()
            assert list(x) == list(want["nfe"]) and np.allclose(y, want["fd_heldout"]), c.get_label()
            tops = c.lines[2][0].get_segments()  # each bar: [(x, low), (x, high)], the low cut at the axis
            assert np.allclose([seg[1][1] for seg in tops], want["fd_heldout_high"])
    heat = {ax.get_title(): ax.get_images()[0].get_array() for ax in drawn["rho_steps_heatmap"] if ax.get_images()}
    for model, values in heat.items():
        want = rows[rows["model"] == model].pivot_table(index="rho", columns="nfe", values="fd_heldout").values
        assert np.allclose(values, np.log10(want)), model
    for ax in drawn["guidance_fd_vs_nfe"]:
        assert ax.get_ylabel().startswith("fd_heldout")
        for c in ax.containers:  # guided, with the table's interval
            want = t2[t2["discriminator"] == c.get_label()]
            assert np.allclose(sorted(c.lines[0].get_ydata()), sorted(want["fd_guided"])), c.get_label()
    ys = sorted(y for ax in drawn["hybrid_switch"] for ln in ax.get_lines() for y in ln.get_ydata())
    assert set(np.round(ys, 9)) <= set(np.round(hybrid["fd_heldout"], 9))
    for name in ("fd_vs_nfe", "guidance_fd_vs_nfe", "hybrid_switch", "curvature_vs_sigma", "loss_curves"):
        pdf = L.figure(name, "pdf").read_bytes()
        assert (b"/CIDFontType2" in pdf or b"/TrueType" in pdf) and b"/Type3" not in pdf, name  # TrueType, embedded


def test_across_training_seeds_a_mean_comes_with_the_interval_over_training_seeds(fixture_run):
    """Two training seeds: Table 1's and the difference table's 'mean' rows are the mean over the training seeds
    with a hierarchical interval over every level (training seeds, sampling seeds, images, reference), the
    t-interval over the per-seed values beside it, never one trained model's interval; metrics.json's headline
    difference is that mean, saying which interval it carries."""
    import scipy.stats

    p, L = fixture_run
    assert p["train"]["seeds"] == [0, 1]
    t1, _, _ = tables.write_tables(p, L, log=lambda m: None)
    sel = (t1["model"] == "aot_uncond") & (t1["rho"] == 7) & (t1["steps"] == 3)
    per_seed, mean = t1[sel & (t1["train_seed"].isin([0, 1]))], t1[sel & (t1["train_seed"] == "mean")].iloc[0]
    assert len(per_seed) == 2 and mean["train_seeds"] == 2
    half = scipy.stats.t.ppf(0.975, 1) * per_seed["fd_heldout"].std(ddof=1) / 2 ** 0.5
    assert mean["fd_heldout"] == pytest.approx(per_seed["fd_heldout"].mean())
    assert (mean["fd_heldout_t_low"], mean["fd_heldout_t_high"]) == pytest.approx((mean["fd_heldout"] - half,
                                                                                  mean["fd_heldout"] + half))
    assert mean["fd_heldout_low"] <= mean["fd_heldout"] <= mean["fd_heldout_high"]
    for _, r in per_seed.iterrows():  # not a trained model's own interval
        assert (mean["fd_heldout_low"], mean["fd_heldout_high"]) != (r["fd_heldout_low"], r["fd_heldout_high"])
    diffs = pd.read_csv(L.table("aot_vs_edm"))
    d = diffs[(diffs["pair"] == "uncond") & (diffs["rho"] == 7) & (diffs["steps"] == 2)]
    seeds, m = d[d["train_seed"] != "mean"], d[d["train_seed"] == "mean"].iloc[0]
    half = scipy.stats.t.ppf(0.975, 1) * seeds["diff"].std(ddof=1) / 2 ** 0.5
    assert (m["t_low"], m["t_high"]) == pytest.approx((m["diff"] - half, m["diff"] + half))
    assert m["low"] <= m["diff"] <= m["high"] and (m["low"], m["high"]) != (m["t_low"], m["t_high"])
    metrics = json.loads(L.metrics.read_text())
    head = metrics["aot_vs_edm.uncond.fd_heldout_rho7_nfe3"]
    assert head["diff"] == pytest.approx(m["diff"])
    assert "hierarchical bootstrap over 2 training seeds" in metrics["intervals"]
    assert "two-sample" in metrics["intervals"]
    assert json.loads(head["interval"]) == pytest.approx([m["low"], m["high"]], rel=1e-3)
    title = L.table("aot_vs_edm", "md").read_text().split("\n")[0]
    assert "reference images resampled" in title and "hierarchical bootstrap" in title


def test_pool_study_table_gains_ratio_and_figure(fixture_run, monkeypatch):
    """The study's report on made-up variant outputs: no-pairing is worse at NFE 3 than every pairing variant."""
    from aot_diffusion.report import pool_study

    p, L0 = fixture_run
    q, L = p, L0.pool_study
    rng = np.random.default_rng(1)
    step_ms, untimed = {}, list(p["pool_study"]["variants"])[-1]
    for k, (name, v) in enumerate(p["pool_study"]["variants"].items()):
        rows, feats = [], {}
        for steps in q["sample"]["steps"]:
            for seed in q["sample"]["seeds"]:
                shift = 3.0 if (v["pairing"] == "none" and steps == 2) else 0.0
                feats[sample_key(steps, q["pool_study"]["rho"], seed)] = rng.normal(size=(64, 4)) + shift
                rows.append(dict(model=name, steps=steps, rho=7.0, nfe=2 * steps - 1, seed=seed, n=64, disc_grad_evals=0,
                                 fd=1 + shift ** 2, fd_low=0.5 + shift ** 2, fd_high=1.5 + shift ** 2, kid=0.1,
                                 kid_low=0.0, kid_high=0.2))
        L.fd(name).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(L.fd(name), index=False)
        np.savez(L.features(name), **feats)
        L.curvature_metrics(name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(L.curvature_metrics(name), json.dumps(dict(
            curvature_mean=0.01 * (k + 1), truncation=[dict(steps=2, rho=7, nfe=3, error=0.5)])))
        L.loss_log(name).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(dict(step=[2, 4, 6], kimg=[0.1, 0.2, 0.3], loss=[2.0, 1.5, 1.2],
                          paired_distance=[8.0 - (v["pairing"] != "none"), np.nan, 8.0 - (v["pairing"] != "none")],
                          random_distance=[8.0, np.nan, 8.0])).to_csv(L.loss_log(name), index=False)
        if name == untimed:  # no timing log (trained before them, or elsewhere): left out of the cost table
            continue
        step_ms[name] = 100.0 + 10 * k  # sec_per_kimg * batch (32) / 1000 * 1000 ms
        L.timing_log(name).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(dict(step=[2, 4, 6], sec_per_kimg=[step_ms[name] / 32] * 3,
                          pair_ms=[5.0, 0.0, 7.0])).to_csv(L.timing_log(name), index=False)
    drawn = {}
    real_save = figures._save

    def spy(fig, path):
        drawn["ticks"] = [t.get_text() for t in fig.get_axes()[0].get_xticklabels()]
        drawn["legend"] = " ".join(t.get_text() for t in fig.get_axes()[0].get_legend().get_texts())
        drawn["titles"] = [a.get_title() for a in fig.get_axes()]
        real_save(fig, path)

    monkeypatch.setattr(figures, "_save", spy)
    lines = []
    df = pool_study.write_pool_study(q, L, log=lines.append)
    variants = p["pool_study"]["variants"]
    assert list(df["variant"]) == list(variants)
    base = next(n for n, v in variants.items() if v["pairing"] == "none")
    others = df[df["variant"] != base]
    assert (others["gain_nfe3_low"] > 0).all()  # every pairing variant clearly better at NFE 3
    assert ((others["gain_nfe5_low"] < 0) & (others["gain_nfe5_high"] > 0)).all()  # same distribution: noise
    assert (others["paired_distance"] == 7.0).all()  # windows without a pool skipped
    # wall-clock cost: not in the tracked table, md, html, metrics or figure; in the untracked cost table
    wall = ("pair_ms", "step_ms", "step_ratio")
    assert not set(wall) & set(df.columns) and not set(wall) & set(pd.read_csv(L.study_table("csv")).columns)
    assert not any(w in L.study_table(ext).read_text() for w in wall for ext in ("md", "html"))
    assert drawn["titles"] == ["sample quality", "pairing distance"]  # no cost panel
    assert L.study_cost == L0.root / "logs" / "smoke" / "pool_size_cost.csv"
    assert L.timing_log("pool512") == L0.root / "logs" / "smoke" / "pool_size" / "pool512.timing.csv"
    assert L0.timing_log("aot_uncond_s0") == L0.root / "logs" / "smoke" / "aot_uncond_s0.timing.csv"
    cost = pd.read_csv(L.study_cost).set_index("variant")
    assert list(cost.index) == [n for n in variants if n != untimed]
    assert any("no timing log" in m and untimed in m for m in lines)
    assert cost["step_ratio"].to_dict() == pytest.approx({n: step_ms[n] / step_ms[base] for n in cost.index})
    assert (cost["pair_ms"] == 6.0).all()  # the mean over the windows in which a pool started
    pools = sorted(v["pool_size"] for v in variants.values() if v["pairing"] == "assignment")
    assert drawn["ticks"] == [str(s) for s in pools] and L.study_figure.exists()
    assert all(v["pairing"] in drawn["legend"] for v in variants.values())  # every pairing of the study is drawn
    md = L.study_table("md").read_text()
    assert "floor at the same N: 0.10" in md and all(f"| {n} |" in md for n in variants)
    assert set(json.loads(L.study_metrics.read_text())) == {f"{n}.fd_nfe{k}" for n in variants for k in (3, 5)}


def test_grid_command_exports_a_full_square_as_png_and_pdf(fixture_run, monkeypatch, capsys):
    from aot_diffusion.cli import main
    from aot_diffusion.params import write_params

    p, L = fixture_run
    monkeypatch.chdir(L.root)
    write_params(p, "params.yaml")
    main(["grid", "--model", "aot_uncond_s0", "--steps", "2", "--rho", "7", "--count", "50"])
    png, pdf = (L.sample_grid("aot_uncond_s0", 2, 7, 0, ext) for ext in ("png", "pdf"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert f"figures/smoke/grids/{png.name}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:  # a setting that was not sampled: named, with what there is
        main(["grid", "--model", "aot_uncond_s0", "--steps", "9", "--rho", "7"])
    assert err.value.code == 2 and "no setting steps 9 rho 7 seed 0; it has steps 2 rho 7" in capsys.readouterr().err


def test_figures_are_paper_ready(fixture_run, monkeypatch):
    """PDF beside every PNG; legends that show each line's style; plain log ticks; a guidance figure with one
    setting per panel still labelled by that setting."""
    import copy

    p, L = fixture_run
    seen = {}
    real_save = figures._save

    def spy(fig, path):
        real_save(fig, path)  # formats the log axes, writes both files
        seen[path.stem] = fig

    monkeypatch.setattr(figures, "_save", spy)
    figures.write_figures(p, L, log=lambda m: None)
    for name in seen:
        assert L.figure(name, "pdf").read_bytes()[:5] == b"%PDF-", name
    for name, fig in seen.items():  # no two x tick labels of an axis overlap (curvature's sigma spans 4.6 decades)
        fig.canvas.draw()
        for a in fig.get_axes():
            lo, hi = sorted(a.get_xlim())
            ticks = [(t.get_window_extent(), t.get_text()) for t in (*a.get_xticklabels(), *a.get_xticklabels(minor=True))
                     if t.get_text() and t.get_visible() and lo <= t.get_position()[0] <= hi]
            ticks.sort(key=lambda b: b[0].x0)
            assert all(b1.x1 <= b2.x0 + 0.5 for (b1, _), (b2, _) in zip(ticks, ticks[1:])), (name, [t for _, t in ticks])
    hybrid = seen["hybrid_switch"]  # its one legend under the panels, off the data
    assert len(hybrid.legends) == 1 and all(a.get_legend() is None for a in hybrid.get_axes())
    ax = seen["fd_vs_nfe"].get_axes()[0]
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= set(p["models"])
    styles = {c.get_label(): c.lines[0].get_linestyle() for c in ax.containers}
    for model, spec in p["models"].items():
        assert styles[model] == ("-" if spec["conditional"] else "--"), model
    assert ax.get_legend().handlelength >= 3  # long enough to show a dash
    assert ax.get_yscale() == "log" and ax.yaxis.get_major_formatter()(2.0) == "2"
    assert ax.yaxis.get_major_formatter()(0.5) == "0.5"

    one = copy.deepcopy(p)
    one["guidance"].update(sample_steps=[3], rho=[7], paper_setting_uncond=dict(steps=3, rho=7),
                           paper_setting_cond=dict(steps=3, rho=7))
    t2 = pd.read_csv(L.table("table2_guidance"))
    figures.guidance_plot(one, t2[(t2["steps"] == 3) & (t2["rho"] == 7)], L.figure("guidance_fd_vs_nfe"))
    for panel in seen["guidance_fd_vs_nfe"].get_axes():
        assert [t.get_text() for t in panel.get_xticklabels()] == ["NFE 5\nrho 7"]
        assert panel.get_xlim() == (-0.5, 0.5)


def test_markdown_tables_as_the_readme_shows_them(fixture_run):
    """No 'nan' cells, booleans as True / False, and Table 1's headline pivoted as "FD [low, high]"."""
    p, L = fixture_run
    tables.write_tables(p, L, log=lambda m: None)
    for name in ("table1_fd_vs_nfe", "table2_guidance", "aot_vs_edm", "hybrid_switch"):
        md = L.table(name, "md").read_text()
        assert "nan" not in md.lower().replace("nanmean", ""), name
        # ...and as HTML, which the Snakemake report shows inline: every row of the CSV, the same title
        page = L.table(name, "html").read_text()
        assert page.count("<tr") == len(pd.read_csv(L.table(name))) + 1 and md.split("\n")[0][2:40] in page, name
        assert ">nan<" not in page.lower() and ">None<" not in page
    t1 = pd.read_csv(L.table("table1_fd_vs_nfe"))
    assert set(t1["conditional"].dropna().astype(str)) == {"True", "False"}
    md = L.table("table1_fd_vs_nfe", "md").read_text()
    head = md.split("## Headline")[1].split("## Every row")[0]
    # edm_uncond at NFE 3 (2 steps): the mean over training seeds 0 and 1 of fd_heldout = 1 + 9 + 0.5 s + 0.1 seed + 1
    assert "edm_uncond" in head and "rho 7, NFE 3" in head and "11.3 [" in head and "real (floor)" not in head
    curves = pd.read_csv(L.fd_curves)
    assert list(curves.columns) == ["nfe", *p["models"]] and curves["nfe"].tolist() == [3, 5]


def test_offline_plot_template_inlines_vega_for_dvc(tmp_path):
    """The page DVC fills: its placeholders once each, the libraries inlined (no <script src>), SVG rendering.
    Drawn in a browser with the network off: tests/test_pipeline.py::test_dvc_plots_render_offline_in_headless_chromium."""
    from dvc_render.html import HTML

    from aot_diffusion.report.offline_plots import template_html, write_template

    page = template_html()
    assert page.count("{plot_divs}") == 1 and "<script src" not in page and "{scripts}" not in page
    assert "window.vegaEmbed=" in page.replace(" ", "") and 'renderer: "svg"' in page
    filled = HTML(page).with_element("<div id='x'></div>").embed()  # dvc-render's own filling
    assert "<div id='x'></div>" in filled and "{plot_divs}" not in filled
    (tmp_path / ".dvc").mkdir()
    assert write_template(tmp_path).read_text() == page
    with pytest.raises(FileNotFoundError, match="repository root"):
        write_template(tmp_path / "elsewhere")


def test_compare_prints_a_row_per_parameter_or_metric():
    """`aot-diffusion compare` turns dvc exp show's CSV round: experiments as columns, four significant digits,
    absent values blank, the row identifiers (rev, typ, Created...) left out."""
    from aot_diffusion.report.compare import FLAGS, parameter_names, transposed

    text = ("Experiment,rev,typ,Created,parent,aot_vs_edm.uncond.fd_heldout_rho7_nfe3.diff,"
            "aot_vs_edm.uncond.fd_heldout_rho7_nfe3.interval,sample.rho,train.pool_size\n"
            ",workspace,baseline,,,0.21571596141158622,\"[-0.07041, 0.5018]\",\"[7, 90]\",64\n"
            "rho-exp,c310e35,branch_base,2026-12-01T11:06:38,,,,\"[7, 72]\",64\n")
    lines = transposed(text).splitlines()
    assert lines[0].split() == ["workspace", "rho-exp"]
    assert lines[1].split() == ["aot_vs_edm.uncond.fd_heldout_rho7_nfe3.diff", "0.2157"]
    assert lines[3].split()[0] == "sample.rho" and "[7, 72]" in lines[3] and len(lines) == 5
    assert "--only-changed" in FLAGS and transposed("Experiment,rev\n").startswith("no experiments")
    # With the parameter names: changed parameters first, each experiment named by its change, long text cut.
    params = parameter_names({"sample": {"rho": [7, 90]}, "train": {"pool_size": 64}, "fd": {"ci_level": 0.95}})
    long = "bootstrap: samples and reference images resampled together, paired where two models share latents"
    lines = transposed(text.replace('"[-0.07041, 0.5018]"', f'"{long}"'), params).splitlines()
    assert lines[0].split() == ["workspace", "rho-exp:", "sample.rho=[7,", "72]"]
    assert [line.split()[0] for line in lines[1:3]] == ["sample.rho", "train.pool_size"]
    assert lines[-1] == f"[1] {long}" and "…[1]" in lines[-2] and max(map(len, lines[:-1])) <= 110


def test_min_over_sampling_seeds_is_edms_protocol_beside_the_mean():
    """Known values: three sampling seeds' FIDs 2.0, 1.9, 2.3 give min 1.9 (EDM reports it) and mean 2.067 with
    the t-interval over the three; one seed gives no minimum column beside its own value."""
    import scipy.stats

    df = pd.DataFrame(dict(rho=7.0, steps=18, nfe=35, seed=[0, 1, 2], n=50000, disc_grad_evals=0,
                           fd=[2.0, 1.9, 2.3], fd_low=[1.9, 1.8, 2.2], fd_high=[2.1, 2.0, 2.4]))
    row = tables._summary(df, 0.95).iloc[0]
    assert row["fd_min"] == 1.9 and row["fd"] == pytest.approx(6.2 / 3)
    half = scipy.stats.t.ppf(0.975, 2) * np.std([2.0, 1.9, 2.3], ddof=1) / 3 ** 0.5
    assert (row["fd_low"], row["fd_high"]) == pytest.approx((6.2 / 3 - half, 6.2 / 3 + half))
    assert "fd_min" not in tables._summary(df.iloc[:1], 0.95).columns
    text = tables.cell_text(dict(sample=dict(seeds=[0, 1, 2])), row, "fd", 2)
    assert text.startswith("1.90 / 2.07 [")


def test_the_headline_statistic_is_one_parameter_named_in_every_title(fixture_run):
    """fd.headline train (cifar10's): Table 1's headline, EDM minus AOT, Table 2 and metrics.json read FD against
    the training statistics, and every title says so; heldout (digits'): the held-out images' statistics."""
    import copy

    p, L = fixture_run
    q = copy.deepcopy(p)
    q["fd"]["headline"] = "train"
    t1, t2, _ = tables.write_tables(q, L, log=lambda m: None)
    pivot = L.table("table1_fd_vs_nfe", "md").read_text()
    assert "## Headline: fd: against the training set's statistics" in pivot
    for name in ("table1_fd_vs_nfe", "table2_guidance", "aot_vs_edm"):
        assert "against the training set's statistics" in L.table(name, "md").read_text().split("\n")[0], name
    metrics = json.loads(L.metrics.read_text())
    assert any(k.startswith("aot_vs_edm.uncond.fd_rho") for k in metrics)
    assert not any(k.startswith("aot_vs_edm.") and "heldout" in k for k in metrics)
    row = t2[(t2["discriminator"] == "dg_edm_uncond")].iloc[0]
    raw = pd.read_csv(L.fd(tables.first(p, "edm_uncond")))
    same = raw[(raw["steps"] == row["steps"]) & (raw["rho"] == row["rho"])]
    assert row["fd_unguided"] == pytest.approx(same["fd"].mean()) and row["fd_unguided_min"] == same["fd"].min()
    tables.write_tables(p, L, log=lambda m: None)  # back to the fixture's own (held-out) headline
    assert "## Headline: fd_heldout: against the held-out images' statistics" in \
        L.table("table1_fd_vs_nfe", "md").read_text()


def test_paper_table_protocol_column_names_what_differs():
    """cifar10 as the profile ships: the AOT rows at the paper's settings differ in nothing public but their
    training; a changed setting (10k samples, two seeds, held-out headline, early-stopped DG) is named in
    every row it touches."""
    from aot_diffusion import paper

    p = compose("cifar10", root=ROOT)
    aot_cond = next(c for c in paper.TABLE1_CELLS if c.training == "aot" and c.conditional and c.steps == 15)
    assert paper.differences(p, aot_cond) == []
    dg_cond = next(c for c in paper.DG_CELLS if c.method == "AOT + AOT-DG" and c.conditional)
    assert paper.differences(p, dg_cond, guided=True) == []
    edm_uncond = paper.TABLE1_CELLS[0]
    assert any("batch 256, not 512" in d for d in paper.differences(p, edm_uncond))
    p["sample"].update(num_samples=10000, seeds=[0, 1])
    p["fd"]["headline"] = "heldout"
    p["guidance"].update(protocol="early_stop", boosting_cond=False)
    got = paper.differences(p, dg_cond, guided=True)
    for needle in ("N 10000, not 50000", "min over 2 sampling seed(s), not 3", "held-out", "early_stop",
                   "boosting off"):
        assert any(needle in d for d in got), (needle, got)
    assert not any("boosting" in d for d in paper.differences(p, aot_cond))  # not a guided cell


def test_paper_comparison_table_holds_every_published_cell(fixture_run):
    from aot_diffusion import paper

    p, L = fixture_run
    tables.write_tables(p, L, log=lambda m: None)
    df = pd.read_csv(L.table("paper_comparison"))
    assert set(df["paper_fid"]) == {c.fid for c in paper.TABLE1_CELLS + paper.DG_CELLS}
    assert df["protocol_differs"].str.contains("dataset digits").all()  # smoke is not CIFAR-10
    assert df[df["protocol_differs"].str.contains("setting not sampled")]["ours_mean"].isna().all()


def test_every_table_has_a_booktabs_latex_twin_with_the_headline_first(fixture_run):
    """tables/<name>.tex beside the CSV/Markdown/HTML: booktabs rules, text escaped, Table 1's headline (with its
    intervals, as the Markdown shows it) ahead of every row."""
    import re

    p, L = fixture_run
    for name in TABLE_NAMES:
        tex = L.table(name, "tex").read_text()
        assert tex.count("\\begin{table}") == tex.count("\\end{table}") >= 1, name
        assert all(rule in tex for rule in ("\\toprule", "\\midrule", "\\bottomrule")), name
        assert not re.search(r"[_%#]", tex.replace("\\_", "").replace("\\%", "").replace("\\#", "")), name  # escaped
        assert tex.count("{") == tex.count("}"), name
    frame, _ = tables.headline_frame(p, pd.read_csv(L.table("table1_fd_vs_nfe")))
    tex = L.table("table1_fd_vs_nfe", "tex").read_text()
    first_table = tex.split("\\end{table}")[0]
    assert all(cell in first_table for cell in frame.drop(columns="model").to_numpy().ravel())
    assert "[" in frame.iloc[0, 1] and frame.iloc[0, 1] in L.table("table1_fd_vs_nfe", "md").read_text()
