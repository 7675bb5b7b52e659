rule sft:
    input:
        base=rules.prepare_base.output[0],
        data=rules.prepare_data.output.train,
        order=rules.make_order.output[0],
    output:
        directory(L.sft("{k}")),
    log:
        L.log("sft_order{k}"),
    benchmark:
        L.benchmark("sft_order{k}")
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=sft_mem_mb,
        runtime=240,
        # from the memory plan with gpu_memory_gb set, else 0 (CPU)
        gpu=sft_gpus,
        # torchrun ranks; 0: one per GPU. On CPU, e.g. sft:ranks=2 runs two gloo FSDP ranks
        ranks=0,
    params:
        cfg=lambda w: as_json(EXPS[w.exp]["sft"]),
        prompt=lambda w: as_json(EXPS[w.exp]["prompt"]),
        scratch=lambda w: layout(w.exp).scratch(w.k),
        nproc=sft_nproc,
    shell:
        # The scratch folder is not an output: Snakemake must not delete it before a retry,
        # because the retry resumes from the checkpoint inside it.
        "OMP_NUM_THREADS={threads} ordermerge -q sft --base {input.base} --data {input.data} --order {input.order}"
        " --config {params.cfg:q} --prompt {params.prompt:q} --scratch {params.scratch}"
        " --nproc {params.nproc} --out {output} >> {log} 2>&1"


rule sample_losses:
    input:
        model=rules.sft.output[0],
        data=rules.prepare_data.output.train,
        order=rules.make_order.output[0],
    output:
        L.sample_losses("{k}"),
    log:
        L.log("sample_losses_order{k}"),
    benchmark:
        L.benchmark("sample_losses_order{k}")
    conda:
        "../../envs/train.yaml"
    threads: 2
    params:
        max_length=lambda w: EXPS[w.exp]["sft"]["max_length"],
        prompt=lambda w: as_json(EXPS[w.exp]["prompt"]),
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q sample-losses --model {input.model} --data {input.data}"
        " --order {input.order} --prompt {params.prompt:q} --max-length {params.max_length}"
        " --out {output} > {log} 2>&1"
