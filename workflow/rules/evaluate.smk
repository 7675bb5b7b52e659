rule evaluate:
    input:
        model=eval_model_dir,
        data=eval_data,
    output:
        # every benchmark of this model: {name}.json + {name}.items.jsonl, published whole
        directory(L.eval_dir("{model}")),
    log:
        L.log("eval_{model}"),
    benchmark:
        L.benchmark("eval_{model}")
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        suite=lambda w: as_json(eval_suite(w.exp, w.model)),
        prompt=lambda w: as_json(EXPS[w.exp]["prompt"]),
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q evaluate --model {input.model} --suite {params.suite:q}"
        " --prompt {params.prompt:q} --out-dir {output} > {log} 2>&1"
