rule sft:
    input:
        base=rules.prepare_base.output[0],
        data=rules.prepare_data.output.train,
        order=rules.make_order.output[0],
    output:
        directory(L.sft("{k}")),
    log:
        L.rep_log("sft_order{k}"),
    benchmark:
        L.rep_benchmark("sft_order{k}")
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=sft_mem_mb,
        runtime=240,
        # from the memory plan with gpu_memory_gb set, else 0 (CPU)
        gpu=sft_gpus,
        # the memory plan's, MB: jobs sharing a GPU (--resources gpu_mem_mb=<card>) fit in it
        gpu_mem_mb=sft_gpu_mem_mb,
        # torchrun ranks; 0: one per GPU. On CPU, e.g. sft:ranks=2 runs two gloo FSDP ranks
        ranks=0,
    params:
        cfg=lambda w: as_json(sft_config(w.exp, w.rep)),
        prompt=lambda w: as_json(EXPS[w.exp]["prompt"]),
        scratch=lambda w: layout(w.exp, w.rep).scratch(w.k),
        nproc=sft_nproc,
    shell:
        # The scratch folder is not an output: Snakemake must not delete it before a retry,
        # because the retry resumes from the checkpoint inside it.
        "ORDERMERGE_GPU_MEM_MB={resources.gpu_mem_mb} OMP_NUM_THREADS={threads} ordermerge -q sft --base {input.base} --data {input.data} --order {input.order}"
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
        L.rep_log("sample_losses_order{k}"),
    benchmark:
        L.rep_benchmark("sample_losses_order{k}")
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        # the inference plan's, MB (ordermerge.plan): see sft's
        gpu_mem_mb=sample_losses_gpu_mem_mb,
    params:
        max_length=lambda w: EXPS[w.exp]["sft"]["max_length"],
        prompt=lambda w: as_json(EXPS[w.exp]["prompt"]),
    shell:
        "ORDERMERGE_GPU_MEM_MB={resources.gpu_mem_mb} OMP_NUM_THREADS={threads} ordermerge -q sample-losses --model {input.model} --data {input.data}"
        " --order {input.order} --prompt {params.prompt:q} --max-length {params.max_length}"
        " --out {output} > {log} 2>&1"
