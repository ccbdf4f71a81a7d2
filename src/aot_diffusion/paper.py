"""The published CIFAR-10 numbers this pipeline is compared with, and the protocol each was measured under.

Sources: the AOT paper (EDM-AOT's README gives its sampler settings), the EDM paper (Karras et al. 2022, its
Table 2) and the DG paper (Kim et al. 2023) with their official code (NVlabs/edm, alsdudrla10/DG). Every FID
is clean Inception FID of 50k samples against the CIFAR-10 **training** set's statistics; EDM generates three
50k sets and reports the minimum. :func:`differences` lists where a parameter set's protocol departs from the
protocol of a published cell (the paper table's `protocol_differs` column).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

__all__ = ["Cell", "TABLE1_CELLS", "DG_CELLS", "CALIBRATION", "PAPER_N", "PAPER_SEEDS", "PAPER_MIMG",
           "paper_fid", "paper_dg_fid", "calibration_setting", "differences", "measurement_differences",
           "training_mimg"]

PAPER_N = 50_000        # samples per FID
PAPER_SEEDS = 3         # EDM's protocol: the minimum FID of three 50k sets
PAPER_MIMG = 200        # EDM's CIFAR-10 training length (Mimg); the AOT paper's own length is not public


@dataclass(frozen=True)
class Cell:
    """One published FID: who reports it, for which training (EDM or AOT) at which sampler setting, and the training and
    guidance protocol behind it (what :func:`differences` checks)."""
    source: str
    training: str               # "edm" | "aot": the model's training (EDM's random pairing or AOT's)
    conditional: bool
    steps: int                  # Heun steps (NFE = 2 steps - 1)
    rho: float | None           # None: the paper does not state it
    fid: float
    batch: int | None = None    # the training batch of the reported network (None: not public)
    method: str = ""            # Table 2: "EDM + DG" | "AOT + AOT-DG"
    boosting: bool = False      # DG's boosting in the published command
    note: str = ""


# Table 1 of the AOT paper: EDM's rows are the EDM paper's (its DDPM++ "VP" networks at batch 512; its NCSN++
# "VE" networks, the architecture of the cifar10 profile, scored 1.98 unconditional and 1.79 conditional).
TABLE1_CELLS = (
    Cell("EDM paper", "edm", False, 18, 7.0, 1.97, batch=512, note="EDM's DDPM++ (VP) network; NCSN++ (VE): 1.98"),
    Cell("EDM paper", "edm", True, 18, 7.0, 1.79, batch=512, note="EDM's DDPM++ (VP) network; NCSN++ (VE): 1.79"),
    Cell("AOT paper", "aot", False, 18, 7.0, 1.95, batch=256),
    Cell("AOT paper", "aot", False, 14, 90.0, 1.88, batch=256),
    Cell("AOT paper", "aot", True, 18, 7.0, 1.79, batch=256),
    Cell("AOT paper", "aot", True, 15, 72.0, 1.73, batch=256),
)
# Table 2: DG's own EDM + DG (its conditional number uses boosting), and the AOT paper's AOT + AOT-DG at 29 NFE
# (15 steps; the paper does not give rho, nor publish AOT-DG's code: the cifar10 profile samples rho 72 and 90).
DG_CELLS = (
    Cell("DG paper", "edm", False, 18, 7.0, 1.77, batch=512, method="EDM + DG"),
    Cell("DG paper", "edm", True, 18, 7.0, 1.64, batch=512, method="EDM + DG", boosting=True),
    Cell("AOT paper", "aot", False, 15, None, 1.68, batch=256, method="AOT + AOT-DG",
         note="no official AOT-DG code; rho not stated"),
    Cell("AOT paper", "aot", True, 15, None, 1.58, batch=256, method="AOT + AOT-DG", boosting=True,
         note="no official AOT-DG code; rho not stated; boosting assumed as DG's conditional command"),
)
# The released networks the `calibrate` target scores before any training: each at the setting of its paper's
# headline (keyed by aot, conditional).
CALIBRATION = {(False, False): TABLE1_CELLS[0], (False, True): TABLE1_CELLS[1],
               (True, False): TABLE1_CELLS[3], (True, True): TABLE1_CELLS[5]}


def paper_fid(training: str, conditional: bool, rho: float, steps: int) -> float | None:
    """Table 1's published FID at this setting, if there is one."""
    for c in TABLE1_CELLS:
        if (c.training, c.conditional, c.rho, c.steps) == (training, bool(conditional), float(rho), int(steps)):
            return c.fid
    return None


def paper_dg_fid(method: str, conditional: bool, rho: float, steps: int) -> float | None:
    """Table 2's published FID of a guided method at this setting (any rho where the paper gives none)."""
    for c in DG_CELLS:
        if (c.method, c.conditional, c.steps) == (method, bool(conditional), int(steps)) \
                and c.rho in (None, float(rho)):
            return c.fid
    return None


def calibration_setting(aot: bool, conditional: bool) -> Cell:
    return CALIBRATION[(bool(aot), bool(conditional))]


def training_mimg(p: Mapping) -> float:
    """Images a trained model saw, in millions (train.total_steps x train.batch_size)."""
    return p["train"]["total_steps"] * p["train"]["batch_size"] / 1e6


def measurement_differences(p: Mapping) -> list[str]:
    """Where the parameters ``p`` score differently from the papers' FID (dataset, features, N, seeds)."""
    out = []
    if p["data"]["dataset"] != "cifar10":
        out.append(f"dataset {p['data']['dataset']}, not CIFAR-10")
    if p["fd"]["features"] != "inception":
        out.append("features: a classifier's, not Inception (FD, not FID)")
    if p["sample"]["num_samples"] != PAPER_N:
        out.append(f"N {p['sample']['num_samples']}, not {PAPER_N}")
    if len(p["sample"]["seeds"]) != PAPER_SEEDS:
        out.append(f"min over {len(p['sample']['seeds'])} sampling seed(s), not {PAPER_SEEDS}")
    return out


def differences(p: Mapping, cell: Cell, *, guided: bool = False) -> list[str]:
    """Where the parameters ``p`` measure ``cell`` differently from its paper (empty: the same protocol, as far as
    it is public). ``guided``: the cell is a Discriminator Guidance row."""
    out = measurement_differences(p)
    if p["fd"]["headline"] != "train":
        out.insert(2, "statistics: held-out images', not the training set's")
    if training_mimg(p) != PAPER_MIMG:
        out.append(f"training {training_mimg(p):g} Mimg, not {PAPER_MIMG}")
    if cell.batch is not None and p["train"]["batch_size"] != cell.batch:
        out.append(f"batch {p['train']['batch_size']}, not {cell.batch}")
    if cell.training == "edm" and not cell.conditional:
        out.append("architecture: NCSN++; the paper's number is EDM's DDPM++ (its NCSN++: 1.98)")
    if cell.training == "aot":
        pools = (p["train"]["pool_size_cond"] if cell.conditional else p["train"]["pool_size"],
                 2048 if cell.conditional else 512)
        if pools[0] != pools[1]:
            out.append(f"AOT pool {pools[0]} per GPU, not {pools[1]}")
    if guided:
        g = p["guidance"]
        if g["protocol"] != "dg":
            out.append(f"discriminator training: {g['protocol']}, not DG's (fixed epochs, shuffled batches of 128)")
        else:
            epochs = g["epochs_cond"] if cell.conditional else g["epochs_uncond"]
            if epochs != (250 if cell.conditional else 60):
                out.append(f"{epochs} discriminator epochs, not DG's {250 if cell.conditional else 60}")
            if g["batch_size"] != 128:
                out.append(f"discriminator batch {g['batch_size']}, not 128")
        if g["num_fake"] != PAPER_N:
            out.append(f"{g['num_fake']} fakes, not {PAPER_N}")
        if (g["fake_steps"], float(g["fake_rho"])) != (18, 7.0):
            out.append(f"fakes at {g['fake_steps']} steps rho {g['fake_rho']:g}, not DG's 18 / 7")
        if g["sigma_window"] is not None:
            out.append(f"guidance window {g['sigma_window']}, not DG's VP time [0.01, 1]")
        weight = g["weight_cond"] if cell.conditional else g["weight_uncond"]
        if weight != (1.0 if cell.conditional else 2.0):
            out.append(f"weight {weight:g}, not DG's {1 if cell.conditional else 2}")
        boosting = g["boosting_cond" if cell.conditional else "boosting_uncond"]
        if boosting != cell.boosting:
            out.append(f"boosting {'on' if boosting else 'off'}, the paper's command: {'on' if cell.boosting else 'off'}")
    return out
