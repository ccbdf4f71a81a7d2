"""Fail loudly, lose nothing, run nothing: every loader refuses code, the EDM pickle loader is bounded in
memory, outputs are atomic, byte-reproducible and honour the umask, datasets are checked when read."""

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import warnings

import numpy as np
import pytest
import torch

from aot_diffusion.data import DatasetError, load_dataset, prepare_dataset
from aot_diffusion.safe_pickle import BASIC_GLOBALS, restricted_load
from aot_diffusion.training import TrainConfig, load_network, train
from aot_diffusion.utils import AtomicPath, atomic_save, atomic_write_text
from test_edm_pickle import _net, _write, fake_edm  # noqa: F401  (fixture reused)


class _Touch:
    """Unpickling this runs ``os.system("touch <marker>")``, if a loader lets it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------------------- no code runs

def test_safe_pickle_refuses_reduce_payload(tmp_path):
    marker = tmp_path / "pwned"
    for protocol in (2, 4, 5):
        with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global '(posix|os)\.system'"):
            restricted_load(pickle.dumps({"x": _Touch(marker)}, protocol=protocol), BASIC_GLOBALS)
    assert not marker.exists()


def test_cifar10_reader_refuses_reduce_payload(tmp_path):
    from aot_diffusion.cifar10 import load_cifar10

    marker = tmp_path / "pwned"
    path = tmp_path / "cifar.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        payload = pickle.dumps({b"data": _Touch(marker), b"labels": [0]}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_cifar10(path, "test", expected_md5=None)
    assert not marker.exists()


def test_edm_pickle_loader_refuses_reduce_payload(tmp_path):
    from aot_diffusion import load_edm_pickle  # the package-level entry point

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": _Touch(marker)}, protocol=4))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_edm_pickle(path)
    assert not marker.exists()


def test_load_network_refuses_reduce_payload(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "net.pt"
    torch.save({"network_config": {}, "ema": _Touch(marker)}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_network(path)
    assert not marker.exists()


def test_training_checkpoint_with_payload_is_set_aside_unrun(tmp_path):
    marker = tmp_path / "pwned"
    ck = tmp_path / "ck"
    ck.mkdir()
    torch.save({"step": 1, "net": _Touch(marker)}, ck / "checkpoint.pt")
    net = dict(img_resolution=4, img_channels=1, model_channels=8, channel_mult=[1], channel_mult_emb=1,
               num_blocks=1, attn_resolutions=[], dropout=0.0)
    cfg = TrainConfig(network=net, batch_size=8, pool_size=8, total_steps=1, checkpoint_every=1, log_every=1,
                      prefetch=False)
    lines = []
    train(cfg, torch.rand(8, 1, 4, 4) * 2 - 1, None, out_path=tmp_path / "out.pt", checkpoint_dir=ck,
          log=lines.append)
    assert not marker.exists()
    assert (ck / "checkpoint.pt.corrupt").exists() and any("unreadable" in line for line in lines)


def test_dataset_loader_refuses_pickled_arrays(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data.npz"
    np.savez(path, train_images=np.array([_Touch(marker)], dtype=object))
    with pytest.raises(DatasetError, match="rerun the prepare_data stage"):
        load_dataset(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- bounded memory

MEASURE = textwrap.dedent("""
    import json, pickle, re, sys, tracemalloc
    import torch
    torch.set_num_threads(1)
    from aot_diffusion.edm_pickle import load_edm_pickle

    def peak_rss_kib():  # VmHWM, reset per job through clear_refs (Linux), so imports do not mask a load
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    with torch.device("meta"):  # warm-up: arithmetic on the meta device imports torch._dynamo (~150 MiB, once)
        torch.rand(1) * 2
    for job in sys.argv[1:]:  # each "safe:<path>" or "plain:<path>"
        how, path = job.split(":", 1)
        loader = load_edm_pickle if how == "safe" else (lambda p: pickle.loads(open(p, "rb").read()))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = peak_rss_kib()
        if how == "safe":  # (tracing millions of small objects of the control would take half a minute)
            tracemalloc.start()
        try:
            loader(path)
            outcome = "loaded"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        python_peak = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else 0
        tracemalloc.stop()
        print(json.dumps(dict(outcome=outcome, rss_growth_mib=(peak_rss_kib() - before) / 1024,
                              python_peak_mib=python_peak / 2**20)))
""")


class _Call:
    def __init__(self, *reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


def test_small_pickles_cannot_allocate_much(tmp_path, fake_edm):  # noqa: F811
    """Small pickles that would allocate gigabytes, each refused with peak memory growth under 200 MiB; a
    control load that is not bounded shows the measurement does register growth."""
    from test_edm_pickle import CONFIG

    cases = {"bytearray": (_Call(bytearray, (2_000_000_000,)), 2, "bytearray"),
             "list_range": (_Call(list, (range(50_000_000),)), 4, "refusing to load global 'builtins"),
             "control": (_Call(list, (range(3_000_000),)), 4, "loaded")}
    for name, (obj, protocol, _) in cases.items():
        (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps(obj, protocol=protocol))
    assert len((tmp_path / "bytearray.pkl").read_bytes()) <= 44
    # A tiny network's weights under constructor arguments describing a 210M-parameter (850 MB) network.
    persistence, _ = fake_edm
    net = _net()
    huge = {**CONFIG, "model_channels": 384, "channel_mult": [2, 2], "num_blocks": 2}
    _write(tmp_path / "huge_network.pkl", persistence, dict(ema=net), net, init_kwargs=huge)
    assert (tmp_path / "huge_network.pkl").stat().st_size < 5_000_000
    cases["huge_network"] = (None, None, "do not match the recorded constructor arguments")

    # An embedded (legacy torch.save) storage whose header claims 2 GB of float32 values.
    legacy = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated, but it is what EDM's pickles hold
        torch.save(torch.arange(4.0).storage(), legacy, _use_new_zipfile_serialization=False)
    assert legacy.getvalue().count(b"K\x04N") == 1  # BININT1 4 (the element count), NONE
    claim = legacy.getvalue().replace(b"K\x04N", b"J" + struct.pack("<i", 500_000_000) + b"N")
    (tmp_path / "storage.pkl").write_bytes(pickle.dumps({"w": _Call(torch.storage._load_from_bytes, (claim,))}))
    cases["storage"] = (None, None, "refusing an embedded tensor storage")

    order = ["bytearray", "list_range", "huge_network", "storage", "control"]
    jobs = [f"{'plain' if n == 'control' else 'safe'}:{tmp_path / n}.pkl" for n in order]
    out = subprocess.run([sys.executable, "-c", MEASURE, *jobs], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    results = dict(zip(order, map(json.loads, out.stdout.strip().splitlines()[-len(order):])))
    for name in order:
        m = results[name]
        assert cases[name][2] in m["outcome"], (name, m)
        if name == "control":
            assert m["rss_growth_mib"] > 60, m
        else:
            assert m["rss_growth_mib"] < 200 and m["python_peak_mib"] < 200, (name, m)


@pytest.mark.parametrize("reduced,match", [
    ((bytearray, (2_000_000_000,)), "bytearray"),
    ((np.ndarray, ((2_000_000_000,), "u1")), "ndarray"),
    ((np.zeros, (2_000_000_000,)), "numpy.*zeros"),
    ((set, (range(10**8),)), "range"),
    ((frozenset, (b"x" * 100,)), "frozenset"),
    ((list, ([1],)), r"(__builtin__|builtins)\.list"),
])
def test_no_allowed_callable_allocates_from_a_number(reduced, match):
    for protocol in (2, 4):
        with pytest.raises(pickle.UnpicklingError, match=match):
            restricted_load(pickle.dumps(_Call(*reduced), protocol=protocol), BASIC_GLOBALS)
    from aot_diffusion.edm_pickle import EDM_GLOBALS

    with pytest.raises(pickle.UnpicklingError, match=match):
        restricted_load(pickle.dumps(_Call(*reduced), protocol=4), EDM_GLOBALS)


def test_network_limits_checked_before_building(tmp_path, fake_edm):  # noqa: F811
    from aot_diffusion.edm_pickle import load_edm_pickle
    from test_edm_pickle import CONFIG

    persistence, _ = fake_edm
    net = _net()
    for key, value in [("num_blocks", 10**9), ("model_channels", 10**7), ("img_resolution", 0),
                       ("channel_mult", [1] * 100), ("num_blocks", True)]:
        path = tmp_path / "limits.pkl"
        _write(path, persistence, dict(ema=net), net, init_kwargs={**CONFIG, key: value})
        with pytest.raises(ValueError, match=f"{key}.*(outside the sane range|at most)"):
            load_edm_pickle(path)


def test_opcode_and_byte_caps():
    blob = pickle.dumps(list(range(1000)), protocol=4)
    assert restricted_load(blob, BASIC_GLOBALS) == list(range(1000))
    with pytest.raises(pickle.UnpicklingError, match="opcodes"):
        restricted_load(blob, BASIC_GLOBALS, max_objects=500)
    with pytest.raises(pickle.UnpicklingError, match="byte limit"):
        restricted_load(blob, BASIC_GLOBALS, max_bytes=100)
    with pytest.raises(pickle.UnpicklingError, match="truncated or corrupt"):
        restricted_load(blob[:-20], BASIC_GLOBALS)


# ---------------------------------------------------------------------------------------------- outputs

def test_atomic_save_is_byte_identical(tmp_path):
    state = {"w": torch.arange(12.0).reshape(3, 4), "step": 3, "nested": {"b": torch.ones(2, dtype=torch.int64)}}
    atomic_save(state, tmp_path / "a.pt")
    atomic_save(state, tmp_path / "sub" / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], state["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "sub"]  # no temporary files left


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_outputs_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_save({"x": torch.zeros(1)}, tmp_path / "a.pt")
        atomic_write_text(tmp_path / "b.txt", "hi")
        with AtomicPath(tmp_path / "c.npz") as tmp:
            np.savez(tmp, x=np.zeros(1))
        reference = tmp_path / "plain"
        reference.write_text("")
    finally:
        os.umask(old)
    for name in ("a.pt", "b.txt", "c.npz", "plain"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_atomic_path_leaves_the_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with AtomicPath(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


# ---------------------------------------------------------------------------------------------- datasets

def _arrays(**override):
    rng = np.random.default_rng(0)
    d = dict(train_images=rng.uniform(-1, 1, (10, 1, 4, 4)).astype(np.float32), train_labels=np.arange(10) % 3,
             test_images=rng.uniform(-1, 1, (4, 1, 4, 4)).astype(np.float32), test_labels=np.arange(4) % 3,
             num_classes=np.int64(3))
    return {**d, **override}


def test_good_dataset_loads(tmp_path):
    np.savez(tmp_path / "d.npz", **_arrays())
    d = load_dataset(tmp_path / "d.npz")
    assert d["train_images"].shape == (10, 1, 4, 4) and int(d["num_classes"]) == 3


@pytest.mark.parametrize("override,match", [
    (dict(train_images=np.full((10, 1, 4, 4), np.nan, np.float32)), "NaN"),
    (dict(test_images=np.full((4, 1, 4, 4), 1.5, np.float32)), r"\[-1, 1\]"),
    (dict(train_images=np.zeros((10, 16), np.float32)), r"\(N, C, H, W\)"),
    (dict(test_images=np.zeros((4, 1, 5, 5), np.float32)), "differ in shape"),
    (dict(train_labels=np.arange(10) % 4), r"\[0, 3\)"),
    (dict(test_labels=np.array([0, 1, -1, 2])), r"\[0, 3\)"),
    (dict(train_labels=np.arange(9) % 3), "10 train images but 9 train labels"),
    (dict(train_labels=np.zeros(10, np.float32)), "integer"),
])
def test_bad_dataset_named_with_the_fix(tmp_path, override, match):
    path = tmp_path / "d.npz"
    np.savez(path, **_arrays(**override))
    with pytest.raises(DatasetError, match=match) as err:
        load_dataset(path)
    assert str(path) in str(err.value) and "rerun the prepare_data stage" in str(err.value)


def test_missing_array_and_truncated_file(tmp_path):
    path = tmp_path / "d.npz"
    arrays = _arrays()
    del arrays["num_classes"]
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match="missing arrays"):
        load_dataset(path)
    np.savez(path, **_arrays())
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert str(path) in str(err.value) and "truncated" in str(err.value) and "prepare_data" in str(err.value)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(DatasetError, match="unreadable"):
        load_dataset(path)


@pytest.mark.parametrize("fraction", [0.2, 0.35])
def test_prepare_digits_honours_test_fraction(tmp_path, fraction):
    summary = prepare_dataset({"data": {"dataset": "digits", "test_fraction": fraction}, "seed": 0}, tmp_path / "d.npz")
    assert summary["test"] == int(np.ceil(1797 * fraction)) and summary["train"] + summary["test"] == 1797
    d = load_dataset(tmp_path / "d.npz")
    assert len(d["test_labels"]) == summary["test"] and d["train_images"].shape[1:] == (1, 8, 8)


def test_a_score_that_is_not_finite_stops_the_stage_before_writing():
    """FD / KID rows (and the hybrid table) are checked before anything is written: a NaN is named, not stored."""
    from types import SimpleNamespace

    import pandas as pd

    from aot_diffusion.stages.evaluate import _finite

    run = SimpleNamespace(stage=SimpleNamespace(name="fd"))
    _finite(run, pd.DataFrame(dict(model=["m"], fd=[1.0], kid=[-0.01])), "scores")
    with pytest.raises(FloatingPointError, match=r"fd: non-finite scores in columns \['fd_heldout'\]"):
        _finite(run, pd.DataFrame(dict(model=["m"], fd=[1.0], fd_heldout=[float("nan")])), "scores")


MEASURE_LOADERS = textwrap.dedent("""
    import json, re, sys, time
    import torch
    torch.set_num_threads(1)
    from aot_diffusion.cifar10 import load_cifar10
    from aot_diffusion.data import load_dataset
    from aot_diffusion.edm_pickle import load_edm_pickle
    from aot_diffusion.guidance.adm import load_dg_classifier
    from aot_diffusion.training import load_network
    loaders = dict(edm=load_edm_pickle, network=load_network, dg=load_dg_classifier, dataset=load_dataset,
                   cifar=lambda path: load_cifar10(path, expected_md5=None))

    def peak_rss_kib():
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    load_network(sys.argv[1])  # warm-up: first use of the loaders and of the meta device
    for job in sys.argv[2:]:  # "<loader>:<path>"
        how, path = job.split(":", 1)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, start = peak_rss_kib(), time.perf_counter()
        try:
            loaders[how](path)
            outcome = "loaded"
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        print(json.dumps(dict(outcome=outcome, rss_growth_mib=(peak_rss_kib() - before) / 1024,
                              seconds=time.perf_counter() - start)))
""")


def _memo_bomb(path, copies=3000):
    """An EDM-pickle-shaped file of ~1 MB: one 1 MiB bytes object, memoised, passed to bytearray `copies` times."""
    out = bytearray(b"\x80\x02")  # PROTO 2
    out += b"]q\x00("  # EMPTY_LIST, BINPUT 0, MARK
    out += b"B" + struct.pack("<I", 1 << 20) + b"\x00" * (1 << 20) + b"q\x01"  # BINBYTES 1 MiB, BINPUT 1
    call = b"cbuiltins\nbytearray\nh\x01\x85R"  # GLOBAL builtins.bytearray, BINGET 1, TUPLE1, REDUCE
    out += call * copies + b"e."  # APPENDS, STOP
    path.write_bytes(bytes(out))


def test_memory_bombs_are_refused_within_bounded_memory(tmp_path):
    """The four payloads of issue 23, each refused naming the file, with peak RSS growth under 200 MiB (measured
    in a subprocess after a warm-up load): a 1 MB EDM pickle copying one memoised 1 MiB string 3000 times
    (3 GB), a 1 KB .pt calling bytearray(3 GiB) as network.pt and as DG's classifier file, a 2 KB network.pt
    whose config describes 885 billion weights, and a dataset.npz whose 3 MB member inflates to 1 GiB."""
    import zipfile

    from aot_diffusion.training import build_network

    good = tmp_path / "good.pt"
    small = dict(model_type="SongUNet", img_resolution=8, img_channels=1, model_channels=8, channel_mult=[1, 2],
                 num_blocks=1, attn_resolutions=[])
    torch.save(dict(network_config=small, ema=build_network(small).state_dict()), good)
    _memo_bomb(tmp_path / "memo.pkl")
    assert (tmp_path / "memo.pkl").stat().st_size < 1_200_000
    torch.save(dict(network_config=small, ema=_Call(bytearray, (3 << 30,))), tmp_path / "bytearray.pt")
    assert (tmp_path / "bytearray.pt").stat().st_size < 2000
    huge = dict(small, model_channels=1024, channel_mult=[16, 16, 16, 16], num_blocks=16)
    torch.save(dict(network_config=huge, ema={}), tmp_path / "config.pt")
    assert (tmp_path / "config.pt").stat().st_size < 3000
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("train_images.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, dict(descr="|u1", fortran_order=False, shape=(1 << 30,)))
            chunk = b"\x00" * (1 << 24)
            for _ in range(64):
                f.write(chunk)
    assert (tmp_path / "bomb.npz").stat().st_size < 5_000_000
    _refused_within_bounds(tmp_path, good, {
        "memo": ("edm", "memo.pkl", "copy more bytes than the file could hold"),
        "bytearray_network": ("network", "bytearray.pt", "builds a bytearray"),
        "bytearray_dg": ("dg", "bytearray.pt", "builds a bytearray"),
        "config": ("network", "config.pt", "over the 500,000,000"),
        "zip": ("dataset", "bomb.npz", "zip bomb")})


def _refused_within_bounds(tmp_path, good, jobs, max_seconds=None):
    """Runs MEASURE_LOADERS on ``jobs`` (name -> (loader, file in tmp_path, expected message)) in one subprocess:
    each must be refused naming its file, with peak RSS growth under 200 MiB (and within ``max_seconds``)."""
    out = subprocess.run([sys.executable, "-c", MEASURE_LOADERS, str(good),
                          *[f"{how}:{tmp_path / f}" for how, f, _ in jobs.values()]],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    results = dict(zip(jobs, map(json.loads, out.stdout.strip().splitlines()[-len(jobs):])))
    for name, (_, f, match) in jobs.items():
        m = results[name]
        assert match in m["outcome"] and f in m["outcome"], (name, m)
        assert m["rss_growth_mib"] < 200 and m["seconds"] < (max_seconds or float("inf")), (name, m)


def test_red_team_payloads_are_refused_within_bounded_memory(tmp_path):
    """Small files of the red team, each refused naming the file, fast, with peak RSS growth under 200 MiB:
    an EDM pickle whose 'ema' is an embedded storage (torch.storage._load_from_bytes) of a torch.save'd
    bytearray(3 GiB), in torch's zip and legacy formats; a 1.8 KB network.pt whose config describes 472M weights
    (under the 500M cap) while it holds one; a dataset.npz member without the .npy suffix declaring 1 GiB and
    inflating to 256 MiB (np.load reads it as an array all the same); and two CIFAR tarballs, one of 350 KB holding
    100k members, one of 2.3 MB whose first header is a GNU long name of 512 MiB."""
    import gzip
    import zipfile

    from aot_diffusion.training import build_network

    good = tmp_path / "good.pt"
    small = dict(model_type="SongUNet", img_resolution=8, img_channels=1, model_channels=8, channel_mult=[1, 2],
                 num_blocks=1, attn_resolutions=[])
    torch.save(dict(network_config=small, ema=build_network(small).state_dict()), good)
    for fmt, kw in (("zip", {}), ("legacy", dict(_use_new_zipfile_serialization=False))):
        inner = io.BytesIO()
        torch.save(_Call(bytearray, (3 << 30,)), inner, **kw)
        blob = pickle.dumps({"ema": _Call(torch.storage._load_from_bytes, (inner.getvalue(),))}, protocol=4)
        (tmp_path / f"storage_{fmt}.pkl").write_bytes(blob)
        assert len(blob) < 1500
    big = dict(small, model_channels=512, channel_mult=[2, 2], num_blocks=3)  # 472,040,465 weights
    torch.save(dict(network_config=big, ema={"model.enc.8x8_conv.weight": torch.zeros(1)}), tmp_path / "weights.pt")
    assert (tmp_path / "weights.pt").stat().st_size < 2000
    with zipfile.ZipFile(tmp_path / "suffix.npz", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("train_images", "w", force_zip64=True) as f:  # inflates 38x: within the zip bomb ratio
            np.lib.format.write_array_header_1_0(f, dict(descr="|u1", fortran_order=False, shape=(1 << 30,)))
            block = np.random.default_rng(0).bytes(1700) + bytes((1 << 16) - 1700)
            for _ in range(4096):
                f.write(block)
    assert (tmp_path / "suffix.npz").stat().st_size < 8_000_000
    member = tarfile.TarInfo("cifar-10-batches-py/x").tobuf(tarfile.GNU_FORMAT)
    (tmp_path / "members.tar.gz").write_bytes(gzip.compress(member * 100_000 + bytes(1024), compresslevel=1))
    longname = tarfile.TarInfo("././@LongLink")  # tarfile's next() would read the 512 MiB name whole
    longname.type, longname.size = tarfile.GNUTYPE_LONGNAME, 512 << 20
    with gzip.open(tmp_path / "longname.tar.gz", "wb", compresslevel=1) as f:
        f.write(longname.tobuf(tarfile.GNU_FORMAT))
        for _ in range(32):
            f.write(bytes(16 << 20))
        f.write(member + bytes(1024))
    assert (tmp_path / "longname.tar.gz").stat().st_size < 3_000_000
    _refused_within_bounds(tmp_path, good, {
        "storage_zip": ("edm", "storage_zip.pkl", "builds a bytearray"),
        "storage_legacy": ("edm", "storage_legacy.pkl", "builds a bytearray"),
        "weights": ("network", "weights.pt", "do not match the recorded constructor arguments"),
        "suffix": ("dataset", "suffix.npz", "is not an .npy array"),
        "members": ("cifar", "members.tar.gz", "more than 64 members"),
        "longname": ("cifar", "longname.tar.gz", "an extended header")}, max_seconds=10)
