DISCS = list(P["guidance"]["discriminators"])


def disc_model(w):
    return P["guidance"]["discriminators"][w.disc]["model"]


rule fake_samples:
    input:
        OVERLAY,
        network="results/models/{model}/network.pt",
    output:
        fakes="results/dg/fakes/{model}.npz",
    params:
        guidance=P["guidance"],
    wildcard_constraints:
        model="|".join(MODELS),
    threads: THREADS
    shell:
        cli("fake-samples") + " --model {wildcards.model} --network {input.network} --out {output.fakes}"


rule train_discriminator:
    input:
        OVERLAY,
        fakes=lambda w: f"results/dg/fakes/{disc_model(w)}.npz",
        data="results/data/dataset.npz",
    output:
        disc="results/dg/discriminators/{disc}.pt",
        metrics="results/dg/discriminators/{disc}.json",
    params:
        guidance=P["guidance"],
    wildcard_constraints:
        disc="|".join(DISCS),
    threads: THREADS
    shell:
        cli("train-discriminator") + " --disc {wildcards.disc} --fakes {input.fakes} --data {input.data}"
        " --out {output.disc} --metrics {output.metrics}"


rule guided_sample:
    input:
        OVERLAY,
        network=lambda w: f"results/models/{disc_model(w)}/network.pt",
        disc="results/dg/discriminators/{disc}.pt",
    output:
        samples="results/dg/samples/{disc}.npz",
    params:
        guidance=P["guidance"],
        sample=P["sample"],
    wildcard_constraints:
        disc="|".join(DISCS),
    threads: THREADS
    shell:
        cli("guided-sample") + " --disc {wildcards.disc} --network {input.network} --discriminator {input.disc}"
        " --out {output.samples}"


rule guided_fid:
    input:
        OVERLAY,
        samples="results/dg/samples/{disc}.npz",
        classifier="results/classifier/classifier.pt",
        data="results/data/dataset.npz",
    output:
        fid="results/dg/fid/{disc}.csv",
    wildcard_constraints:
        disc="|".join(DISCS),
    threads: THREADS
    shell:
        cli("fid") + " --model {wildcards.disc} --samples {input.samples} --classifier {input.classifier}"
        " --data {input.data} --out {output.fid}"
