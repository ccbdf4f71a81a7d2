from aot_diffusion.layout import FIGURE_NAMES, TABLE_NAMES


def reported(paths, category):
    return [report(p, caption=f"../report/{Path(p).stem}.rst", category=category,
                   labels={"name": Path(p).name, "profile": P["profile"]}) for p in paths]


rule tables:
    input:
        stage_input("tables"),
    output:
        reported([p for p in stage_output("tables") if p.endswith(".csv") and "tables/table" in p], "Tables"),
        [p for p in stage_output("tables") if not (p.endswith(".csv") and "tables/table" in p)],
    params:
        values=stage_params("tables"),
    threads: 1
    shell:
        stage_shell("tables")


rule figures:
    input:
        stage_input("figures"),
    output:
        reported(stage_output("figures"), "Figures"),
    params:
        values=stage_params("figures"),
    threads: 1
    shell:
        stage_shell("figures")


# Score a released NVlabs/edm or EDM-AOT network pickle (not part of `all`):
#   snakemake --cores all --config profile=cifar10 released_pickle=/path/to/network.pkl -- released
rule released_sample:
    input:
        P["released_pickle"] or "released_pickle-is-not-set.pkl",
    output:
        str(L.released_samples),
    threads: THREADS
    resources:
        gpu=1 if P["device"] != "cpu" else 0,
    shell:
        "aot-diffusion sample --model released --network {input}"


rule released:
    input:
        samples=str(L.released_samples),
        reference=str(L.fd_reference),
        features=str(L.feature_network),
    output:
        str(L.released_fd),
    threads: THREADS
    shell:
        "aot-diffusion fd --model released"
