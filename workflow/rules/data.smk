rule prepare_base:
    output:
        directory(f"{RES}/{{exp}}/base"),
    log:
        f"{RES}/{{exp}}/logs/prepare_base.log",
    benchmark:
        f"{RES}/{{exp}}/benchmarks/prepare_base.tsv"
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=4000,
    params:
        spec=lambda w: EXPS[w.exp]["base"]["spec"],
        dtype=lambda w: EXPS[w.exp]["base"]["dtype"],
        seed=lambda w: EXPS[w.exp]["base"]["seed"],
        tiny=lambda w: as_json(EXPS[w.exp]["base"]["tiny"]),
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q prepare-base --spec {params.spec:q} --dtype {params.dtype}"
        " --seed {params.seed} --tiny {params.tiny:q} --out {output} > {log} 2>&1"


rule prepare_data:
    input:
        base=rules.prepare_base.output[0],
    output:
        train=f"{RES}/{{exp}}/data/train.jsonl",
        test_id=f"{RES}/{{exp}}/data/test_id.jsonl",
        test_ood=f"{RES}/{{exp}}/data/test_ood.jsonl",
        stats=f"{RES}/{{exp}}/data/stats.json",
    log:
        f"{RES}/{{exp}}/logs/prepare_data.log",
    benchmark:
        f"{RES}/{{exp}}/benchmarks/prepare_data.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        cfg=lambda w: as_json(EXPS[w.exp]["data"]),
        out=lambda w: f"{RES}/{w.exp}/data",
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q prepare-data --config {params.cfg:q} --base {input.base}"
        " --out {params.out} > {log} 2>&1"


rule make_order:
    input:
        rules.prepare_data.output.train,
    output:
        f"{RES}/{{exp}}/orders/order{{k}}.json",
    log:
        f"{RES}/{{exp}}/logs/make_order{{k}}.log",
    conda:
        "../../envs/data.yaml"
    params:
        mode=lambda w: EXPS[w.exp]["orders"]["mode"],
        epochs=lambda w: EXPS[w.exp]["orders"]["epochs"],
        seed=lambda w: EXPS[w.exp]["orders"]["seed"],
        batch=lambda w: EXPS[w.exp]["sft"]["batch_size"],
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q make-order --data {input} --k {wildcards.k} --epochs {params.epochs}"
        " --mode {params.mode} --seed {params.seed} --batch-size {params.batch}"
        " --out {output} > {log} 2>&1"
