rule merge:
    input:
        base=rules.prepare_base.output[0],
        models=lambda w: [layout(w.exp).sft(k) for k in range(1, int(w.m) + 1)],
    output:
        directory(L.merged("{merge}", "{m}", "{seed}")),
    log:
        L.log("merge_{merge}_n{m}_s{seed}"),
    benchmark:
        L.benchmark("merge_{merge}_n{m}_s{seed}")
    conda:
        "../../envs/merge.yaml"
    threads: 2
    resources:
        mem_mb=merge_mem_mb,
    params:
        method=lambda w: MERGES[w.merge]["method"],
        cfg=merge_config,
        weights=lambda w: (
            "--weights " + " ".join(map(str, MERGES[w.merge]["weights"][: int(w.m)]))
            if "weights" in MERGES[w.merge]
            else ""
        ),
        dtype=lambda w: (
            f"--dtype {MERGES[w.merge]['dtype']}" if MERGES[w.merge]["dtype"] else ""
        ),
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q merge --base {input.base} --models {input.models} --method {params.method}"
        " --config {params.cfg:q} --name {wildcards.merge} {params.weights} {params.dtype}"
        " --seed {wildcards.seed} --threads {threads} --out {output} > {log} 2>&1"


# the same command as sample_losses, on a merge: a merge has no order, so the order file is
# for its ids only (claim f compares the merge with every order's model)
use rule sample_losses as merge_sample_losses with:
    input:
        model=rules.merge.output[0],
        data=rules.prepare_data.output.train,
        order=lambda w: layout(w.exp).order(1),
    output:
        L.merge_sample_losses("{merge}", "{m}", "{seed}"),
    log:
        L.log("sample_losses_{merge}_n{m}_s{seed}"),
    benchmark:
        L.benchmark("sample_losses_{merge}_n{m}_s{seed}")
