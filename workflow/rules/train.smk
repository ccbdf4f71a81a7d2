rule train:
    input:
        OVERLAY,
        data="results/data/dataset.npz",
    output:
        network="results/models/{model}/network.pt",
        loss="results/models/{model}/loss.jsonl",
    params:
        train=P["train"],
        spec=lambda w: P["models"][w.model],
    wildcard_constraints:
        model="|".join(MODELS),
    threads: THREADS
    resources:
        gpu=P["train"]["nproc_per_node"] if P["train"]["device"] == "cuda" else 0,
    shell:
        cli("train") + " --model {wildcards.model} --data {input.data} --out {output.network} --loss-log {output.loss}"
