"""Parity with NVlabs/edm reference outputs (fixtures: tests/fixtures/edm_reference, see README there)."""

import json

import numpy as np
import pytest
import torch

from aot_diffusion.networks import build_network, load_edm_state_dict
from aot_diffusion.sampling import edm_sampler
from conftest import REFERENCE, gaussian_mixture_denoiser

NETWORK_FILES = sorted(p.name for p in REFERENCE.glob("songunet_*_golden.npz"))


@pytest.mark.parametrize("name", NETWORK_FILES)
def test_songunet_matches_edm(name):
    ref = np.load(REFERENCE / name)
    net = build_network(json.loads(str(ref["config"])))
    load_edm_state_dict(net, {k: ref[k] for k in ref.files if k.startswith("param/")})
    net.eval()
    kwargs = {}
    for key in ("class_labels", "augment_labels"):
        if key in ref.files:
            kwargs[key] = torch.as_tensor(ref[key])
    with torch.no_grad():
        out = net(torch.as_tensor(ref["x"]), torch.as_tensor(ref["sigma"]), **kwargs)
    err = np.abs(out.numpy() - ref["out"]).max()
    assert err <= 1e-4, f"{name}: max abs error {err}"


def _golden_keys(golden):
    return sorted(k for k in golden if k.startswith(("heun_", "euler_")))


def test_golden_file_has_sampler_cases(sampler_golden):
    assert len(_golden_keys(sampler_golden)) >= 4


@pytest.mark.parametrize("key", ["heun_steps18_rho7", "heun_steps14_rho90", "heun_steps5_rho7", "euler_steps10_rho7"])
def test_sampler_matches_edm(sampler_golden, key):
    g = sampler_golden
    solver, steps, rho = key.split("_")
    denoise = gaussian_mixture_denoiser(g["means"], g["std"], g["weights"])
    latents = torch.as_tensor(g["latents"])
    out = edm_sampler(denoise, latents, num_steps=int(steps[len("steps"):]), rho=float(rho[len("rho"):]),
                      sigma_min=float(g["sigma_min"]), sigma_max=float(g["sigma_max"]), solver=solver)
    assert out.dtype == torch.float64
    err = np.abs(out.numpy() - g[key]).max()
    assert err <= 1e-8, f"{key}: max abs error {err}"
