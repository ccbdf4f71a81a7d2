"""Parameters: Hydra composition (profile + overrides, overrides win), the strict schema, the device policy."""

import pytest
import yaml

from aot_diffusion.params import ParamError, compose, device_of, load_params, resolve, validate

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_params_yaml_is_the_default_composition():
    """The committed params.yaml (not the working tree's, which `make rehearsal` rewrites) is the default
    composition, and a composition that differs in one value is told apart."""
    import subprocess

    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    committed = yaml.safe_load(shown.stdout) if shown.returncode == 0 else load_params(ROOT / "params.yaml")
    default = compose(root=ROOT)
    assert committed == default
    assert committed != compose(overrides={"train": {"lr": default["train"]["lr"] * 2}}, root=ROOT)


def test_profile_overlay_then_overrides_win():
    smoke = compose("smoke", root=ROOT)
    assert smoke["profile"] == "smoke" and smoke["train"]["pool_size"] == 64
    assert compose("smoke", {"train": {"pool_size": 128}}, root=ROOT)["train"]["pool_size"] == 128
    cifar = compose("cifar10", root=ROOT)
    assert cifar["train"]["network"]["model_channels"] == 128 and cifar["threads"] == 8


@pytest.mark.parametrize("edit,match", [
    ({"train": {"pool_sise": 3}}, "pool_sise"),
    ({"guidance": {"lr": -1}}, "guidance.lr"),
    ({"classifier": {"batch_size": 0}}, "classifier.batch_size"),
    ({"train": {"augment_p": 3}}, "train.augment_p"),
    ({"device": "tpu"}, "device"),
    ({"guidance": {"sigma_window": [5, 1]}}, "guidance.sigma_window"),
    ({"sample": {"seeds": ["a"]}}, "sample.seeds"),
    ({"guidance": {"num_fake": 10}}, "guidance.num_fake"),
    ({"train": {"nproc_per_node": 3}}, "nproc_per_node"),
    ({"models": {"edm_uncond": {"pairing": "none", "conditional": "false"}}}, "models.edm_uncond.conditional"),
    ({"threads": "1; touch /tmp/x; #"}, "threads"),
    ({"sample": {"sigma_max": float("inf")}}, "sample.sigma_max"),
    # sizes and ranges refused before anything is allocated or sampled (issue 23)
    ({"sample": {"sigma_min": 1e-40}}, "sample.sigma_min"),
    ({"sample": {"rho": [0.01]}}, "sample.rho"),
    ({"sample": {"num_samples": 10**9}}, "sample.num_samples"),
    ({"train": {"pool_size": 65536}}, "train.pool_size"),
    ({"train": {"network": {"channel_mult": [1] * 10}}}, "train.network.channel_mult"),
    ({"guidance": {"num_fake": 10**9}}, "guidance.num_fake"),
    # sizes a red team got through (issue 36): each within MEMORY_BUDGET or a hard cap
    ({"curvature": {"num_latents": 10**9}}, "curvature.num_latents"),
    ({"curvature": {"num_latents": 10**5, "fine_steps": 1000}}, "curvature.num_latents"),
    ({"curvature": {"sigma_grid": 10**9}}, "curvature.sigma_grid"),
    ({"sample": {"batch_size": 10**9}}, "sample.batch_size"),
    ({"fd": {"feature_batch": 10**9}}, "fd.feature_batch"),
    ({"classifier": {"batch_size": 10**7}}, "classifier.batch_size"),
    ({"guidance": {"encoder_batch_size": 10**7}}, "guidance.encoder_batch_size"),
    ({"train": {"network": {"model_channels": 1024, "num_blocks": 16}}}, "train.network"),
    ({"train": {"batch_size": 16384, "pool_size": 16384, "pool_size_cond": 16384,
                "network": {"model_channels": 512, "channel_mult": [2, 2]}}}, "train.batch_size"),
    ({"data": {"test_fraction": 1.0}}, "data.test_fraction"),
    ({"pool_study": {"variants": {"bad\n": {"pairing": "assignment", "pool_size": 64}}}}, "pool_study.variants"),
    ({"models": {"edm_uncond\n": {"pairing": "none", "conditional": False}}}, "models"),
])
def test_bad_values_are_refused_naming_the_parameter(edit, match):
    with pytest.raises(ParamError, match=match.replace(".", r"\.")):
        compose("smoke", edit, root=ROOT)


def test_unknown_key_in_params_yaml_suggests_the_closest(tmp_path):
    p = compose("smoke", root=ROOT)
    p["train"]["pool_sise"] = p["train"].pop("pool_size")
    with pytest.raises(ParamError, match=r"train\.pool_sise.*did you mean 'train\.pool_size'"):
        validate(p)


def test_snakemake_overrides_compose_from_conf_as_dvc_does(tmp_path):
    """--config composes conf/ + profile + this command's overrides (never on an earlier command's); with no
    --config, params.yaml as it is; no profile named while params.yaml holds another: refused, saying which."""
    (tmp_path / "conf").symlink_to(ROOT / "conf")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(compose("digits", {"sample": {"num_samples": 10}}, root=ROOT)))
    assert resolve({}, path)["sample"]["num_samples"] == 10
    assert resolve({"seed": 3}, path)["sample"]["num_samples"] == compose(root=ROOT)["sample"]["num_samples"]
    smoke = resolve({"profile": "smoke", "train": {"pool_size": 128}}, path)
    assert smoke["profile"] == "smoke" and smoke["train"]["pool_size"] == 128 and smoke["train"]["total_steps"] == 6
    path.write_text(yaml.safe_dump(smoke))
    with pytest.raises(ParamError, match="add profile=smoke to keep it"):
        resolve({"seed": 3}, path)


@pytest.mark.parametrize("profile,preset", [("digits", None), ("smoke", None), ("cifar10", None), ("rehearsal", None),
                                            ("cifar10", "wide_attn"), ("cifar10", "adm")])
def test_unet_estimates_bound_the_built_network(profile, preset):
    """The schema's memory bounds rest on closed-form estimates (schema.unet_estimates): each is an upper bound of
    the network built on the meta device, within 1.3x (weights) and 1.4x (activations: every leaf module's output
    and attention map per image)."""
    import torch

    from aot_diffusion.networks import build_network
    from aot_diffusion.schema import CHANNELS, RESOLUTION, unet_estimates

    p = compose(profile, root=ROOT)
    res, ch = RESOLUTION[p["data"]["dataset"]], CHANNELS[p["data"]["dataset"]]
    net = dict(p["train"]["network"])
    if preset == "wide_attn":
        net.update(model_channels=64, channel_mult=[1, 2, 2, 2], num_blocks=2, attn_resolutions=[16, 8])
    elif preset == "adm":
        net = dict(model_type="DhariwalUNet", model_channels=64, channel_mult=[1, 2, 2], num_blocks=2,
                   attn_resolutions=[16, 8])
    with torch.device("meta"):
        built = build_network(dict(net, img_resolution=res, img_channels=ch))
    weights = sum(t.numel() for t in built.parameters())
    acts = 0

    def count(module, inputs, output):
        nonlocal acts
        acts += output[0].numel() if isinstance(output, torch.Tensor) else 0

    def attention_maps(module, inputs, output):  # (r^2)^2 per head, inside an autograd function, not a module
        nonlocal acts
        acts += module.num_heads * (output.shape[-1] * output.shape[-2]) ** 2

    for m in built.modules():
        if not list(m.children()):
            m.register_forward_hook(count)
        if getattr(m, "num_heads", 0):
            m.register_forward_hook(attention_maps)
    with torch.device("meta"):
        built(torch.zeros(1, ch, res, res), torch.ones(1))
    est_weights, est_acts, _ = unet_estimates(net, res)
    assert weights <= est_weights <= 1.3 * weights, (weights, est_weights)
    assert acts <= est_acts <= 1.4 * acts, (acts, est_acts)


def test_device_cuda_without_cuda_is_an_error_naming_it():
    import torch

    p = compose("smoke", {"device": "cuda"}, root=ROOT)
    if torch.cuda.is_available():
        assert device_of(p) == "cuda"
    else:
        with pytest.raises(ParamError, match="cuda"):
            device_of(p)


@pytest.mark.parametrize("stage,key", [("feature-network", None), ("train", "edm_uncond_s0"), ("sample", "edm_uncond_s0"),
                                       ("fd", "edm_uncond_s0"), ("curvature", "edm_uncond_s0"),
                                       ("fake-samples", "edm_uncond_s0"), ("hybrid", None),
                                       ("train-encoder", None), ("train-discriminator", "dg_edm_uncond"),
                                       ("guided-sample", "dg_edm_uncond"), ("fd-reference", None)])
def test_every_network_stage_stops_at_once_on_device_cuda_without_cuda(tmp_path, monkeypatch, capsys, stage, key):
    import torch

    from aot_diffusion.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(compose("smoke", {"device": "cuda"}, root=ROOT)))
    args = [stage, "--params", str(params)]
    if key:
        args += ["--disc" if key.startswith("dg_") else "--model", key]
    monkeypatch.chdir(tmp_path)  # no dataset, no network here: the device check must come first
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "'cuda' was requested but CUDA is not available" in err, err


def test_an_override_can_add_a_study_variant_but_not_an_unknown_key():
    p = compose("smoke", {"pool_study": {"variants": {"pool1024": {"pairing": "assignment", "pool_size": 1024}}}},
                root=ROOT)
    assert p["pool_study"]["variants"]["pool1024"] == {"pairing": "assignment", "pool_size": 1024}
    assert "no_aot" in p["pool_study"]["variants"]  # added beside the others, not instead of them
    with pytest.raises(ParamError, match=r"pool_study\.variants\.bad\.pool_size"):
        compose("smoke", {"pool_study": {"variants": {"bad": {"pairing": "assignment", "pool_size": 33}}}}, root=ROOT)
    with pytest.raises(ParamError, match=r"did you mean 'pool_study\.rho'"):
        compose("smoke", {"pool_study": {"roh": 7}}, root=ROOT)


def test_unknown_study_variant_stops_the_stage_naming_the_section(tmp_path, monkeypatch, capsys):
    from aot_diffusion.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(compose("smoke", root=ROOT)))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--params", str(params), "--variant", "pool129"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unknown variant 'pool129'" in err and "'pool_study.variants'" in err
    assert not (tmp_path / "results").exists()


def test_one_switch_per_choice_for_models_variants_and_discriminators():
    """`pairing` alone says how a model, a study variant or a discriminator pairs noise (`none`: EDM); the stage
    table's context resolves what each job trains, and the training config takes exactly that."""
    from aot_diffusion.dag import Context
    from aot_diffusion.stages.train import train_config

    p = compose("smoke", {"models": {"knn_uncond": {"conditional": False, "pairing": "knn", "pool_size": 64}}},
                root=ROOT)
    with pytest.raises(ParamError, match=r"unknown parameter 'models.edm_uncond.aot'"):
        compose("smoke", {"models": {"edm_uncond": {"aot": True}}}, root=ROOT)
    with pytest.raises(ParamError, match=r"models.knn_uncond.pairing.*must be one of"):
        compose("smoke", {"models": {"knn_uncond": {"conditional": False, "pairing": "sinkhornx"}}}, root=ROOT)
    with pytest.raises(ParamError, match=r"models.knn_uncond.pool_size.*multiple"):
        compose("smoke", {"models": {"knn_uncond": {"conditional": False, "pairing": "knn", "pool_size": 33}}},
                root=ROOT)
    with pytest.raises(ParamError, match=r"models.edm_uncond.pairing_options.*takes no options"):
        compose("smoke", {"models": {"edm_uncond": {"pairing_options": {"reg": 1}}}}, root=ROOT)
    ctx = Context(p)
    assert ctx.trained("knn_uncond_s1") == dict(model="knn_uncond", seed=1, conditional=False, pairing="knn",
                                                pool_size=64, pairing_options={})
    assert ctx.trained("aot_cond_s0")["pool_size"] == p["train"]["pool_size_cond"]
    assert ctx.trained("no_aot", variant=True) == dict(model="no_aot", seed=p["seed"], conditional=False,
                                                       pairing="none", pool_size=512, pairing_options={})
    # a discriminator pairs as the model it guides (`model`), or as it says (`none`: plain DG)
    assert [ctx.discriminator(d)["pairing"] for d in ("dg_edm_uncond", "dg_aot_uncond", "dg_aot_uncond_plain")] == \
        ["none", "assignment", "none"]

    class Run:  # what train_config reads of a stage run
        device = "cpu"

    data = {"train_images": __import__("numpy").zeros((4, 1, 8, 8)), "num_classes": 10}
    run = Run()
    run.params = p
    for key in ("knn_uncond_s0", "aot_uncond_s1", "edm_cond_s0"):
        run.trained = lambda key=key: ctx.trained(key)
        cfg = train_config(run, data)
        job = ctx.trained(key)
        assert (cfg.pairing, cfg.pool_size, cfg.seed, cfg.conditional) == \
            (job["pairing"], job["pool_size"], job["seed"], job["conditional"])
    assert (cfg.pairing, cfg.pool_size, cfg.network["label_dim"]) == ("none", p["train"]["pool_size_cond"], 10)
