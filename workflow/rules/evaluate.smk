rule evaluate:
    input:
        model=eval_model_dir,
        data=eval_data,
    output:
        # every benchmark of this model: {name}.json + {name}.items.jsonl, published whole
        directory(L.eval_dir("{model}")),
    log:
        L.rep_log("eval_{model}"),
    benchmark:
        L.rep_benchmark("eval_{model}")
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        # the largest inference plan of its benchmarks, MB (ordermerge.plan): see sft's
        gpu_mem_mb=eval_gpu_mem_mb,
    params:
        suite=lambda w: as_json(eval_suite(w.exp, w.rep, w.model)),
        prompt=lambda w: as_json(EXPS[w.exp]["prompt"]),
    shell:
        "ORDERMERGE_GPU_MEM_MB={resources.gpu_mem_mb} OMP_NUM_THREADS={threads} ordermerge -q evaluate --model {input.model} --suite {params.suite:q}"
        " --prompt {params.prompt:q} --out-dir {output} > {log} 2>&1"
