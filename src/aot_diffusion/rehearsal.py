"""The rehearsal's inputs: the three files a paper-scale run gets from outside, written here in their real formats.

The ``rehearsal`` profile (conf/profile/rehearsal.yaml) runs the cifar10 DAG at toy size on a CPU. Its inputs
stand in for what can't be had offline, each in the format the real one has, read by the pipeline's real readers:

- ``cifar-10-python.tar.gz``: the official layout (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
  ``batches.meta``; protocol-2 pickles of dicts with bytes keys, uint8 rows of 1024 R, G, B values), holding
  synthetic images: a colour and a stripe per class, plus noise. Byte-for-byte reproducible (fixed seed, fixed
  tar and gzip headers), so the profile can name its md5 (``data.cifar10_md5``).
- ``32x32_classifier.pt``: DG's classifier file, a state dict by guided-diffusion's names, at the shape the
  profile's ``guidance.encoder`` gives (random weights).
- ``network.pkl``: an NVlabs/edm network pickle (``ema`` an EDMPrecond saved by EDM's ``persistence``
  reconstruction call, with its constructor arguments), for the ``released`` target (random weights), and the
  ``calibrate`` target's stand-ins (``calibration.networks``: this one and a class-conditional one).

``aot-diffusion rehearsal-inputs`` writes all three where the profile looks for them.
"""

from __future__ import annotations

import collections
import gzip
import io
import pickle
import sys
import tarfile
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .cifar10 import CIFAR10_CLASSES, md5sum
from .utils import AtomicPath

__all__ = ["write_cifar10_tarball", "write_dg_classifier", "edm_pickler", "write_edm_pickle", "write_inputs",
           "released_config"]

TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 10


def _synthetic_images(rng: np.random.RandomState, labels: np.ndarray) -> np.ndarray:
    """[N, 3072] uint8 rows: each class a colour and a horizontal stripe at its own height, plus noise."""
    colours = np.stack([np.roll([200, 60, 30], k % 3) + 5 * k for k in range(10)]).astype(np.float64)
    img = np.empty((len(labels), 3, 32, 32))
    img[:] = colours[labels][:, :, None, None] * 0.6
    for i, k in enumerate(labels):
        img[i, :, 3 * k:3 * k + 3, :] = 255 - colours[k][:, None, None]
    img += rng.normal(0, 20, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def write_cifar10_tarball(path, train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS,
                          seed: int = 0) -> str:
    """Write a CIFAR-10-format tarball of synthetic images; returns its md5."""
    rng = np.random.RandomState(seed)  # the legacy generator: its stream never changes, so neither does the md5

    def batch(name: str, n_per_class: int) -> bytes:
        labels = rng.permutation(np.repeat(np.arange(10), n_per_class))
        body = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                b"data": _synthetic_images(rng, labels),
                b"filenames": [f"synthetic_{name.replace(' ', '_')}_{i}.png".encode() for i in range(len(labels))]}
        return pickle.dumps(body, protocol=2)

    members = {f"data_batch_{i}": batch(f"training batch {i} of 5", max(train_per_class // 5, 1)) for i in range(1, 6)}
    members["test_batch"] = batch("testing batch 1 of 1", test_per_class)
    members["batches.meta"] = pickle.dumps({b"num_cases_per_batch": 10 * max(train_per_class // 5, 1),
                                            b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                                            b"num_vis": 3072}, protocol=2)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            tar.addfile(info, io.BytesIO(payload))
    with AtomicPath(path, suffix=".tar.gz") as tmp:
        with open(tmp, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
            gz.write(raw.getvalue())
    return md5sum(path)


def write_dg_classifier(path, encoder: Mapping, seed: int = 0) -> None:
    """DG's ``32x32_classifier.pt`` format (a guided-diffusion EncoderUNetModel state dict) at ``encoder``'s shape."""
    from .guidance.adm import ADMEncoderUNet, dg_classifier_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = ADMEncoderUNet(**dg_classifier_config(encoder)).state_dict()
    with AtomicPath(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def released_config(network: Mapping, conditional: bool = False) -> dict:
    """EDMPrecond's constructor arguments for a CIFAR-10 network of the profile's shape (EDM's augment_dim 9)."""
    return dict(img_resolution=32, img_channels=3, label_dim=10 if conditional else 0, use_fp16=False,
                sigma_min=0, sigma_max=float("inf"), sigma_data=0.5, augment_dim=9, **network)


@contextmanager
def _edm_persistence():
    """EDM's ``torch_utils.persistence._reconstruct_persistent_obj``, importable while a pickle is written (pickle
    stores a function by its module and name). It never runs here: our loader rebuilds without calling it."""
    def _reconstruct_persistent_obj(meta):
        raise RuntimeError("written for NVlabs/edm's loader; aot_diffusion.edm_pickle reads it without this call")

    saved = {name: sys.modules.get(name) for name in ("torch_utils", "torch_utils.persistence")}
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj, package.persistence = _reconstruct_persistent_obj, module
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": module})
    try:
        yield _reconstruct_persistent_obj
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def edm_pickler(file, reconstruct, top, *, init_kwargs=None, protocol: int = 4,
                module_src: str = "# the module's source: never executed by aot_diffusion\n") -> pickle.Pickler:
    """A Pickler that saves networks (and the augment pipe) as EDM's ``persistence.persistent_class`` does: each
    module reduced to ``reconstruct(meta)`` with its class name, module source and real nested state (torch 1.x's
    OrderedDicts), ``top`` with the constructor kwargs ``init_kwargs``; ModuleDict / ModuleList by reference."""
    from .augment import AugmentPipe

    class EDMPickler(pickle.Pickler):
        def reducer_override(self, obj):
            if not isinstance(obj, (torch.nn.Module, AugmentPipe)) or isinstance(
                    obj, (torch.nn.ModuleDict, torch.nn.ModuleList)):
                return NotImplemented
            state = dict(obj.__dict__)
            for key in ("_parameters", "_buffers", "_modules"):
                if key in state:
                    state[key] = collections.OrderedDict(state[key])
            state["_init_args"] = ()
            state["_init_kwargs"] = init_kwargs if obj is top else getattr(obj, "init_kwargs", {})
            meta = dict(type="class", version=6, module_src=module_src, class_name=type(obj).__name__, state=state)
            return reconstruct, (meta,)

    return EDMPickler(file, protocol=protocol)


def write_edm_pickle(path, config: Mapping, seed: int = 0) -> None:
    """An NVlabs/edm ``network-snapshot-*.pkl``: {ema, loss_fn, augment_pipe, dataset_kwargs}, each network module
    saved as EDM's persistent classes save themselves (class name, module source, state, init kwargs)."""
    from .augment import AugmentPipe
    from .networks import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(config).eval()
    pipe = AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    data = dict(ema=net, loss_fn=None, augment_pipe=pipe,
                dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="cifar10-32x32.zip"))
    with _edm_persistence() as reconstruct, AtomicPath(path, suffix=".pkl") as tmp, open(tmp, "wb") as f:
        edm_pickler(f, reconstruct, net, init_kwargs=dict(config)).dump(data)


def write_inputs(p: Mapping, released_pickle=None) -> dict:
    """Write the rehearsal's three inputs at the paths the parameters ``p`` name; returns {what: path}."""
    tarball = Path(p["data"]["cifar10_tarball"])
    md5 = write_cifar10_tarball(tarball)
    if md5 != p["data"]["cifar10_md5"]:
        raise ValueError(f"{tarball}: md5 {md5}, but data.cifar10_md5 is {p['data']['cifar10_md5']}: the writer "
                         f"changed; put the new md5 into conf/profile/rehearsal.yaml")
    written = {"cifar10_tarball": tarball}
    if p["guidance"]["adm_classifier"]:
        write_dg_classifier(p["guidance"]["adm_classifier"], p["guidance"]["encoder"])
        written["adm_classifier"] = Path(p["guidance"]["adm_classifier"])
    if released_pickle:
        write_edm_pickle(released_pickle, released_config(p["train"]["network"]))
        written["released_pickle"] = Path(released_pickle)
    for name, net in p["calibration"]["networks"].items():  # the stand-ins of the released networks
        path = net["pickle"]
        if path and Path(path) not in written.values():
            write_edm_pickle(path, released_config(p["train"]["network"], conditional=net["conditional"]))
            written[f"calibration {name}"] = Path(path)
    return written
