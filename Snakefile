# ordermerge: fine-tune on N data orders, merge selectively, evaluate, plot.
# Usage: snakemake --cores 2   (see README; --configfile configs/tiny.yaml for the test setup)


# The embedded default experiment, unless the user names their own with --configfile
# (Snakemake would otherwise merge the two, mixing their experiments).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# snakemake --report: the front page says what was run and shows the claims tables
report: front_page_report()


rule all:
    default_target: True
    input:
        all_targets(),
