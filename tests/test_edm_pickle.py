"""Safe loading of NVlabs/edm network pickles (aot_diffusion.edm_pickle).

The pickles are written inside the tests in EDM's format: a fake ``torch_utils/persistence.py``
(which, like EDM's, would exec the pickled module source and leaves a marker file when called)
is put on sys.path, and every module of a small SongUNet network is reduced to
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with its real nested state, while
``nn.ModuleDict`` containers are pickled by reference, as EDM's training loop does.
"""

import collections
import importlib
import io
import os
import pickle
import sys
import textwrap

import pytest
import torch

from aot_diffusion.augment import AugmentPipe
from aot_diffusion.edm_pickle import (PersistentObject, edm_state_dict, load_edm_pickle, load_edm_pickle_data,
                                      network_config)
from aot_diffusion.networks import build_network
from aot_diffusion.rehearsal import edm_pickler

CONFIG = dict(img_resolution=16, img_channels=3, label_dim=10, use_fp16=False, model_type="SongUNet",
              embedding_type="fourier", encoder_type="residual", decoder_type="standard", channel_mult_noise=2,
              resample_filter=[1, 3, 3, 1], model_channels=16, channel_mult=[1, 2], num_blocks=1,
              attn_resolutions=[8], augment_dim=9, dropout=0.13)

FAKE_PERSISTENCE = '''
import os, sys, types
MARKER = {marker!r}

def _reconstruct_persistent_obj(meta):
    # What EDM does: exec the pickled source. A safe loader must never call this.
    open(MARKER, "w").write("called")
    module = types.ModuleType("_imported_module_fake")
    exec(meta["module_src"], module.__dict__)
    cls = module.__dict__.get(meta["class_name"])
    return cls() if cls is not None else None
'''

MODULE_SRC = "class Whatever:\n    pass\n"


@pytest.fixture
def fake_edm(tmp_path, monkeypatch):
    """A fake ``torch_utils.persistence`` importable while the pickles are written."""
    pkg = tmp_path / "fake_src" / "torch_utils"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    marker = tmp_path / "reconstruct_called"
    (pkg / "persistence.py").write_text(textwrap.dedent(FAKE_PERSISTENCE.format(marker=str(marker))))
    monkeypatch.syspath_prepend(str(tmp_path / "fake_src"))
    for name in ("torch_utils", "torch_utils.persistence"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    persistence = importlib.import_module("torch_utils.persistence")
    yield persistence, marker
    for name in ("torch_utils", "torch_utils.persistence"):
        sys.modules.pop(name, None)


def _write(path, persistence, data, top, protocol=4, module_src=MODULE_SRC, init_kwargs=None):
    """Written by the package's EDM-format writer (rehearsal.edm_pickler), through the fake persistence module."""
    with open(path, "wb") as f:
        edm_pickler(f, persistence._reconstruct_persistent_obj, top, init_kwargs=init_kwargs, protocol=protocol,
                    module_src=module_src).dump(data)


def _net():
    torch.manual_seed(0)
    net = build_network(CONFIG)
    with torch.no_grad():  # make zero-initialised layers non-trivial so the comparison bites
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


@pytest.mark.parametrize("protocol", [2, 4])
def test_roundtrip_reproduces_outputs(tmp_path, fake_edm, protocol):
    persistence, marker = fake_edm
    net = _net()
    pipe = AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    data = dict(ema=net, loss_fn=None, augment_pipe=pipe,
                dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="x.zip", xflip=False))
    path = tmp_path / "network-snapshot.pkl"
    init_kwargs = {**CONFIG, "extra_unknown_flag": 1}
    _write(path, persistence, data, net, protocol=protocol, init_kwargs=init_kwargs)

    with pytest.warns(UserWarning, match="extra_unknown_flag"):
        loaded = load_edm_pickle(path)
    assert not marker.exists()
    assert type(loaded) is type(net)

    torch.manual_seed(1)
    x = torch.randn(4, 3, 16, 16)
    sigma = torch.tensor([0.01, 0.5, 3.0, 60.0])
    labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 7, 9]), 10).float()
    aug = torch.randn(4, 9) * 0.3
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, labels, augment_labels=aug), net(x, sigma, labels, augment_labels=aug))

    # The whole pickle, with stand-ins.
    raw = load_edm_pickle_data(path)
    assert not marker.exists()
    assert isinstance(raw["ema"], PersistentObject) and raw["ema"].class_name == "EDMPrecond"
    assert raw["ema"].module_src == MODULE_SRC and raw["ema"].img_resolution == 16
    assert raw["augment_pipe"].class_name == "AugmentPipe" and raw["augment_pipe"].init_kwargs["p"] == 0.12
    assert raw["dataset_kwargs"]["path"] == "x.zip"
    sd = edm_state_dict(raw["ema"])
    own = net.state_dict()
    assert list(sd) == list(own)
    assert all(torch.equal(sd[k], own[k]) for k in own)
    assert "model.map_noise.freqs" in sd and any(k.endswith("resample_filter") for k in sd)


def test_net_key_and_missing_key(tmp_path, fake_edm):
    persistence, marker = fake_edm
    net = _net()
    path = tmp_path / "snap.pkl"
    _write(path, persistence, dict(net=net), net, init_kwargs=CONFIG)
    assert isinstance(load_edm_pickle(path, key="net"), torch.nn.Module)
    with pytest.raises(KeyError, match="net"):
        load_edm_pickle(path, key="ema")
    assert not marker.exists()


def test_other_preconditioning_rejected():
    obj = PersistentObject(dict(type="class", class_name="VPPrecond", state={"_init_kwargs": {}}))
    with pytest.raises(ValueError, match="VPPrecond"):
        network_config(obj)


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_reduce_payload_refused(tmp_path, fake_edm):
    persistence, marker = fake_edm
    payload = tmp_path / "pwned"
    net = _net()
    net.evil = _System(f"touch {payload}")  # ends up inside the pickled state of 'ema'
    path = tmp_path / "evil.pkl"
    _write(path, persistence, dict(ema=net), net, init_kwargs=CONFIG)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global '(posix|os)\.system'"):
        load_edm_pickle(path)
    assert not payload.exists() and not marker.exists()

    # Top-level payload, and other classic gadgets.
    for gadget in [(os.system, (f"touch {payload}",)), (eval, (f"open({str(payload)!r}, 'w')",)),
                   (exec, (f"open({str(payload)!r}, 'w')",)), (__import__, ("os",)), (getattr, ("", "join"))]:
        class Gadget:
            def __reduce__(self, g=gadget):
                return g
        blob = pickle.dumps({"ema": Gadget()}, protocol=4)
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            load_edm_pickle_data(blob)
    assert not payload.exists()


def test_module_src_is_never_executed(tmp_path, fake_edm):
    persistence, marker = fake_edm
    payload = tmp_path / "pwned_by_src"
    evil_src = f"open({str(payload)!r}, 'w').write('owned')\nclass EDMPrecond:\n    pass\n"
    net = _net()
    path = tmp_path / "evil_src.pkl"
    _write(path, persistence, dict(ema=net), net, init_kwargs=CONFIG, module_src=evil_src)
    # Sanity check of the fixture: the normal (EDM-style) unpickling would run the payload.
    with open(path, "rb") as f:
        pickle.load(f)
    assert payload.exists() and marker.exists()
    payload.unlink()
    marker.unlink()

    loaded = load_edm_pickle(path)
    assert not payload.exists() and not marker.exists()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([1.0, 2.0])), net(x, torch.tensor([1.0, 2.0])))
    assert load_edm_pickle_data(path)["ema"].module_src == evil_src


def test_malicious_embedded_storage_refused(tmp_path):
    """A storage blob (torch.storage._load_from_bytes) holding a pickle gadget is refused."""
    payload = tmp_path / "pwned_storage"
    legacy = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, dict(protocol_version=1001, little_endian=True,
                                                     type_sizes=dict(short=2, int=4, long=4))):
        pickle.dump(header, legacy, protocol=2)
    pickle.dump(_System(f"touch {payload}"), legacy, protocol=2)

    class Storage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (legacy.getvalue(),))

    blob = pickle.dumps({"w": Storage()}, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="embedded tensor storage"):
        load_edm_pickle_data(blob)
    assert not payload.exists()


def test_tensor_formats():
    """Plain tensors, parameters, OrderedDicts, numpy values and a few builtins load."""
    obj = collections.OrderedDict(
        t=torch.arange(6, dtype=torch.float32).reshape(2, 3)[:, 1:], p=torch.nn.Parameter(torch.ones(3)),
        h=torch.zeros(2, dtype=torch.float16), i=torch.arange(3), s={1, 2}, fs=frozenset({3}), c=complex(1, 2),
        sl=slice(1, 5, 2), dt=torch.float32, size=torch.Size([2, 3]))
    import numpy as np
    obj["np"] = np.arange(4, dtype=np.float32)
    obj["npf"] = np.float64(1.5)
    for protocol in (2, 4, 5):
        out = load_edm_pickle_data(pickle.dumps(obj, protocol=protocol))
        assert torch.equal(out["t"], obj["t"]) and isinstance(out["p"], torch.nn.Parameter)
        assert out["h"].dtype == torch.float16 and out["i"].dtype == torch.int64
        assert out["s"] == {1, 2} and out["c"] == 1 + 2j and out["sl"] == slice(1, 5, 2)
        assert out["dt"] is torch.float32 and out["size"] == torch.Size([2, 3])
        assert np.array_equal(out["np"], obj["np"]) and out["npf"] == 1.5


def test_persistent_id_refused():
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "x" if isinstance(obj, str) and obj == "ref" else None

    f = io.BytesIO()
    P(f, protocol=2).dump(["ref"])
    with pytest.raises(pickle.UnpicklingError, match="persistent id"):
        load_edm_pickle_data(f.getvalue())

