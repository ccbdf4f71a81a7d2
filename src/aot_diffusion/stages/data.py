"""Data stages: the dataset, the FD feature network, and the FD reference (statistics + real-data floor)."""

from __future__ import annotations

import numpy as np

from ..data import load_dataset, prepare_dataset
from ..metrics import fd as fdm
from ..metrics.scores import Reference, Sample, ScoreConfig, describe, score_floor
from ..utils import AtomicPath
from . import Run

# What the FD's features are when a CIFAR-10 run scores without Inception (the rehearsal): every record says so.
STAND_IN = "classifier trained on this run's data (a stand-in for Inception: these are not FIDs)"


def check_params(run: Run) -> None:
    """Validated already (Run loads params.yaml through the schema); the device asked for is there; the conf/
    files DVC composed params.yaml from pass the strict loader (DVC's Hydra expands anchors and takes a
    duplicated key's last value). Record them beside the results."""
    from ..params import check_conf, device_of, write_params

    device_of(run.params)
    check_conf()
    write_params(run.params.to_dict(), run.layout.effective_params)
    run.log(f"parameters of profile {run.params['profile']}: OK")


def pool_variants(run: Run) -> None:
    """The pool-size study's variants, one file each (names checked by the schema before any command of the
    study names one): a variant's stages depend on its own file only, so adding one reruns nothing else."""
    variants = run.params["pool_study"]["variants"]
    run.layout.pool_study.variants_dir.mkdir(parents=True, exist_ok=True)
    for old in run.layout.pool_study.variants_dir.glob("*.json"):
        if old.stem not in variants:
            old.unlink()
    for name, spec in variants.items():
        run.write_json(run.layout.pool_study.variant_spec(name), spec.to_dict())
    run.log(f"{len(variants)} variants: {', '.join(variants)}")


def prepare_data(run: Run) -> None:
    summary = prepare_dataset(run.params, run.layout.dataset)
    run.write_json(run.layout.data_summary, summary)
    run.log(f"{summary['train']} train / {summary['test']} held-out images of shape {summary['shape']}")


def feature_network(run: Run) -> None:
    """fd.features: the FD's feature network, a classifier trained here on the profile's data (offline profiles,
    and the rehearsal's stand-in for Inception) or clean-fid's Inception (cifar10: FID)."""
    from ..utils import atomic_save

    if run.params["fd"]["features"] == "inception":
        from ..metrics.inception import check_inception_assets

        record = check_inception_assets(allow_download=run.params["fd"]["allow_download"])
        atomic_save(dict(kind="inception", record=record), run.layout.feature_network)
        run.write_json(run.layout.feature_network_metrics, dict(feature_network="inception (clean-fid legacy_tensorflow)"))
        return
    from ..metrics.features import train_classifier

    d = load_dataset(run.layout.dataset)
    c = run.params["classifier"]
    model, acc = train_classifier(d["train_images"], d["train_labels"], d["test_images"], d["test_labels"],
                                  num_classes=int(d["num_classes"]), steps=c["steps"], batch_size=c["batch_size"],
                                  lr=c["lr"], feature_dim=c["feature_dim"], seed=run.params["seed"], log=run.log)
    description = STAND_IN if run.params["data"]["dataset"] == "cifar10" else "classifier trained on this run's data"
    atomic_save(dict(kind="classifier", description=description, config=model.config, state=model.state_dict()),
                run.layout.feature_network)
    run.write_json(run.layout.feature_network_metrics, {"classifier_test_accuracy": acc, "feature_network": description})
    run.log(f"feature classifier: held-out accuracy {acc:.4f}")


def fd_reference(run: Run) -> None:
    """Reference statistics (training images) and the floor: held-out real images at the sample count."""
    d = load_dataset(run.layout.dataset)
    feats = run.feature_space()
    if run.params["fd"]["features"] == "inception":
        from ..metrics.inception import cifar10_reference_statistics

        mu, sigma = cifar10_reference_statistics()
        ref_feats = feats(d["train_images"][:10000])  # KID's reference set
    else:
        ref_feats = feats(d["train_images"])
        mu, sigma = fdm.feature_statistics(ref_feats)
    held = feats(d["test_images"])
    n = min(run.params["sample"]["num_samples"], len(held))
    if n < run.params["sample"]["num_samples"]:
        run.log(f"warning: only {len(held)} held-out images; the floor is measured at N = {n}, "
                f"not at sample.num_samples = {run.params['sample']['num_samples']}")
    # Every metric's floor (metrics.scores): held-out real images for a metric against the training set,
    # training images for one against the held-out set (a model can't win that one by memorising).
    mu_h, sigma_h = fdm.feature_statistics(held)
    train_feats = ref_feats if len(ref_feats) == len(d["train_images"]) else feats(d["train_images"])
    # memorisation's yardstick: how near its nearest training image a held-out real image is (1st, 5th percentile)
    nn_q = np.quantile(fdm.nearest_distances(d["test_images"], d["train_images"], device=run.device), [0.01, 0.05])
    ref = Reference(stats=(mu, sigma), features=ref_feats, heldout_stats=(mu_h, sigma_h), heldout_nn_quantiles=tuple(nn_q),
                    train_images=d["train_images"], train_features=train_feats.astype(np.float32),
                    heldout_features=held.astype(np.float32))  # as stored, so scoring resamples the same rows
    scores = score_floor(Sample(held, d["test_images"]), Sample(train_feats, d["train_images"]), ref,
                         ScoreConfig.from_params(run.params, run.device), n)
    floor = dict(n=n, n_training_images=min(n, len(train_feats)), features=feats.description,
                 metrics={name: e.to_json() for name, e in scores.items()})
    with AtomicPath(run.layout.fd_reference, suffix=".npz") as tmp:
        np.savez(tmp, mu=mu, sigma=sigma, ref_features=ref_feats, mu_heldout=mu_h, sigma_heldout=sigma_h,
                 train_features=train_feats.astype(np.float32), heldout_features=held.astype(np.float32),
                 heldout_nn_quantiles=nn_q)
    run.write_json(run.layout.fd_floor, floor)
    run.log(f"floor (N = {n} real images; against the training set: held-out images, against the held-out set: "
            f"training images): {describe(scores)}")
