"""One entry point, one subcommand per pipeline stage: ``aot-diffusion <stage> --profile P ...``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _log(msg: str) -> None:
    print(msg, flush=True)


def _write_json(path, obj) -> None:
    from .utils import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _params(args):
    from .config import load_params

    return load_params(args.params, profile=args.profile)


def _model_spec(params, name):
    if name not in params["models"]:
        from .config import ParamError

        raise ParamError(f"unknown model {name!r}; params.yaml 'models' has {sorted(params['models'])}")
    return params["models"][name]


def _network_config(params, data):
    shape = data["train_images"].shape[1:]
    net = dict(params["train"]["network"])
    net.update(img_channels=int(shape[0]), img_resolution=int(shape[1]))
    return net


# ---------------------------------------------------------------------------------------------- stages

def cmd_check_params(args):
    p = _params(args)
    _log(f"[params] profile {p['profile']}: OK ({len(p['models'])} models, "
         f"{len(p['sample']['steps']) * len(p['sample']['rho'])} sampler settings)")


def cmd_prepare_data(args):
    from .data import prepare_dataset

    p = _params(args)
    summary = prepare_dataset(p, args.out)
    _write_json(args.summary, summary)
    _log(f"[data] {summary}")


def cmd_train_classifier(args):

    from .data import load_dataset
    from .metrics.fid import train_classifier
    from .utils import atomic_save

    p = _params(args)
    d = load_dataset(args.data)
    c = p["classifier"]
    model, acc = train_classifier(d["train_images"], d["train_labels"], d["test_images"], d["test_labels"],
                                  num_classes=int(d["num_classes"]), steps=c["steps"], batch_size=c["batch_size"],
                                  lr=c["lr"], feature_dim=c["feature_dim"], seed=p["seed"], log=_log)
    atomic_save(dict(config=model.config, state=model.state_dict()), args.out)
    _write_json(args.metrics, {"classifier_test_accuracy": acc})
    _log(f"[classifier] test accuracy {acc:.4f}")


def _torchrun_relaunch(nproc: int) -> None:
    """Re-run this very command under torchrun when the config asks for several processes."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "aot_diffusion.cli", *sys.argv[1:]]
        _log(f"[train] launching {nproc} processes: {' '.join(cmd)}")
        sys.exit(subprocess.call(cmd))


def cmd_train(args):
    import torch

    from .data import load_dataset
    from .training import TrainConfig, train

    p = _params(args)
    spec = _model_spec(p, args.model)
    t = dict(p["train"])
    _torchrun_relaunch(int(t.pop("nproc_per_node", 1)))
    d = load_dataset(args.data)
    pool_cond = t.pop("pool_size_cond")
    t.pop("network")
    if spec["conditional"]:
        t["pool_size"] = pool_cond
    augment = None
    if t.get("augment_p", 0) > 0:
        from .augment import AugmentPipe

        augment = AugmentPipe(p=t["augment_p"], xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    net_cfg = _network_config(p, d)
    if spec["conditional"]:
        net_cfg["label_dim"] = int(d["num_classes"])
    if augment is not None:
        net_cfg.setdefault("augment_dim", 9)
    cfg = TrainConfig(network=net_cfg, aot=spec["aot"], conditional=spec["conditional"],
                      seed=p["seed"], **t)
    images = torch.as_tensor(d["train_images"])
    labels = torch.as_tensor(d["train_labels"])
    ckpt_dir = Path(args.checkpoint_dir or f"checkpoints/{p['profile']}/{args.model}")
    _log(f"[train] {args.model}: aot={cfg.aot} conditional={cfg.conditional} steps={cfg.total_steps} "
         f"batch={cfg.batch_size} pool={cfg.pool_size}")
    result = train(cfg, images, labels, out_path=args.out, checkpoint_dir=ckpt_dir,
                   num_classes=int(d["num_classes"]), augment=augment, log=_log, stop_after=args.stop_after)
    if result.get("stopped"):
        _log(f"[train] stopped after step {result['step']} (--stop-after); rerun to resume")
        return
    if args.loss_log and int(os.environ.get("RANK", "0")) == 0:
        from .utils import atomic_path

        with atomic_path(args.loss_log) as tmp:
            shutil.copyfile(ckpt_dir / "loss.jsonl", tmp)


def _load_denoiser(path, device="cpu"):
    import torch

    from .training import load_network

    if str(path).endswith(".pkl"):  # a released NVlabs/edm or EDM-AOT pickle, loaded without running its code
        from .checkpoints import load_edm_pickle

        net = load_edm_pickle(path, key="ema", device=device).requires_grad_(False)
    else:
        net = load_network(path, map_location=device)

    def denoise(x, sigma, class_labels):
        with torch.no_grad():
            return net(x.to(torch.float32), sigma.to(torch.float32), class_labels)

    return net, denoise


def _latents(seed, n, shape):
    import torch

    g = torch.Generator().manual_seed(int(seed))
    return torch.randn([n, *shape], generator=g, dtype=torch.float64)


def _class_labels(net, n):
    import torch

    if not net.label_dim:
        return None
    return torch.eye(net.label_dim, dtype=torch.float64)[torch.arange(n) % net.label_dim]


def _sample_in_batches(denoise, latents, labels, batch_size, log=None, **sampler_kwargs):
    """edm_sampler over ``latents`` in batches (labels one-hot or None); float32 samples on the CPU."""
    import torch

    from .sampling import edm_sampler

    chunks = []
    for i in range(0, len(latents), batch_size):
        lab = labels[i:i + batch_size] if labels is not None else None
        chunks.append(edm_sampler(denoise, latents[i:i + batch_size], class_labels=lab, **sampler_kwargs).float())
        if log is not None:
            log(min(i + batch_size, len(latents)))
    return torch.cat(chunks)


def _sweep(net, denoise, settings, s, out_path, tag, denoise_euler=None, counter=None):
    """Sample every (steps, rho, seed) setting from the seed's shared latents and save one .npz."""

    from .metrics.fid import to_uint8
    from .sampling import num_function_evals
    from .utils import atomic_path

    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    out, extra, t0 = {}, {}, time.perf_counter()
    for k, (steps, rho, seed) in enumerate(settings):
        if counter is not None:
            counter.reset()
        images = _sample_in_batches(denoise, _latents(seed, s["num_samples"], shape), _class_labels(net, s["num_samples"]),
                                    s["batch_size"], num_steps=steps, rho=rho, sigma_min=s["sigma_min"],
                                    sigma_max=s["sigma_max"], denoise_euler=denoise_euler)
        key = f"steps{steps}_rho{rho:g}_seed{seed}"
        out[key] = to_uint8(images.numpy())  # stored as pixels, as EDM does before FID
        note = ""
        if counter is not None:  # discriminator gradient evaluations per sampler run (per batch)
            batches = -(-s["num_samples"] // s["batch_size"])
            extra[f"grad_evals/{key}"] = np.array(counter.num_grad_evals // batches)
            note = f" + {counter.num_grad_evals // batches} discriminator gradients"
        _log(f"[{tag}] {k + 1}/{len(settings)}: steps {steps} rho {rho:g} seed {seed} "
             f"NFE {num_function_evals(steps)}{note} ({time.perf_counter() - t0:.0f} s)")
    with atomic_path(out_path, suffix=".npz") as tmp:
        np.savez(tmp, **out, **extra)


def _inception_preflight(p):
    if p["data"]["dataset"] == "cifar10":
        from .metrics.fid import check_inception_assets

        check_inception_assets(allow_download=p.get("fid", {}).get("allow_download", False))


def cmd_sample(args):
    p = _params(args)
    _inception_preflight(p)
    s = p["sample"]
    net, denoise = _load_denoiser(args.network)
    settings = [(st, r, seed) for r in s["rho"] for st in s["steps"] for seed in s["seeds"]]
    _sweep(net, denoise, settings, s, args.out, f"sample {args.model}")


def cmd_fake_samples(args):
    """Samples of a trained model: the 'fake' class of its discriminator."""

    from .utils import atomic_path

    p = _params(args)
    g, s = p["guidance"], p["sample"]
    net, denoise = _load_denoiser(args.network)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    labels = _class_labels(net, g["num_fake"])
    images = _sample_in_batches(denoise, _latents(p["seed"] + 2000, g["num_fake"], shape), labels, s["batch_size"],
                                log=lambda k: _log(f"[fake] {args.model}: {k}/{g['num_fake']} samples"),
                                num_steps=g["fake_steps"], rho=7)
    ids = labels.argmax(1).numpy() if labels is not None else np.zeros(g["num_fake"], dtype=np.int64)
    with atomic_path(args.out, suffix=".npz") as tmp:
        np.savez(tmp, images=images.numpy(), labels=ids, conditional=labels is not None)


def cmd_train_discriminator(args):
    import torch

    from .data import load_dataset
    from .guidance import NoiseConditionedDiscriminator, evaluate_discriminator, train_discriminator
    from .utils import atomic_save

    p = _params(args)
    g = p["guidance"]
    spec = g["discriminators"][args.disc] if args.disc in g["discriminators"] else None
    if spec is None:
        from .config import ParamError

        raise ParamError(f"unknown discriminator {args.disc!r}; 'guidance.discriminators' has "
                         f"{sorted(g['discriminators'])}")
    d = load_dataset(args.data)
    with np.load(args.fakes) as f:
        fakes, fake_ids, conditional = torch.as_tensor(f["images"]), torch.as_tensor(f["labels"]), bool(f["conditional"])
    n_hold = max(int(len(fakes) * 0.2), 1)  # held-out fakes for the reported accuracy
    real, real_ids = torch.as_tensor(d["train_images"]), torch.as_tensor(d["train_labels"])
    k = int(d["num_classes"])
    disc = NoiseConditionedDiscriminator(img_resolution=real.shape[-1], img_channels=real.shape[1],
                                         label_dim=k if conditional else 0, channels=tuple(g["channels"]))
    torch.manual_seed(p["seed"])
    lab = (lambda ids: ids) if conditional else (lambda ids: None)
    _log(f"[discriminator] {args.disc}: model {spec['model']}, aot={spec['aot']}, conditional={conditional}")
    history = train_discriminator(disc, real, fakes[n_hold:], real_labels=lab(real_ids), fake_labels=lab(fake_ids[n_hold:]),
                                  aot=spec["aot"], pool_size=g["pool_size"], batch_size=g["batch_size"],
                                  steps=g["steps"], lr=g["lr"], seed=p["seed"], log_every=max(g["steps"] // 5, 1),
                                  callback=lambda row: _log(f"[discriminator] {args.disc} step {row['step']} "
                                                            f"loss {row['loss']:.4f} acc {row['accuracy']:.3f}"))
    test_real, test_ids = torch.as_tensor(d["test_images"]), torch.as_tensor(d["test_labels"])
    m = min(len(test_real), n_hold)
    held = evaluate_discriminator(disc, test_real[:m], fakes[:m], real_labels=lab(test_ids[:m]),
                                  fake_labels=lab(fake_ids[:m]), seed=p["seed"] + 1)
    atomic_save(dict(config=disc.config, state=disc.state_dict(), spec=spec), args.out)
    metrics = {"heldout_accuracy": held["accuracy"], "heldout_bce": held["bce"],
               "train_final_loss": history[-1]["loss"] if history else float("nan")}
    _write_json(args.metrics, metrics)
    _log(f"[discriminator] {args.disc}: held-out accuracy {held['accuracy']:.3f}")


def cmd_guided_sample(args):
    import torch

    from .guidance import DG_SIGMA_WINDOW, NoiseConditionedDiscriminator, guided_denoiser

    p = _params(args)
    _inception_preflight(p)
    g = p["guidance"]
    net, denoise = _load_denoiser(args.network)
    blob = torch.load(args.discriminator, weights_only=False)
    disc = NoiseConditionedDiscriminator(**blob["config"])
    disc.load_state_dict(blob["state"])
    weight = g["weight_cond"] if net.label_dim else g["weight_uncond"]
    window = tuple(g["sigma_window"]) if g.get("sigma_window") else DG_SIGMA_WINDOW
    guided = guided_denoiser(denoise, disc, weight, sigma_window=window)
    s = dict(p["sample"])
    settings = [(st, r, seed) for r in g["rho"] for st in g["steps_list"] for seed in s["seeds"]]
    _sweep(net, denoise, settings, s, args.out, f"guided {args.disc}", denoise_euler=guided, counter=guided)


def _parse_key(key):
    steps, rho, seed = key.split("_")
    return int(steps[5:]), float(rho[3:]), int(seed[4:])


def cmd_fid(args):
    import pandas as pd
    import torch

    from .data import load_dataset
    from .metrics.fid import FeatureClassifier, classifier_fid, extract_features, feature_statistics
    from .sampling import num_function_evals
    from .utils import atomic_path

    p = _params(args)
    _inception_preflight(p)
    blob = torch.load(args.classifier, weights_only=True)
    clf = FeatureClassifier(**blob["config"])
    clf.load_state_dict(blob["state"])
    clf.eval()
    d = load_dataset(args.data)
    if p["data"]["dataset"] == "cifar10":  # the paper's protocol: Inception, legacy_tensorflow, train stats
        from .metrics.fid import cifar10_inception_fid, cifar10_reference_statistics

        device = "cuda" if torch.cuda.is_available() else "cpu"
        inception_ref = cifar10_reference_statistics()
        score = lambda x: cifar10_inception_fid(x, device=device, reference=inception_ref)  # noqa: E731
    else:  # offline profiles: features of the classifier trained on the same dataset
        ref = feature_statistics(extract_features(clf, d["train_images"]))
        score = lambda x: classifier_fid(clf, x, ref)  # noqa: E731
    rows = []
    with np.load(args.samples) as samples:
        for key in samples.files:
            if "/" in key:  # bookkeeping entries (e.g. grad_evals/...)
                continue
            steps, rho, seed = _parse_key(key)
            grads = samples[f"grad_evals/{key}"].item() if f"grad_evals/{key}" in samples.files else 0
            rows.append(dict(model=args.model, steps=steps, rho=rho, nfe=num_function_evals(steps), seed=seed,
                             disc_grad_evals=grads, fid=score(samples[key])))
    df = pd.DataFrame(rows).sort_values(["rho", "steps", "seed"])
    with atomic_path(args.out, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    best = df.groupby(["rho", "steps"])["fid"].min()
    _log(f"[fid] {args.model}: best {best.min():.3f} at rho/steps {best.idxmin()}")


def cmd_curvature(args):

    from .metrics.curvature import curvature_on_grid, curvature_profile, fine_trajectory, truncation_error
    from .sampling import edm_sampler, num_function_evals
    from .utils import atomic_path

    p = _params(args)
    c, s = p["curvature"], p["sample"]
    net, denoise = _load_denoiser(args.network)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    latents = _latents(p["seed"] + 1000, c["num_latents"], shape)
    labels = _class_labels(net, c["num_latents"])
    t0 = time.perf_counter()
    fine, traj = fine_trajectory(denoise, latents, fine_steps=c["fine_steps"], rho=c["rho"],
                                 sigma_min=s["sigma_min"], sigma_max=s["sigma_max"], class_labels=labels)
    _log(f"[curvature] {args.model}: fine solve, {c['fine_steps']} Heun steps ({time.perf_counter() - t0:.0f} s)")
    sigma, kappa = curvature_profile(fine, traj)
    grid, kappa_grid = curvature_on_grid(sigma, kappa, c["sigma_grid"], s["sigma_min"], s["sigma_max"])
    trunc = []
    for rho in s["rho"]:
        for steps in c["coarse_steps"]:
            coarse = edm_sampler(denoise, latents, num_steps=steps, rho=rho, sigma_min=s["sigma_min"],
                                 sigma_max=s["sigma_max"], class_labels=labels)
            trunc.append((steps, rho, num_function_evals(steps), truncation_error(coarse, fine)))
    # Teaser strip: denoiser outputs D(x_sigma; sigma) of latent 0 at 8 points along the fine path.
    picks = np.unique(np.linspace(0, len(sigma) - 1, 8).round().astype(int))
    strip = traj["denoised"][picks, 0].float().numpy()
    with atomic_path(args.out, suffix=".npz") as tmp:
        np.savez(tmp, sigma=sigma, kappa_mean=kappa.mean(1), grid=grid, kappa_grid=kappa_grid,
                 trunc=np.array(trunc, dtype=np.float64), strip=strip, strip_sigma=sigma[picks],
                 strip_x=traj["x"][picks, 0].float().numpy())
    metrics = {"curvature_mean": float(kappa_grid.mean()),
               **{f"trunc_err_rho{r:g}_nfe{n}": e for st, r, n, e in trunc}}
    _write_json(args.metrics, metrics)
    _log(f"[curvature] {args.model}: mean curvature {metrics['curvature_mean']:.4f}")


def cmd_tables(args):
    from .report.tables import write_tables

    p = _params(args)
    write_tables(p, fid_dir=Path(args.fid_dir), curvature_dir=Path(args.curvature_dir), dg_dir=Path(args.dg_dir),
                 out_dir=Path(args.out_dir),
                 metrics_path=Path(args.metrics), classifier_metrics=Path(args.classifier_metrics), log=_log)


def cmd_figures(args):
    from .report.figures import write_figures

    p = _params(args)
    write_figures(p, results=Path(args.results), out_dir=Path(args.out_dir), log=_log)


# ---------------------------------------------------------------------------------------------- parser

def build_parser():
    ap = argparse.ArgumentParser(prog="aot-diffusion", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name, fn, **io):
        sp = sub.add_parser(name)
        sp.add_argument("--params", default="params.yaml")
        sp.add_argument("--profile", default=None, help="digits | smoke | cifar10 (default: params.yaml's)")
        sp.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
        for opt, kw in io.items():
            sp.add_argument(f"--{opt.replace('_', '-')}", **kw)
        sp.set_defaults(fn=fn)
        return sp

    req = dict(required=True)
    add("check-params", cmd_check_params)
    add("prepare-data", cmd_prepare_data, out=req, summary=req)
    add("train-classifier", cmd_train_classifier, data=req, out=req, metrics=req)
    add("train", cmd_train, model=req, data=req, out=req, loss_log=dict(default=None),
        checkpoint_dir=dict(default=None), stop_after=dict(type=int, default=None))
    add("sample", cmd_sample, model=req, network=req, out=req)
    add("fake-samples", cmd_fake_samples, model=req, network=req, out=req)
    add("train-discriminator", cmd_train_discriminator, disc=req, fakes=req, data=req, out=req, metrics=req)
    add("guided-sample", cmd_guided_sample, disc=req, network=req, discriminator=req, out=req)
    add("fid", cmd_fid, model=req, samples=req, classifier=req, data=req, out=req)
    add("curvature", cmd_curvature, model=req, network=req, out=req, metrics=req)
    add("tables", cmd_tables, fid_dir=req, curvature_dir=req, dg_dir=req, out_dir=req, metrics=req,
        classifier_metrics=req)
    add("figures", cmd_figures, results=req, out_dir=req)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .config import ParamError
    from .utils import set_threads

    set_threads(args.threads)
    try:
        args.fn(args)
    except (ParamError, FileNotFoundError) as exc:
        print(f"aot-diffusion {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
