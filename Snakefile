# The AdaGen pipeline. Wiring only: the rules live in workflow/rules/, the work in `adagen <stage>`.
#   snakemake --cores all all                                  embedded default (params/default.yaml)
#   snakemake --configfile params/smoke.yaml --cores all all   another params set
#   snakemake --profile slurm all                              on a SLURM cluster (workflow/profiles/slurm)
#   snakemake --cores all ablations                            learned-static and fixed-reward policies, evaluated

report: "workflow/report/workflow.rst"  # `snakemake --report report.html`: summary, schedules, training, grids


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/generators.smk"
include: "workflow/rules/adagen.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/hooks.smk"


rule all:
    input:
        str(PATHS.summary_csv),
        str(PATHS.summary_md),
    default_target: True


rule ablations:
    input:
        expand(str(PATHS.metrics("{paradigm}", "{variant}")), paradigm=config["paradigms"],
               variant=["learned-static", "fixed-reward"]),
