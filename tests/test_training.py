"""Training engine: bitwise-exact resume, visible recovery from corrupt state, numeric faults that stop
the run, labels that reach the network, input errors. Tiny networks, in process (a few seconds each)."""

import json
import subprocess
import sys

import pytest
import torch

from aot_diffusion.training import NonFiniteTrainingError, PoolSource, TrainConfig, train

NET = dict(img_resolution=8, img_channels=1, model_channels=8, channel_mult=[1, 2], channel_mult_emb=2,
           num_blocks=1, attn_resolutions=[], dropout=0.0, embedding_type="positional")
TIMING = ("sec_per_kimg", "pair_ms")  # wall-clock fields of the loss log


def _data(seed=0, n=64, classes=4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.arange(n) % classes


def _cfg(**kw):
    base = dict(network={**NET, "label_dim": 4}, batch_size=16, pool_size=32, total_steps=6, lr=1e-3,
                lr_rampup_kimg=0, conditional=True, pairing="assignment", log_every=1, checkpoint_every=2, ema_halflife_kimg=0.5)
    if not kw.get("conditional", True):
        base["network"] = dict(NET)
    return TrainConfig(**{**base, **kw})


def _run(tmp_path, name, cfg=None, data=None, **kw):
    images, labels = data if data is not None else _data()
    lines = []
    out = tmp_path / name / "net.pt"
    result = train(cfg or _cfg(), images, labels, out_path=out, checkpoint_dir=tmp_path / name / "ck", num_classes=4,
                   log=lines.append, **kw)
    return result, "\n".join(lines)


def _rows(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]


def _ema(tmp_path, name):
    return torch.load(tmp_path / name / "net.pt", weights_only=True)["ema"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted run: its EMA weights and loss log are what every resumed run must reproduce."""
    tmp = tmp_path_factory.mktemp("full")
    torch.set_num_threads(1)
    _run(tmp, "full")
    return _ema(tmp, "full"), _rows(tmp / "full" / "ck" / "loss.jsonl")


def test_resume_after_stop_is_bitwise_exact(tmp_path, full_run):
    ema, rows = full_run
    assert [r["step"] for r in rows] == list(range(1, 7))
    stopped, _ = _run(tmp_path, "r", stop_after=5)  # checkpoints at 2 and 4, stops at 5
    assert stopped == dict(step=5, stopped=True) and not (tmp_path / "r" / "net.pt").exists()
    assert torch.load(tmp_path / "r" / "ck" / "checkpoint.prev.pt", weights_only=True)["step"] == 2
    _, log = _run(tmp_path, "r")
    assert f"resumed from {tmp_path / 'r' / 'ck' / 'checkpoint.pt'} at step 4" in log
    _assert_same(_ema(tmp_path, "r"), ema)
    assert _rows(tmp_path / "r" / "ck" / "loss.jsonl") == rows  # each step once, same losses


def test_training_stopped_at_its_time_limit_resumes_in_the_next_job_to_the_same_bytes(tmp_path, full_run):
    """Two time-limited jobs: the first has no time left, so it stops at its first checkpoint (the next one
    might not fit); the second has all the time it needs. The network equals the uninterrupted run's."""
    import time

    ema, rows = full_run
    first, log = _run(tmp_path, "r", deadline=time.time())
    assert first == dict(step=2, stopped=True, deadline=True) and not (tmp_path / "r" / "net.pt").exists()
    assert "stopping at the checkpoint of step 2" in log
    _, log = _run(tmp_path, "r", deadline=time.time() + 3600)
    assert "at step 2" in log
    _assert_same(_ema(tmp_path, "r"), ema)
    assert _rows(tmp_path / "r" / "ck" / "loss.jsonl") == rows


@pytest.mark.parametrize("damage", ["truncated_checkpoint", "partial_last_log_line", "corrupt_early_log_line"])
def test_corrupt_state_is_set_aside_and_recovered(tmp_path, full_run, damage):
    ema, rows = full_run
    _run(tmp_path, "r", stop_after=5)
    ck = tmp_path / "r" / "ck"
    if damage == "truncated_checkpoint":
        bad, blob = ck / "checkpoint.pt", (ck / "checkpoint.pt").read_bytes()
        bad.write_bytes(blob[: len(blob) // 2])
        expect = f"resumed from {ck / 'checkpoint.prev.pt'} at step 2"
    elif damage == "partial_last_log_line":
        bad = ck / "loss.jsonl"
        with open(bad, "a") as f:
            f.write('{"step": 6, "lo')
        expect = f"resumed from {ck / 'checkpoint.pt'} at step 4"
    else:  # rows 2.. lost: neither checkpoint's history is complete, so start from scratch
        bad = ck / "loss.jsonl"
        lines = bad.read_text().splitlines()
        bad.write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
        expect = "not resuming from"
    _, log = _run(tmp_path, "r")
    assert str(bad) in log and expect in log
    assert bad.with_name(bad.name + ".corrupt").exists()
    if damage == "corrupt_early_log_line":
        assert "resumed from" not in log
    _assert_same(_ema(tmp_path, "r"), ema)
    assert _rows(ck / "loss.jsonl") == rows


def test_changed_data_does_not_reuse_the_checkpoint(tmp_path):
    _run(tmp_path, "r", stop_after=3)
    new_data = _data(seed=1)
    _, log = _run(tmp_path, "r", data=new_data)
    ck = tmp_path / "r" / "ck"
    assert "different training data" in log and "resumed from" not in log
    assert (ck / "checkpoint.pt.stale").exists() and (ck / "loss.jsonl.stale").exists()
    _run(tmp_path, "fresh", data=new_data)
    _assert_same(_ema(tmp_path, "r"), _ema(tmp_path, "fresh"))
    # Labels are part of the data too.
    images, labels = new_data
    _, log = _run(tmp_path, "r", data=(images, labels.roll(1)))
    assert "different training data" in log and "resumed from" not in log


def test_diverging_run_stops_loudly_and_writes_no_network(tmp_path):
    with pytest.raises(NonFiniteTrainingError) as err:
        _run(tmp_path, "r", cfg=_cfg(lr=1e6, total_steps=20, max_nonfinite_steps=3, checkpoint_every=100))
    msg = str(err.value)
    assert "3 consecutive steps" in msg and "steps 3 to 5" in msg and "nan" in msg.lower()
    assert "learning rate is too high" in msg and "lr=1e+06" in msg and "[-1, 1]" in msg
    assert not (tmp_path / "r" / "net.pt").exists() and not (tmp_path / "r" / "ck" / "checkpoint.pt").exists()


def test_a_loss_exploding_while_still_finite_stops_the_run(tmp_path):
    """lr 10 (the schema's maximum): the loss climbs by orders of magnitude while staying finite; more than 100x
    its lowest value for max_nonfinite_steps steps in a row stops training, naming the loss and its minimum."""
    lines = []
    with pytest.raises(NonFiniteTrainingError) as err:
        _run(tmp_path, "r", cfg=_cfg(lr=10.0, total_steps=40, max_nonfinite_steps=3, checkpoint_every=100,
                                     log_every=1))
    msg = str(err.value)
    assert "diverging" in msg and "over 100x its lowest value so far" in msg and "lr=10" in msg
    assert not (tmp_path / "r" / "net.pt").exists()


def test_non_finite_ema_stops_the_run(tmp_path, monkeypatch):
    from aot_diffusion import training

    monkeypatch.setattr(training, "_ema_beta", lambda cfg, nimg: float("nan"))
    with pytest.raises(NonFiniteTrainingError, match="at step 1 the EMA weights hold NaN"):
        _run(tmp_path, "r")
    assert not (tmp_path / "r" / "net.pt").exists() and not (tmp_path / "r" / "ck" / "checkpoint.pt").exists()


def test_conditional_training_uses_the_labels(tmp_path):
    """Without AOT the labels reach training only through the network: permuting them must change the
    weights, and the trained network's output must depend on the label; unconditional runs ignore them."""
    images, labels = _data()
    permuted = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    cond = _cfg(pairing="none", total_steps=3, log_every=3, checkpoint_every=3)
    _run(tmp_path, "a", cfg=cond, data=(images, labels))
    _run(tmp_path, "b", cfg=cond, data=(images, permuted))
    a, b = _ema(tmp_path, "a"), _ema(tmp_path, "b")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    from aot_diffusion.training import load_network

    net = load_network(tmp_path / "a" / "net.pt")
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 1.0])
    onehot = torch.eye(4)
    with torch.no_grad():
        assert not torch.allclose(net(x, sigma, onehot[[0, 0]]), net(x, sigma, onehot[[1, 1]]))
    uncond = _cfg(pairing="none", conditional=False, total_steps=3, log_every=3, checkpoint_every=3)
    _run(tmp_path, "c", cfg=uncond, data=(images, labels))
    _run(tmp_path, "d", cfg=uncond, data=(images, permuted))
    _assert_same(_ema(tmp_path, "c"), _ema(tmp_path, "d"))


def test_bad_training_data_refused(tmp_path):
    images, labels = _data()
    bad = images.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _run(tmp_path, "r", data=(bad, labels))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        _run(tmp_path, "r", data=(images * 3, labels))
    with pytest.raises(ValueError, match="label"):
        _run(tmp_path, "r", data=(images, labels + 4))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("field", ["conditional", "prefetch"])
def test_switches_must_be_real_booleans(tmp_path, field):
    with pytest.raises(ValueError, match=f"'{field}': must be true or false, got 'false'"):
        _run(tmp_path, "r", cfg=_cfg(**{field: "false"}))
    assert not (tmp_path / "r").exists()


def test_pool_source_is_deterministic_and_pairs():
    images = torch.rand(50, 1, 4, 4) * 2 - 1
    labels = torch.arange(50) % 5
    a = PoolSource(images, labels, pool_size=20, pairing="assignment", seed=1, num_classes=5)
    b = PoolSource(images, labels, pool_size=20, pairing="assignment", seed=1, num_classes=5)
    r = PoolSource(images, labels, pool_size=20, pairing="none", seed=1, num_classes=5)
    for k in (0, 3):  # pool 3 crosses an epoch boundary
        pa, pb, pr = a.make(k), b.make(k), r.make(k)
        assert torch.equal(pa.noise, pb.noise) and torch.equal(pa.images, pb.images)
        assert torch.equal(pa.images, pr.images)  # same images; only the pairing differs
        assert pa.paired_distance < pr.paired_distance
        # Paired noise is a permutation of the random noise rows that keeps classes.
        dist = torch.cdist(pa.noise.flatten(1), pr.noise.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
        match = dist.argmin(1)
        assert bool((dist.min(1).values == 0).all()) and match.unique().numel() == len(match)
        assert torch.equal(pa.labels.argmax(1), pr.labels[match].argmax(1))
    other_rank = PoolSource(images, labels, pool_size=20, pairing="assignment", seed=1, rank=1, num_classes=5)
    assert not torch.equal(other_rank.make(0).noise, a.make(0).noise)


@pytest.mark.parametrize("overrides,match", [
    (dict(pool_size=16, batch_size=32), "smaller than"),
    (dict(pool_size=48, batch_size=32), "not divisible"),
    (dict(solver="auction"), "solver"),
    (dict(max_nonfinite_steps=0), "max_nonfinite_steps"),
    (dict(lr=float("inf")), "lr"),
])
def test_bad_training_config(overrides, match):
    cfg = TrainConfig(network={}, **{**dict(batch_size=32, pool_size=64), **overrides})
    with pytest.raises(ValueError, match=match):
        cfg.validate()


# ---------------------------------------------------------------------------------------------- DDP

DDP_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from aot_diffusion.training import TrainConfig, train
net = dict(img_resolution=8, img_channels=1, model_channels=8, channel_mult=[1, 2], channel_mult_emb=2, num_blocks=1,
           attn_resolutions=[], dropout=0.0)
images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
cfg = TrainConfig(network=net, batch_size=16, pool_size=16, total_steps=4, lr=1e-3, lr_rampup_kimg=0, pairing="assignment",
                  log_every=2, checkpoint_every=2)
train(cfg, images, None, out_path=sys.argv[1] + "/ddp.pt", checkpoint_dir=sys.argv[1] + "/ck")
"""


@pytest.mark.slow
def test_torchrun_ddp_two_ranks_stay_in_sync(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(line for line in out.stdout.splitlines() if "rank EMA checksums" in line)
    sums = json.loads(line.split(":", 1)[1].strip())
    assert len(sums) == 2 and sums[0] == sums[1]
    assert (tmp_path / "ddp.pt").exists() and [r["step"] for r in _rows(tmp_path / "ck" / "loss.jsonl")] == [2, 4]


def test_knn_pairing_keeps_the_nearest_of_k_draws_per_image():
    """pairing: knn (the Immiscible-style baseline) is wired into the pool stream: closer than random,
    not a permutation of the pool's noise, deterministic per pool."""
    import torch

    from aot_diffusion.training import PoolSource

    x = torch.rand(64, 1, 8, 8) * 2 - 1
    knn = PoolSource(x, None, pool_size=32, pairing="knn", knn_k=4, seed=3)
    pool = knn.make(0)
    assert pool.paired_distance < pool.random_distance
    assert not any(torch.equal(pool.noise[0], n) for n in knn.make(0).noise[1:])
    assert torch.equal(pool.noise, knn.make(0).noise)
    exact = PoolSource(x, None, pool_size=32, pairing="assignment", seed=3).make(0)
    assert exact.noise.shape == pool.noise.shape and not torch.equal(exact.noise, pool.noise)


def test_background_pairing_stops_at_the_last_pool_training_uses():
    """At the end of training no pool is paired that no step will use (at 8192 that is a long solve): the
    background thread ends by itself after the last pool (a thread that went on would pair pool 5 and then
    block on the full queue, alive)."""
    from aot_diffusion.training import _Prefetcher

    class Counting:
        def __init__(self):
            self.made = []

        def make(self, k):
            self.made.append(k)
            return k

    source = Counting()
    pre = _Prefetcher(source, first=2, enabled=True, last=4)
    assert [pre.get() for _ in range(3)] == [2, 3, 4]
    pre._thread.join(timeout=30)
    assert not pre._thread.is_alive() and source.made == [2, 3, 4]
    pre.close()
    assert pre.get() == 5  # asked for anyway (it is not): paired in the foreground, never a hang


def test_a_checkpoint_is_resumed_only_by_the_job_that_wrote_it(tmp_path):
    """The pipeline passes the job's record digest as ``resume_key``: after a code or plugin edit (another
    digest) the checkpoint of the same config is set aside and training starts afresh."""
    _run(tmp_path, "r", stop_after=4, resume_key="digest-a")
    _, log = _run(tmp_path, "r", resume_key="digest-b")
    assert "resumed from" not in log and "starting afresh" in log
    assert (tmp_path / "r" / "ck" / "checkpoint.pt.stale").exists()
    _run(tmp_path, "s", stop_after=4, resume_key="digest-a")
    _, log = _run(tmp_path, "s", resume_key="digest-a")
    assert "at step 4" in log
