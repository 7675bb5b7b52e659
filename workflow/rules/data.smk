rule prepare_base:
    output:
        directory(L.base),
    log:
        L.log("prepare_base"),
    benchmark:
        L.benchmark("prepare_base")
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
        # the dataset's local files, if it is not a hub dataset
        sources=data_sources,
    output:
        train=L.data("train"),
        test_id=L.data("test_id"),
        test_ood=L.data("test_ood"),
        # tuned merges choose their parameters on it (empty unless data.val_size > 0)
        val=L.data("val"),
        stats=L.data("stats"),
    log:
        L.log("prepare_data"),
    benchmark:
        L.benchmark("prepare_data")
    conda:
        "../../envs/data.yaml"
    params:
        cfg=lambda w: as_json(EXPS[w.exp]["data"]),
        prompt=lambda w: as_json(EXPS[w.exp]["prompt"]),
        out=lambda w: layout(w.exp).data_dir,
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q prepare-data --config {params.cfg:q} --prompt {params.prompt:q}"
        " --base {input.base} --out {params.out} > {log} 2>&1"


rule make_order:
    input:
        rules.prepare_data.output.train,
    output:
        L.order("{k}"),
    log:
        L.rep_log("make_order{k}"),
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
        " --replicate {wildcards.rep} --out {output} > {log} 2>&1"
