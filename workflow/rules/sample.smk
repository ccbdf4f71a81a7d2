rule sample:
    input:
        OVERLAY,
        network="results/models/{model}/network.pt",
    output:
        samples="results/samples/{model}.npz",
    params:
        sample=P["sample"],
    wildcard_constraints:
        model="|".join(MODELS),
    threads: THREADS
    shell:
        cli("sample") + " --model {wildcards.model} --network {input.network} --out {output.samples}"
