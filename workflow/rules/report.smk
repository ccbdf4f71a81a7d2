rule tables:
    input:
        OVERLAY,
        fid=expand("results/fid/{model}.csv", model=MODELS),
        curvature=expand("results/curvature/{model}.json", model=MODELS),
        classifier="results/classifier/metrics.json",
        dg_fid=expand("results/dg/fid/{disc}.csv", disc=DISCS),
        dg_metrics=expand("results/dg/discriminators/{disc}.json", disc=DISCS),
    output:
        table1="results/tables/table1_fid_vs_nfe.csv",
        table1_md="results/tables/table1_fid_vs_nfe.md",
        table3="results/tables/table3_curvature.csv",
        table3_md="results/tables/table3_curvature.md",
        table2="results/tables/table2_guidance.csv",
        table2_md="results/tables/table2_guidance.md",
        metrics="results/metrics.json",
    threads: 1
    shell:
        cli("tables") + " --fid-dir results/fid --curvature-dir results/curvature --dg-dir results/dg"
        " --out-dir results/tables"
        " --metrics {output.metrics} --classifier-metrics {input.classifier}"


rule figures:
    input:
        OVERLAY,
        fid=expand("results/fid/{model}.csv", model=MODELS),
        curvature=expand("results/curvature/{model}.npz", model=MODELS),
        samples=expand("results/samples/{model}.npz", model=MODELS),
        loss=expand("results/models/{model}/loss.jsonl", model=MODELS),
        dg_fid=expand("results/dg/fid/{disc}.csv", disc=DISCS),
    output:
        expand("figures/{name}.png", name=["fid_vs_nfe", "rho_steps_heatmap", "curvature_vs_sigma",
               "truncation_vs_nfe", "guidance_fid_vs_nfe", "samples_low_nfe", "samples_high_nfe", "loss_curves", "teaser_denoiser_strip"]),
    threads: 1
    shell:
        cli("figures") + " --results results --out-dir figures"


# Score a released checkpoint without training (not part of `all`; see params.yaml, released_pickle).
rule released_sample:
    input:
        OVERLAY,
        network=config.get("released_pickle") or "released_pickle-is-not-set.pkl",
    output:
        samples="results/released/samples.npz",
    threads: THREADS
    resources:
        gpu=1 if P["train"]["device"] == "cuda" else 0,
    shell:
        cli("sample") + " --model released --network {input.network} --out {output.samples}"


rule released:
    input:
        OVERLAY,
        samples="results/released/samples.npz",
        classifier="results/classifier/classifier.pt",
        data="results/data/dataset.npz",
    output:
        fid="results/released/fid.csv",
    threads: THREADS
    shell:
        cli("fid") + " --model released --samples {input.samples} --classifier {input.classifier}"
        " --data {input.data} --out {output.fid}"
