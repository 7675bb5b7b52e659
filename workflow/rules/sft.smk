rule sft:
    input:
        base=rules.prepare_base.output[0],
        data=rules.prepare_data.output.train,
        order=rules.make_order.output[0],
    output:
        directory(f"{RES}/{{exp}}/sft/order{{k}}/model"),
    log:
        f"{RES}/{{exp}}/logs/sft_order{{k}}.log",
    benchmark:
        f"{RES}/{{exp}}/benchmarks/sft_order{{k}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        # GPUs for this job; more than one runs the job's ranks under torchrun (--nproc)
        gpu=0,
    params:
        cfg=lambda w: as_json(EXPS[w.exp]["sft"]),
        scratch=lambda w: f"{RES}/{w.exp}/scratch/order{w.k}",
    shell:
        # The scratch folder is not an output: Snakemake must not delete it before a retry,
        # because the retry resumes from the checkpoint inside it.
        "OMP_NUM_THREADS={threads} ordermerge -q sft --base {input.base} --data {input.data} --order {input.order}"
        " --config {params.cfg:q} --scratch {params.scratch} --nproc {resources.gpu} --out {output} >> {log} 2>&1"


rule sample_losses:
    input:
        model=rules.sft.output[0],
        data=rules.prepare_data.output.train,
        order=rules.make_order.output[0],
    output:
        f"{RES}/{{exp}}/sft/order{{k}}/sample_losses.parquet",
    log:
        f"{RES}/{{exp}}/logs/sample_losses_order{{k}}.log",
    benchmark:
        f"{RES}/{{exp}}/benchmarks/sample_losses_order{{k}}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    params:
        max_length=lambda w: EXPS[w.exp]["sft"]["max_length"],
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q sample-losses --model {input.model} --data {input.data}"
        " --order {input.order} --max-length {params.max_length} --out {output} > {log} 2>&1"
