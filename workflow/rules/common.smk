# Resolve and validate the parameters (params.yaml + --config overrides) before any rule: a bad value stops here.
import sys

from aot_diffusion import cluster, dag, frontdoors
from aot_diffusion.params import ParamError, resolve

try:
    P = resolve(config)
    frontdoors.check_dag_shape(P)
except ParamError as exc:
    sys.exit(f"params: {exc}")

PLAN = dag.Plan(P)
L, CTX = PLAN.L, PLAN.ctx
THREADS = P["threads"]

if workflow.is_main_process:  # not again inside each cluster job
    # a finished job's output edited since it wrote it (its record holds each output's sha256) stops the run,
    # naming the file, unless that job is forced to run again; the edited bytes never reach dvc.lock
    frontdoors.refuse_hand_edits(PLAN, sys.argv)
    frontdoors.report_environment(PLAN)  # results made with other software or on another device: said first


def stage_input(st, key):
    """Inputs (data, and the parameter records of the jobs it reads from), as `ancient`: file times don't
    count. A job reruns when one of its outputs is missing, among them its parameter record for the current
    parameters (src/aot_diffusion/dag.py: the record's name hashes the parameters of the stage and of every
    stage upstream, so a change upstream renames the records downstream too). So files that DVC rewrote or restored (`dvc exp apply`) rerun nothing here, and a parameter
    change that DVC ran, or that nobody ran yet, is seen by its record: both doors judge by the same evidence."""
    records = [PLAN.record_path(*up) for up in PLAN.upstream(st, key)]  # requested, so checked
    return [ancient(str(path)) for path in [*st.deps(L, CTX, key), *records]]


def stage_output(st, key):
    return [str(path) for path in [*st.outs(L, CTX, key), PLAN.record_path(st, key)]]


# What every job asks a cluster for (src/aot_diffusion/cluster.py): the profile's sizes per kind of stage, the
# site's account and partitions (config/slurm/site.yaml).
SITE = cluster.site_settings()
REQUESTS = {dag.job_id(st, key): cluster.requests(st, CTX, SITE)
            for st in dag.ALL_STAGES for key in dag.keys_of(st, CTX)}


def on_slurm():
    plugin = workflow.executor_plugin
    return plugin is not None and "slurm" in plugin.name


onstart:
    # first: DVC's repository lock for the whole run (frontdoors.take_door_lock), so `dvc repro` / `dvc exp run`
    # started meanwhile refuse before they remove an output or recompose params.yaml, and this run refuses
    # while one of them (or another Snakemake run) is going on
    frontdoors.take_door_lock()
    if on_slurm():  # before anything is submitted: a request no node of its partition can meet stops here
        planned = {rule: req for rule, req in REQUESTS.items() if rule in {job.rule.name for job in workflow.dag.jobs}}
        partitions = cluster.sinfo()
        cluster.preflight(planned, partitions)
        print(f"pre-flight: the {len(planned)} planned jobs fit partition(s) "
              f"{sorted({req.get('slurm_partition') for req in planned.values()} & set(partitions))}")
    frontdoors.acquire_run_lock(P)
    frontdoors.write_run_params(P)  # a failed run puts the previous params.yaml back (onerror)


onsuccess:
    frontdoors.release_run_lock()
    frontdoors.release_door_lock()  # `dvc commit` takes it
    frontdoors.record_in_dvc()


onerror:
    frontdoors.restore_run_params()
    frontdoors.release_run_lock()
    frontdoors.release_door_lock()
