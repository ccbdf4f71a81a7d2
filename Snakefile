# The replication DAG. Parameters: params.yaml (+ config/profiles/<profile>.yaml).
#   snakemake --cores all                         # default profile (digits)
#   snakemake --cores all --config profile=smoke  # another profile
# dvc.yaml describes the same stages; tests/test_pipeline.py fails if the two drift apart.

configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/guidance.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.tables.output,
        rules.figures.output,
