rule tune:
    input:
        evals=lambda w: [
            layout(w.exp, w.rep).eval_dir(i) for i in grid_ids(w.exp, w.merge)
        ],
    output:
        L.tuned("{merge}"),
    log:
        L.rep_log("tune_{merge}"),
    conda:
        "../../envs/merge.yaml"
    params:
        grid=lambda w: as_json(grid_points(w.merge)),
    shell:
        "ordermerge -q tune --grid {params.grid:q} --evals {input.evals} --benchmark val"
        " --out {output} > {log} 2>&1"


rule merge:
    input:
        base=rules.prepare_base.output[0],
        # a tuned merge: the parameters its replicate chose on the validation split
        tuning=tuning_record,
        models=lambda w: [
            layout(w.exp, w.rep).sft(k)
            for k in ModelId.merged(w.merge, w.sub, w.seed).merged_orders
        ],
    output:
        directory(L.merged("{merge}", "{sub}", "{seed}")),
    log:
        L.rep_log("merge_{merge}_{sub}_s{seed}"),
    benchmark:
        L.rep_benchmark("merge_{merge}_{sub}_s{seed}")
    conda:
        "../../envs/merge.yaml"
    threads: 2
    resources:
        mem_mb=merge_mem_mb,
    params:
        method=lambda w: MERGES[config_merge(w.merge)]["method"],
        cfg=merge_config,
        weights=lambda w: (
            "--weights "
            + " ".join(
                str(MERGES[config_merge(w.merge)]["weights"][k - 1])
                for k in ModelId.merged(w.merge, w.sub, w.seed).merged_orders
            )
            if "weights" in MERGES[config_merge(w.merge)]
            else ""
        ),
        dtype=lambda w: (
            f"--dtype {MERGES[config_merge(w.merge)]['dtype']}"
            if MERGES[config_merge(w.merge)]["dtype"]
            else ""
        ),
    shell:
        "OMP_NUM_THREADS={threads} ordermerge -q merge --base {input.base} --models {input.models} --method {params.method}"
        " {params.cfg} --name {wildcards.merge} {params.weights} {params.dtype}"
        " --seed {wildcards.seed} --threads {threads} --out {output} > {log} 2>&1"


# the same command as sample_losses, on a merge: a merge has no order, so the order file is
# for its ids only (claim f compares the merge with every order's model)
use rule sample_losses as merge_sample_losses with:
    input:
        model=rules.merge.output[0],
        data=rules.prepare_data.output.train,
        order=lambda w: layout(w.exp, w.rep).order(1),
    output:
        L.merge_sample_losses("{merge}", "{sub}", "{seed}"),
    log:
        L.rep_log("sample_losses_{merge}_{sub}_s{seed}"),
    benchmark:
        L.rep_benchmark("sample_losses_{merge}_{sub}_s{seed}")
