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
    priority: PRIORITY["policy"]
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
    priority: PRIORITY["shared"]
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


def fidelity_inputs_of(wildcards):
    """The fidelity policy fine-tunes the adaptive one, its reward adding the score of its own frozen classifier."""
    if wildcards.variant != "fidelity":
        return []
    return [str(PATHS.fidelity_classifier), str(PATHS.policy(wildcards.paradigm, "adaptive"))]


# The train rule submits its own job (submitit: GPUs, one task each, requeue on preemption) and waits for it,
# so on a cluster it runs on the submitting host rather than inside a SLURM job of its own.
localrules:
    train,


rule train:
    input:
        model=str(PATHS.generator("{paradigm}")),
        tokenizer=tokenizer_of,
        start=start_schedule_of,
        fidelity=fidelity_inputs_of,
        backbone=str(PATHS.reward_backbone),
        dataset=str(PATHS.dataset),
        evaluator=str(PATHS.evaluator),
    output:
        policy=str(PATHS.policy("{paradigm}", "{variant}")),
        info=str(PATHS.policy_info("{paradigm}", "{variant}")),
    wildcard_constraints:
        variant="|".join(POLICY_VARIANTS),
    params:
        adagen=lambda wildcards: training_section(config["adagen"], wildcards.variant),
    priority: PRIORITY["policy"]
    threads: training_threads()
    log:
        f"{LOGS}/train-{{paradigm}}-{{variant}}.log",
    shell:
        "adagen train --params {PARAMS_FILE} --paradigm {wildcards.paradigm} --variant {wildcards.variant}"
        " > {log} 2>&1"


# The AdaGen release's policy of a setting (variant released), to re-measure its published FIDs here.
rule get_policy:
    input:
        model=str(PATHS.generator("{paradigm}")),
        tokenizer=tokenizer_of,
    output:
        policy=str(PATHS.policy("{paradigm}", RELEASED)),
        info=str(PATHS.policy_info("{paradigm}", RELEASED)),
    params:
        asset=lambda wildcards: config["generators"][wildcards.paradigm].get("released_policy"),
        policy=config["adagen"]["policy"],
    resources:
        **rule_resources("get_policy"),
    log:
        f"{LOGS}/get-policy-{{paradigm}}.log",
    shell:
        "adagen get-policy --params {PARAMS_FILE} --paradigm {wildcards.paradigm} > {log} 2>&1"


# The fidelity-diversity knob (adagen.fidelity): a classifier of its own for the fidelity score, then per setting
# the adaptive policy blended with the fidelity policy at each lambda, sampled and evaluated.
rule train_fidelity_classifier:
    input:
        dataset=str(PATHS.dataset),
    output:
        model=str(PATHS.fidelity_classifier),
        info=str(PATHS.fidelity_classifier_info),
    params:
        section=config["adagen"].get("fidelity", {}).get("classifier"),  # not the weight, score or lambdas
    priority: PRIORITY["shared"]
    threads: training_threads()
    resources:
        **rule_resources("train_fidelity_classifier"),
    log:
        f"{LOGS}/train-fidelity-classifier.log",
    shell:
        "adagen train-fidelity-classifier --params {PARAMS_FILE} > {log} 2>&1"


rule tradeoff:
    input:
        model=str(PATHS.generator("{paradigm}")),
        tokenizer=tokenizer_of,
        adaptive=str(PATHS.policy("{paradigm}", "adaptive")),
        fidelity=str(PATHS.policy("{paradigm}", "fidelity")),
        plain=str(PATHS.metrics("{paradigm}", "adaptive")),
        dataset=str(PATHS.dataset),
        evaluator=str(PATHS.evaluator),
        refstats=str(PATHS.refstats_dir),
    output:
        metrics=str(PATHS.tradeoff("{paradigm}")),
        plot=report(str(PATHS.tradeoff_plot("{paradigm}")), caption="../report/tradeoff.rst",
                    category="Fidelity-diversity", labels={"setting": "{paradigm}"}),
    params:
        section=config["adagen"].get("fidelity"),
        sample=config["sample"],
    priority: PRIORITY["measure"]
    resources:
        **rule_resources("tradeoff"),
    log:
        f"{LOGS}/tradeoff-{{paradigm}}.log",
    shell:
        "adagen tradeoff --params {PARAMS_FILE} --paradigm {wildcards.paradigm} > {log} 2>&1"


# Inference-time refinement (adagen.refinement): best-of-N and lookahead of the adaptive policy on the first seed.
rule refine:
    input:
        model=str(PATHS.generator("{paradigm}")),
        tokenizer=tokenizer_of,
        adaptive=str(PATHS.policy("{paradigm}", "adaptive")),
        plain=str(PATHS.metrics("{paradigm}", "adaptive")),
        plain_samples=str(PATHS.samples("{paradigm}", "adaptive")),
        backbone=str(PATHS.reward_backbone),
        dataset=str(PATHS.dataset),
        evaluator=str(PATHS.evaluator),
        refstats=str(PATHS.refstats_dir),
    output:
        metrics=str(PATHS.refinement("{paradigm}")),
        grid=report(str(PATHS.refinement_grid("{paradigm}")), caption="../report/refined.rst", category="Samples",
                    labels={"setting": "{paradigm}", "variant": "adaptive, refined"}),
    params:
        section=config["adagen"].get("refinement"),
        sample=config["sample"],
    priority: PRIORITY["measure"]
    resources:
        **rule_resources("refine"),
    log:
        f"{LOGS}/refine-{{paradigm}}.log",
    shell:
        "adagen refine --params {PARAMS_FILE} --paradigm {wildcards.paradigm} > {log} 2>&1"
