# The AdaGen pipeline. Wiring only: the rules live in workflow/rules/, the work in `adagen <stage>`.
#   snakemake --cores all all                                  embedded default (params/default.yaml)
#   snakemake --configfile params/smoke.yaml --cores all all   another params set
#   snakemake --profile slurm all                              on a SLURM cluster (workflow/profiles/slurm)
#   snakemake --cores all adaptive                             AdaGen policies of every paradigm, evaluated
#   snakemake --cores all ablations                            the learned-static ablation

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/generators.smk"
include: "workflow/rules/adagen.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        str(PATHS.summary_csv),
        str(PATHS.summary_md),
    default_target: True


rule adaptive:
    input:
        expand(str(PATHS.metrics("{paradigm}", "{variant}")), paradigm=config["paradigms"],
               variant=["static", "tuned-static", "adaptive"]),


rule ablations:
    input:
        expand(str(PATHS.metrics("{paradigm}", "learned-static")), paradigm=config["paradigms"]),
