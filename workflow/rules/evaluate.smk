rule fid:
    input:
        OVERLAY,
        samples="results/samples/{model}.npz",
        classifier="results/classifier/classifier.pt",
        data="results/data/dataset.npz",
    output:
        fid="results/fid/{model}.csv",
    wildcard_constraints:
        model="|".join(MODELS),
    threads: THREADS
    shell:
        cli("fid") + " --model {wildcards.model} --samples {input.samples} --classifier {input.classifier}"
        " --data {input.data} --out {output.fid}"


rule curvature:
    input:
        OVERLAY,
        network="results/models/{model}/network.pt",
    output:
        curve="results/curvature/{model}.npz",
        metrics="results/curvature/{model}.json",
    params:
        curvature=P["curvature"],
        sample=P["sample"],
    wildcard_constraints:
        model="|".join(MODELS),
    threads: THREADS
    shell:
        cli("curvature") + " --model {wildcards.model} --network {input.network} --out {output.curve}"
        " --metrics {output.metrics}"
