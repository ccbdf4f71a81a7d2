"""The cluster path without a cluster: every job's request comes from the stage table and the profile, the
pre-flight refuses what a partition can never give (on sinfo's own output format), and training stopped at a
job's time limit is resubmitted by the rule's retries and resumes to the same bytes."""

import os
import time

import pytest

from aot_diffusion import cluster, dag
from aot_diffusion.params import compose

from test_pipeline import ROOT, copy_repo, run

SITE = {"account": "lab", "cpu_partition": "cpu", "gpu_partition": "gpu"}

# sinfo -h -o '%P|%c|%m|%l|%G' of a small site: a CPU partition and a GPU partition with two node types
SINFO = """cpu*|16|64000|1-00:00:00|(null)
gpu|32|256000|2-00:00:00|gpu:a100:4(S:0-1)
gpu|64|512000|2-00:00:00|gpu:h100:8
debug|2|4000|30:00|(null)
"""


def _requests(profile, site=SITE):
    p = compose(profile, root=ROOT)
    ctx = dag.Context(p)
    return p, {dag.job_id(st, k): (st, cluster.requests(st, ctx, site))
               for st in dag.ALL_STAGES for k in dag.keys_of(st, ctx)}


@pytest.mark.parametrize("profile", ["smoke", "digits", "cifar10"])
def test_every_job_asks_for_the_resources_of_its_kind_in_the_profile(profile):
    p, reqs = _requests(profile)
    # study, released and calibration too (the released networks' jobs where the profile names their pickles)
    calibrated = {"calibrate_sample", "calibrate_fd"} if profile == "cifar10" else set()
    assert {j.partition("@")[0] for j in reqs} == {st.name for st in dag.ALL_STAGES if st.over != "network"} | calibrated
    for job, (st, req) in reqs.items():
        size = p["resources"][st.resources]
        assert {k: req[k] for k in ("cpus_per_task", "mem_mb", "runtime")} == \
            {k: size[k] for k in ("cpus_per_task", "mem_mb", "runtime")}, job
        gpus = (p["train"]["nproc_per_node"] if st.resources == "train" else 1) if size["gpu"] else 0
        assert req["gpu"] == gpus, job
        assert req["slurm_partition"] == ("gpu" if gpus else "cpu") and req["slurm_account"] == "lab", job
    if profile != "cifar10":  # the offline profiles run on CPU nodes: no --gpus, which sbatch refuses there
        assert all(req["gpu"] == 0 for _, req in reqs.values())
    assert {st.resources for st, _ in reqs.values()} == set(cluster.RESOURCE_CLASSES)


def test_cifar10_requests_written_out():
    """The requests as numbers written here from conf/profile/cifar10.yaml, not recomputed by the rule under test:
    a training job asks for train.nproc_per_node (4) GPUs on the gpu partition, a light job for a CPU node."""
    _, reqs = _requests("cifar10")
    keys = ("cpus_per_task", "mem_mb", "runtime", "gpu", "slurm_partition")
    assert {k: reqs["train@edm_uncond_s0"][1][k] for k in keys} == \
        {"cpus_per_task": 32, "mem_mb": 128000, "runtime": 1440, "gpu": 4, "slurm_partition": "gpu"}
    assert {k: reqs["feature_network"][1][k] for k in keys} == \
        {"cpus_per_task": 8, "mem_mb": 32000, "runtime": 720, "gpu": 1, "slurm_partition": "gpu"}
    assert {k: reqs["check_params"][1][k] for k in keys} == \
        {"cpus_per_task": 1, "mem_mb": 4000, "runtime": 30, "gpu": 0, "slurm_partition": "cpu"}


def test_sinfo_is_read_as_the_most_a_node_of_each_partition_offers():
    parts = cluster.parse_sinfo(SINFO)
    assert parts["cpu"] == dict(cpus_per_task=16, mem_mb=64000, runtime=1440, gpu=0)
    assert parts["gpu"] == dict(cpus_per_task=64, mem_mb=512000, runtime=2880, gpu=8)
    assert parts["debug"]["runtime"] == 30
    assert cluster._minutes("infinite") == float("inf") and cluster._minutes("4:00:00") == 240


def test_preflight_passes_what_fits_and_refuses_a_request_larger_than_its_partition():
    parts = cluster.parse_sinfo(SINFO)
    _, reqs = _requests("digits")
    cluster.preflight({job: req for job, (_, req) in reqs.items()}, parts)  # every digits job fits a CPU node
    _, reqs = _requests("cifar10")
    cluster.preflight({job: req for job, (_, req) in reqs.items()}, parts)
    small = cluster.parse_sinfo(SINFO.replace("gpu|64|512000|2-00:00:00|gpu:h100:8\n", "")
                                .replace("256000", "100000"))
    with pytest.raises(cluster.ClusterError) as err:
        cluster.preflight({job: req for job, (_, req) in reqs.items()}, small)
    msg = str(err.value)
    assert "rule train@edm_uncond_s0: asks for 128000 MB of memory but partition 'gpu' offers at most 100000" in msg
    assert "rule sample@" not in msg  # 32000 MB fits
    with pytest.raises(cluster.ClusterError, match="rule tables: partition 'nope' does not exist"):
        cluster.preflight({"tables": dict(cpus_per_task=1, slurm_partition="nope")}, parts)
    with pytest.raises(cluster.ClusterError, match="asks for 60 minutes but partition 'debug' offers at most 30"):
        cluster.preflight({"fd@x": dict(runtime=60, slurm_partition="debug")}, parts)


@pytest.mark.slow
def test_training_resubmitted_at_its_time_limit_by_the_rule_retries_ends_in_the_same_bytes(tmp_path):
    """Smoke, every job with no time left (AOT_DIFFUSION_DEADLINE = now): the training job stops at its first
    checkpoint with exit 75, Snakemake's retries (resources.train.resubmits) start it again, it resumes and
    finishes; the network is byte-identical to an uninterrupted run's."""
    limited, free = copy_repo(tmp_path / "limited"), copy_repo(tmp_path / "free")
    target = ["train@edm_uncond_s0", "--config", "profile=smoke"]
    run(["snakemake", "--cores", "1", *target], free)
    env = dict(os.environ, AOT_DIFFUSION_DEADLINE=str(time.time()), AOT_DIFFUSION_DEADLINE_MARGIN="0")
    out = __import__("subprocess").run(["snakemake", "--cores", "1", *target], cwd=limited, env=env,
                                       capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "stopped at step 3 before the job's time limit; exit 75" in log
    assert "resumed from" in log and "at step 3" in log
    net = "results/smoke/models/edm_uncond_s0/network.pt"
    assert (limited / net).read_bytes() == (free / net).read_bytes()
