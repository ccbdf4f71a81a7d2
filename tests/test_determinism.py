"""Byte-identical tracked outputs from identical runs: figures without a date in their metadata (PNG and PDF,
Type 42 fonts), and a loss.csv without wall-clock columns (those go to the untracked timing log)."""

import csv
import os
import subprocess
import sys

import torch

from aot_diffusion.stages.train import TIMING_FIELDS, _loss_csv
from aot_diffusion.training import TrainConfig, train

# One figure through figures._save: log axes, a legend, an image, text with non-ASCII glyphs (subset fonts).
RENDER = """
import sys
from aot_diffusion.report.figures import _figure, _save
fig, axes = _figure(2)
ax = axes[0][0]
ax.plot([1, 10, 100], [3.0, 1.0, 2.0], "o-", label="AOT, NFE 3 (\u00b5, \u00e9)")
ax.set(xscale="log", yscale="log", title="sample quality")
ax.legend()
axes[0][1].imshow([[0.0, 1.0], [1.0, 0.0]], cmap="gray")
fig.suptitle("determinism")
_save(fig, sys.argv[1])
"""


def _render(path, epoch, hashseed):
    # Different SOURCE_DATE_EPOCH (read by matplotlib and fontTools for their dates) and hash seeds: any date or
    # hash that reached the bytes would make the two files differ, without waiting for the clock to move.
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), PYTHONHASHSEED=str(hashseed))
    subprocess.run([sys.executable, "-c", RENDER, str(path)], check=True, env=env, timeout=120)


def test_a_figure_saved_by_two_processes_is_the_same_bytes(tmp_path):
    _render(tmp_path / "a" / "fig.png", 1_000_000_000, 1)
    _render(tmp_path / "b" / "fig.png", 2_000_000_000, 2)
    for ext in ("png", "pdf"):
        a, b = ((tmp_path / d / f"fig.{ext}").read_bytes() for d in "ab")
        assert a == b, f"{ext} differs between two identical renders"
    pdf = (tmp_path / "a" / "fig.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and b"/CreationDate" not in pdf and b"/ModDate" not in pdf
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType (Type 42) fonts, not Type 3
    png = (tmp_path / "a" / "fig.png").read_bytes()
    assert png.startswith(b"\x89PNG") and b"tIME" not in png and b"Creation Time" not in png


NET = dict(img_resolution=8, img_channels=1, model_channels=8, channel_mult=[1, 2], channel_mult_emb=2,
           num_blocks=1, attn_resolutions=[], dropout=0.0, embedding_type="positional")


def _train(tmp_path, name):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1
    cfg = TrainConfig(network=dict(NET), batch_size=16, pool_size=32, total_steps=3, lr=1e-3, lr_rampup_kimg=0,
                      conditional=False, pairing="assignment", log_every=1, checkpoint_every=3, ema_halflife_kimg=0.5)
    ck = tmp_path / name / "ck"
    train(cfg, images, None, out_path=tmp_path / name / "net.pt", checkpoint_dir=ck, log=lambda m: None)
    out, timing = tmp_path / name / "loss.csv", tmp_path / "logs" / f"{name}.timing.csv"
    _loss_csv(ck / "loss.jsonl", out, timing=timing)
    return out, timing


def test_loss_csv_has_no_wall_clock_columns_and_the_timing_log_has_them(tmp_path):
    torch.set_num_threads(1)
    out, timing = _train(tmp_path, "a")
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert not set(TIMING_FIELDS) & set(rows[0]) and {"step", "kimg", "loss", "paired_distance"} <= set(rows[0])
    with open(timing) as fh:
        timed = list(csv.DictReader(fh))
    assert list(timed[0]) == ["step", "sec_per_kimg", "pair_ms"] and [int(r["step"]) for r in timed] == [1, 2, 3]
    assert all(float(r["sec_per_kimg"]) > 0 for r in timed)
    again, _ = _train(tmp_path, "b")  # an identical run: the same loss.csv, byte for byte
    assert again.read_bytes() == out.read_bytes()


def test_loss_csv_of_an_empty_log(tmp_path):
    (tmp_path / "loss.jsonl").write_text("")
    _loss_csv(tmp_path / "loss.jsonl", tmp_path / "loss.csv", timing=tmp_path / "t.csv")
    assert (tmp_path / "loss.csv").read_text().splitlines() == ["step,kimg,loss"]
    assert (tmp_path / "t.csv").read_text().splitlines() == ["step,sec_per_kimg,pair_ms"]
