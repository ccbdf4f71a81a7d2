"""CIFAR-10 tarball reader: parsing in place, checksums, helpful errors, safe unpickling.

The tests build a tiny tarball in the official layout (cifar-10-batches-py/data_batch_1..5,
test_batch, batches.meta; protocol-2 pickles of dicts with bytes keys, as the real files).
"""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from aot_diffusion import cifar10
from aot_diffusion.cifar10 import (CIFAR10_MD5, CIFAR10_URL, ensure_cifar10, load_cifar10, load_label_names,
                                   md5sum, verify_md5)

PER_BATCH = 3


def _batch(rng, n, name):
    return {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _add(tar, name, payload: bytes):
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _make_tarball(path, override=None):
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": _batch(rng, PER_BATCH, f"training batch {i} of 5") for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, PER_BATCH + 1, "testing batch 1 of 1")
    meta = {b"num_cases_per_batch": PER_BATCH, b"label_names": [c.encode() for c in cifar10.CIFAR10_CLASSES],
            b"num_vis": 3072}
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            payload = (override or {}).get(name) or pickle.dumps(batch, protocol=2)
            _add(tar, name, payload)
        _add(tar, "batches.meta", pickle.dumps(meta, protocol=2))
    return batches


@pytest.fixture
def tarball(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    return path, _make_tarball(path)


def test_parse_train_and_test(tarball):
    path, batches = tarball
    images, labels = load_cifar10(path, "train", expected_md5=md5sum(path))
    assert images.shape == (5 * PER_BATCH, 3, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (5 * PER_BATCH,) and labels.dtype == np.int64
    expected_labels = np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    np.testing.assert_array_equal(labels, expected_labels)
    assert labels.min() >= 0 and labels.max() <= 9
    # Layout: each row is R plane, G plane, B plane, each row-major 32x32.
    row = batches["data_batch_2"][b"data"][1]
    img = images[PER_BATCH + 1]
    np.testing.assert_array_equal(img[0].ravel(), row[:1024])
    np.testing.assert_array_equal(img[1, 0, :], row[1024:1056])
    np.testing.assert_array_equal(img[2, 31, 31], row[3071])

    test_images, test_labels = load_cifar10(path, "test", expected_md5=None)
    assert test_images.shape == (PER_BATCH + 1, 3, 32, 32)
    np.testing.assert_array_equal(test_labels, batches["test_batch"][b"labels"])
    assert load_label_names(path, expected_md5=None) == list(cifar10.CIFAR10_CLASSES)
    with pytest.raises(ValueError, match="split"):
        load_cifar10(path, "valid", expected_md5=None)


def test_nothing_extracted_to_disk(tarball):
    path, _ = tarball
    before = sorted(os.listdir(path.parent))
    load_cifar10(path, "train", expected_md5=None)
    assert sorted(os.listdir(path.parent)) == before


def test_md5(tarball):
    path, _ = tarball
    assert verify_md5(path, md5sum(path))
    assert verify_md5(path, md5sum(path).upper())
    assert not verify_md5(path, CIFAR10_MD5)


def test_md5_mismatch_message(tarball):
    path, _ = tarball
    with pytest.raises(ValueError) as err:
        load_cifar10(path, "train")  # default: the official checksum, which the tiny file lacks
    msg = str(err.value)
    assert "md5" in msg and CIFAR10_MD5 in msg and CIFAR10_URL in msg and str(path) in msg


def test_missing_file_message(tmp_path):
    path = tmp_path / "data" / "cifar-10-python.tar.gz"
    for call in (lambda: ensure_cifar10(path), lambda: load_cifar10(path)):
        with pytest.raises(FileNotFoundError) as err:
            call()
        assert CIFAR10_URL in str(err.value) and str(path) in str(err.value)
    assert not path.exists()


def test_download_atomic_and_verified(tarball, tmp_path):
    source, _ = tarball
    url = source.as_uri()  # urllib reads file:// URLs, so no network is needed
    dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
    with pytest.raises(ValueError, match="md5"):
        ensure_cifar10(dest, download=True, url=url)  # official md5 != tiny file: discarded
    assert not dest.exists() and os.listdir(dest.parent) == []
    assert ensure_cifar10(dest, download=True, url=url, expected_md5=md5sum(source)) == dest
    assert md5sum(dest) == md5sum(source) and os.listdir(dest.parent) == [dest.name]
    # A corrupt existing file is replaced when downloading is allowed, refused otherwise.
    dest.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="md5"):
        ensure_cifar10(dest, expected_md5=md5sum(source))
    ensure_cifar10(dest, download=True, url=url, expected_md5=md5sum(source))
    assert md5sum(dest) == md5sum(source)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_refused(tmp_path, protocol):
    target = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(target), b"labels": [0]}, protocol=protocol)
    path = tmp_path / "evil.tar.gz"
    _make_tarball(path, override={"data_batch_3": evil})
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_cifar10(path, "train", expected_md5=None)
    assert not target.exists()
    # The untouched split still loads.
    assert load_cifar10(path, "test", expected_md5=None)[0].shape[0] == PER_BATCH + 1
