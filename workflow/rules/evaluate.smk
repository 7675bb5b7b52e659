rule evaluate:
    input:
        model=eval_model_dir,
        data=lambda w: eval_settings(w).get("data", []),
    output:
        result=f"{RES}/{{exp}}/eval/{{model}}/{{bench}}.json",
        scores=f"{RES}/{{exp}}/eval/{{model}}/{{bench}}.items.jsonl",
    log:
        f"{RES}/{{exp}}/logs/eval_{{model}}_{{bench}}.log",
    benchmark:
        f"{RES}/{{exp}}/benchmarks/eval_{{model}}_{{bench}}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        benchmark=lambda w: BENCH[w.bench]["benchmark"],
        cfg=lambda w: as_json(eval_settings(w)),
        out=lambda w: f"{RES}/{w.exp}/eval/{w.model}",
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q evaluate --model {input.model} --benchmark {params.benchmark}"
        " --config {params.cfg:q} --name {wildcards.bench} --out-dir {params.out} > {log} 2>&1"
