# Resolve and validate the parameters (params.yaml + --config overrides) before any rule: a bad value stops here.
import sys

from aot_diffusion import dag, frontdoors
from aot_diffusion.layout import Layout
from aot_diffusion.params import ParamError, resolve, select, write_params

try:
    P = resolve(config)
    frontdoors.check_dag_shape(P)
except ParamError as exc:
    sys.exit(f"params: {exc}")

L = Layout(P["profile"])
CTX = dag.Context(P)
MODELS, DISCS = CTX.models, CTX.discs
THREADS = P["threads"]


def _key(st, w):
    return w.get(st.over) if st.over else None


def stage_input(name):
    st = dag.stage(name)
    return lambda w: [str(path) for path in st.deps(L, CTX, _key(st, w))]


def stage_output(name):
    """Declared outputs; checkpoint directories stay out (Snakemake would delete them before a resume)."""
    st = dag.stage(name)
    return [str(path) for path, kind in st.outs(L, "{%s}" % st.over if st.over else None).items()
            if kind != dag.PERSIST]


def stage_params(name):
    st = dag.stage(name)
    return lambda w: select(P, st.params(CTX, _key(st, w)))


def stage_gpus(name):
    return dag.stage(name).gpus(CTX) if P["device"] != "cpu" else 0


def stage_command(name):
    st = dag.stage(name)
    return lambda w: dag.command(st, _key(st, w))


wildcard_constraints:
    model="|".join(MODELS),
    disc="|".join(DISCS),
    variant="|".join(CTX.variants),


onstart:
    frontdoors.refuse_if_dvc_running()
    if write_params(P):
        print("params.yaml: written with the --config overrides (the run's effective parameters)")


onsuccess:
    frontdoors.record_in_dvc()
