rule merge:
    input:
        base=rules.prepare_base.output[0],
        models=lambda w: [
            f"{RES}/{w.exp}/sft/order{k}/model" for k in range(1, int(w.m) + 1)
        ],
    output:
        directory(f"{RES}/{{exp}}/merged/{{strategy}}/n{{m}}/s{{seed}}/model"),
    log:
        f"{RES}/{{exp}}/logs/merge_{{strategy}}_n{{m}}_s{{seed}}.log",
    benchmark:
        f"{RES}/{{exp}}/benchmarks/merge_{{strategy}}_n{{m}}_s{{seed}}.tsv"
    conda:
        "../../envs/merge.yaml"
    resources:
        mem_mb=merge_mem_mb,
    params:
        method=lambda w: MERGES[w.strategy]["method"],
        args=lambda w: " ".join(
            f"--param {k}={json.dumps(v)}"
            for k, v in sorted(MERGES[w.strategy]["params"].items())
        ),
        weights=lambda w: (
            "--weights "
            + " ".join(map(str, MERGES[w.strategy]["weights"][: int(w.m)]))
            if "weights" in MERGES[w.strategy]
            else ""
        ),
        dtype=lambda w: (
            f"--dtype {MERGES[w.strategy]['dtype']}"
            if MERGES[w.strategy]["dtype"]
            else ""
        ),
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q merge --base {input.base} --models {input.models}"
        " --strategy {params.method} {params.args} {params.weights} {params.dtype}"
        " --seed {wildcards.seed} --out {output} > {log} 2>&1"
