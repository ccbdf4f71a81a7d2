# One thin rule per stage of the tables in src/aot_diffusion/dag.py (wildcards: {model}, {disc}, {variant}):
# the main DAG (target `all`) and the pool-size study (target `pool_study`, not part of `all`).
# Tables and figures go into `snakemake --report report.html`, with captions from workflow/report/.
from pathlib import Path

from aot_diffusion.layout import FIGURE_NAMES, TABLE_NAMES

REPORTED = {**{name: "Tables" for name in TABLE_NAMES}, **{name: "Figures" for name in FIGURE_NAMES},
            "pool_size_study": "Pool-size study"}


def reported(path):
    stem = Path(path).stem
    if stem not in REPORTED or Path(path).suffix not in (".csv", ".png"):
        return path
    return report(path, caption=f"../report/{stem}.rst", category=REPORTED[stem],
                  labels={"name": stem, "profile": P["profile"]})


for st in dag.STAGES + dag.POOL_STUDY_STAGES:

    rule:
        name:
            st.name
        input:
            stage_input(st.name),
        output:
            [reported(path) for path in stage_output(st.name)],
        params:
            values=stage_params(st.name),
            command=stage_command(st.name),
        threads: THREADS if st.over or st.gpus(CTX) else 1
        resources:
            gpu=stage_gpus(st.name),
        shell:
            "{params.command}"  # the directive runs late: the command is bound per rule in params
