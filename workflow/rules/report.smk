localrules:
    aggregate,
    figures,
    front_page,


rule aggregate:
    input:
        evals=lambda w: eval_dirs(w.exp),
        # claim (a), the position regression, reads each order's per-sample losses
        losses=lambda w: sample_loss_files(w.exp),
        # claim (f): every merge of all N orders (first seed) on the training samples
        merge_losses=lambda w: main_merge_losses(w.exp),
        # claim (d)'s mechanism: the share of task-vector entries that are exactly zero
        zero_share=lambda w: zero_share_source(w.exp),
    output:
        claims=report(
            L.table("claims.md"),
            caption="../report/claims_table.rst",
            category="Tables",
        ),
        claims_csv=L.table("claims.csv"),
        main=report(
            L.table("main.md"), caption="../report/main_table.rst", category="Tables"
        ),
        main_csv=L.table("main.csv"),
        main_tex=L.table("main.tex"),
        paired=report(
            L.table("paired.md"),
            caption="../report/paired_table.rst",
            category="Tables",
        ),
        paired_csv=L.table("paired.csv"),
        all_models=L.table("all_models.csv"),
    log:
        L.log("aggregate"),
    conda:
        "../../envs/report.yaml"
    params:
        manifest=lambda w: as_json(manifest(w.exp)),
    shell:
        "ordermerge -q aggregate --manifest {params.manifest:q} > {log} 2>&1"


rule figures:
    input:
        evals=lambda w: eval_dirs(w.exp),
        claims=rules.aggregate.output.claims_csv,
        losses=lambda w: sample_loss_files(w.exp),
        sft=lambda w: [
            layout(w.exp, r).sft(k)
            for r in replicates(w.exp)
            for k in range(1, n_orders(w.exp) + 1)
        ],
        # the zero task-vector share figure reads one merge of all N per replicate
        zero_share=lambda w: zero_share_source(w.exp),
    output:
        **{
            f: report(L.figure(f), caption=f"../report/{f}.rst", category="Figures")
            for f in FIGURES
        },
        **{f"{f}_pdf": L.figure(f, "pdf") for f in FIGURES},
        imbalance_csv=L.table("imbalance.csv"),
    log:
        L.log("figures"),
    conda:
        "../../envs/report.yaml"
    params:
        manifest=lambda w: as_json(manifest(w.exp)),
    shell:
        "ordermerge -q figures --manifest {params.manifest:q} > {log} 2>&1"


rule front_page:
    input:
        claims=[layout(e).table("claims.csv") for e in EXPS],
        stats=[layout(e).data("stats") for e in EXPS],
    output:
        FRONT_PAGE,
    log:
        f"{RES}/logs/front_page-{CONFIG_DIGEST}.log",
    conda:
        "../../envs/report.yaml"
    params:
        runs=as_json(
            [{"manifest": manifest(e), "setup": setup_summary(e)} for e in EXPS]
        ),
    shell:
        "ordermerge -q front-page --runs {params.runs:q} --out {output} > {log} 2>&1"
