rule prepare_data:
    input:
        OVERLAY,
    output:
        data="results/data/dataset.npz",
        summary="results/data/summary.json",
    params:
        data=P["data"],
        seed=P["seed"],
    threads: 1
    shell:
        cli("prepare-data") + " --out {output.data} --summary {output.summary}"


rule train_classifier:
    input:
        OVERLAY,
        data="results/data/dataset.npz",
    output:
        model="results/classifier/classifier.pt",
        metrics="results/classifier/metrics.json",
    params:
        classifier=P["classifier"],
    threads: THREADS
    shell:
        cli("train-classifier") + " --data {input.data} --out {output.model} --metrics {output.metrics}"
