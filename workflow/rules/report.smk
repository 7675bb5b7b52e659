localrules:
    aggregate,
    figures,


rule aggregate:
    input:
        evals=lambda w: eval_dirs(w.exp),
    output:
        main=report(
            f"{RES}/{{exp}}/tables/main.md",
            caption="../report/main_table.rst",
            category="Tables",
        ),
        main_csv=f"{RES}/{{exp}}/tables/main.csv",
        main_tex=f"{RES}/{{exp}}/tables/main.tex",
        paired=report(
            f"{RES}/{{exp}}/tables/paired.md",
            caption="../report/paired_table.rst",
            category="Tables",
        ),
        paired_csv=f"{RES}/{{exp}}/tables/paired.csv",
    log:
        f"{RES}/{{exp}}/logs/aggregate.log",
    conda:
        "../../envs/report.yaml"
    params:
        manifest=lambda w: as_json(manifest(w.exp)),
        root=lambda w: f"{RES}/{w.exp}",
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q aggregate --manifest {params.manifest:q} --root {params.root}"
        " > {log} 2>&1"


rule figures:
    input:
        tables=rules.aggregate.output.main_csv,
        losses=lambda w: [
            f"{RES}/{w.exp}/sft/order{k}/sample_losses.parquet"
            for k in range(1, n_orders(w.exp) + 1)
        ],
        merges=lambda w: [f"{model_dir(w.exp, m)}" for m in merged_ids(w.exp)],
    output:
        **{
            f: report(
                f"{RES}/{{exp}}/figures/{f}.png",
                caption=f"../report/{f}.rst",
                category="Figures",
            )
            for f in FIGURES
        },
    log:
        f"{RES}/{{exp}}/logs/figures.log",
    conda:
        "../../envs/report.yaml"
    params:
        manifest=lambda w: as_json(manifest(w.exp)),
        root=lambda w: f"{RES}/{w.exp}",
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q figures --manifest {params.manifest:q} --root {params.root} > {log} 2>&1"
