rule evaluate:
    input:
        model=eval_model_dir,
        data=eval_data,
    output:
        # every benchmark of this model: {name}.json + {name}.items.jsonl, published whole
        directory(f"{RES}/{{exp}}/eval/{{model}}"),
    log:
        f"{RES}/{{exp}}/logs/eval_{{model}}.log",
    benchmark:
        f"{RES}/{{exp}}/benchmarks/eval_{{model}}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        suite=lambda w: as_json(eval_suite(w.exp, w.model)),
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q evaluate --model {input.model} --suite {params.suite:q}"
        " --out-dir {output} > {log} 2>&1"
