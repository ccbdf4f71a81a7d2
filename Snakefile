# The replication DAG. Stages are defined once in src/aot_diffusion/dag.py (dvc.yaml is generated from it);
# the rules below are thin: each runs one `aot-diffusion <stage>` command, which reads params.yaml.
#   snakemake --cores all                                    # the effective parameters in params.yaml
#   snakemake --cores all --config profile=smoke             # recompose params.yaml for another profile
#   snakemake --cores all --config train='{pool_size: 256}'  # an override (wins over the profile)
#   snakemake --cores all pool_study                         # the pool-size study (not part of `all`)
# Overrides are written into params.yaml before the first job (as `dvc exp run -S` does), so every stage and
# both front doors see one effective parameter set. After a successful run the finished stages are recorded
# in dvc.lock (`dvc commit`), so `dvc status` agrees with Snakemake.

report: "workflow/report/workflow.rst"  # the report's workflow description


include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"


# `all` is every job of the main stage table, as `dvc repro` runs dvc.yaml: a stage whose outputs no table
# reads (yet) still runs at both doors.
rule all:
    default_target: True
    input:
        [path for st in dag.STAGES for key in dag.keys_of(st, CTX) for path in stage_output(st, key)],
