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
        str(L.released_samples),
        str(L.fd_reference),
        str(L.feature_network),
    output:
        str(L.released_fd),
    threads: THREADS
    shell:
        "aot-diffusion fd --model released"
