# AdaGen training: the tuned-static baseline, the reward's frozen backbone, then per paradigm the policy trained jointly with its
# discriminator (variant adaptive; learned-static is the same training with the state zeroed).


rule tune_static:
    input:
        model=str(PATHS.generator("{paradigm}")),
        tokenizer=tokenizer_of,
        dataset=str(PATHS.dataset),
        evaluator=str(PATHS.evaluator),
    output:
        str(PATHS.tuned_static("{paradigm}")),
    params:
        tuning=config["adagen"]["tuning"],
        sampling=lambda wildcards: config["generators"][wildcards.paradigm]["sampling"],
    resources:
        **rule_resources("tune_static"),
    log:
        f"{LOGS}/tune-static-{{paradigm}}.log",
    shell:
        "adagen tune-static --params {PARAMS_FILE} --paradigm {wildcards.paradigm} > {log} 2>&1"


rule train_reward_backbone:
    input:
        dataset=str(PATHS.dataset),
        info=str(PATHS.dataset_info),
    output:
        model=str(PATHS.reward_backbone),
        info=str(PATHS.reward_backbone_info),
    params:
        section=config["adagen"]["reward_backbone"],
    threads: training_threads()
    resources:
        **rule_resources("train_reward_backbone"),
    log:
        f"{LOGS}/train-reward-backbone.log",
    shell:
        "adagen train-reward-backbone --params {PARAMS_FILE} > {log} 2>&1"


def start_schedule_of(wildcards):
    """The tuned-static settings when the policy starts from them (adagen.start_from)."""
    if config["adagen"]["start_from"] == "tuned-static":
        return [str(PATHS.tuned_static(wildcards.paradigm))]
    return []


# The train rule submits its own job (submitit: GPUs, one task each, requeue on preemption) and waits for it,
# so on a cluster it runs on the submitting host rather than inside a SLURM job of its own.
localrules:
    train,


rule train:
    input:
        model=str(PATHS.generator("{paradigm}")),
        tokenizer=tokenizer_of,
        start=start_schedule_of,
        backbone=str(PATHS.reward_backbone),
        dataset=str(PATHS.dataset),
        evaluator=str(PATHS.evaluator),
    output:
        policy=str(PATHS.policy("{paradigm}", "{variant}")),
        info=str(PATHS.policy_info("{paradigm}", "{variant}")),
    wildcard_constraints:
        variant="|".join(POLICY_VARIANTS),
    params:
        adagen=config["adagen"],
    threads: training_threads()
    log:
        f"{LOGS}/train-{{paradigm}}-{{variant}}.log",
    shell:
        "adagen train --params {PARAMS_FILE} --paradigm {wildcards.paradigm} --variant {wildcards.variant}"
        " > {log} 2>&1"
