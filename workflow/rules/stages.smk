# One thin rule per job of the stage tables in src/aot_diffusion/dag.py, named as DVC names it (stage@key):
# the main DAG (target `all`), the pool-size study (target `pool_study`) and the released-pickle scoring
# (target `released`), the last two not part of `all`.
# Tables (their HTML, shown inline) and figures go into `snakemake --report report.html`, with captions from
# workflow/report/.
from pathlib import Path

from aot_diffusion.layout import FIGURE_NAMES, TABLE_NAMES

# A table's HTML and a figure's PNG may share a stem (hybrid_switch): the category and the `kind` label come from
# what the file is, so each is its own entry of the report.
REPORTED = {".html": ("Tables", set(TABLE_NAMES)), ".png": ("Figures", set(FIGURE_NAMES))}


def reported(path):
    stem, suffix = Path(path).stem, Path(path).suffix
    category, names = REPORTED.get(suffix, ("", set()))
    if stem == "pool_size_study" and suffix in REPORTED:
        category, names = "Pool-size study", {stem}
    if stem not in names:
        return path
    return report(path, caption=f"../report/{stem}.rst", category=category,
                  labels={"name": stem, "kind": category.lower().rstrip("s"), "profile": P["profile"]})


PRIORITY = PLAN.priorities()  # on few cores, the long chains first (dag.Plan.priorities)

for st in dag.ALL_STAGES:
    for key in dag.keys_of(st, CTX):

        rule:
            name:
                dag.job_id(st, key)  # DVC's name of the same job: stage or stage@key
            input:
                stage_input(st, key),
            output:
                [reported(path) for path in stage_output(st, key)],
            params:
                command=dag.command(st, key),
            threads: THREADS if st.over or st.gpus(CTX) else 1
            priority: PRIORITY[dag.job_id(st, key)]
            resources:
                **REQUESTS[dag.job_id(st, key)],  # the profile's resources.<class> and the site's partition
            log:
                str(L.job_log(dag.job_id(st, key))),  # logs/<profile>/<job>.log, and the console (tee)
            retries: P["resources"][st.resources]["resubmits"]  # training resumes from its checkpoint (cluster.py)
            shell:
                "{params.command} 2>&1 | tee {log:q}"  # the directive runs late: the command is bound per rule in params


# Score a released NVlabs/edm or EDM-AOT network pickle (not part of `all`):
#   snakemake --cores all --config profile=cifar10 released_pickle=/path/to/network.pkl -- released
rule released:
    input:
        rules.released_fd.output,


# Calibrate the FID path before any training: the released networks of calibration.networks (a pickle named) at
# their papers' settings, and tables/calibration beside the published FIDs (not part of `all`):
#   snakemake --cores all --config profile=cifar10 -- calibrate
rule calibrate:
    input:
        rules.calibration.output,
