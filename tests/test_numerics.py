"""EDM's numerics on CUDA: TF32 off for matmuls and convolutions (parameter `tf32`, default false) in every stage
that runs a network, set before the stage does any work. No GPU needed: the device check is patched and the stage
function replaced by one that reads the flags when it is called."""

import os

import pytest
import torch
import yaml

from aot_diffusion import cli
from aot_diffusion.params import compose, write_params
from test_pipeline import ROOT


@pytest.fixture
def flags():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_set_from_the_parameter_before_a_network_stage_runs(tmp_path, monkeypatch, flags, tf32):
    p = compose("rehearsal", {"device": "cuda", "tf32": tf32}, root=ROOT)
    monkeypatch.chdir(tmp_path)
    write_params(p)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32  # what it must undo
    seen = {}

    def stage(run, **_):
        seen.update(device=run.device, matmul=torch.backends.cuda.matmul.allow_tf32,
                    cudnn=torch.backends.cudnn.allow_tf32)
        return False  # no outputs, no record

    from aot_diffusion.stages import sample

    monkeypatch.setattr(sample, "sample", stage)
    model = next(iter(yaml.safe_load(open("params.yaml"))["models"]))
    cli.main(["sample", "--model", f"{model}_s0"])
    assert seen == {"device": "cuda", "matmul": tf32, "cudnn": tf32}


def test_tf32_is_a_parameter_of_every_stage_that_runs_a_network():
    from aot_diffusion import dag

    p = compose(root=ROOT)
    plan = dag.Plan(p)
    for st, key in plan.jobs():
        declared = plan.declared(st, key)
        assert ("tf32" in declared) == ("device" in declared), dag.job_id(st, key)
