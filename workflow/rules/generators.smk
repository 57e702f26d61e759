# Per paradigm: train the tokenizer (token paradigms), pretrain the generator, sample each variant, evaluate it.


rule train_tokenizer:
    input:
        dataset=str(PATHS.dataset),
        info=str(PATHS.dataset_info),
    output:
        model=str(PATHS.tokenizer("{paradigm}")),
        info=str(PATHS.tokenizer_info("{paradigm}")),
    wildcard_constraints:
        paradigm=one_of([name for name in TOKEN_PARADIGMS if name in PRETRAINED]),
    params:
        section=lambda wildcards: config["generators"][wildcards.paradigm]["tokenizer"],
    priority: PRIORITY["generator"]
    threads: training_threads()
    resources:
        **rule_resources("train_tokenizer"),
    log:
        f"{LOGS}/train-tokenizer-{{paradigm}}.log",
    shell:
        "adagen train-tokenizer --params {PARAMS_FILE} --paradigm {wildcards.paradigm} > {log} 2>&1"


def tokenizer_of(wildcards):
    """The tokenizer a paradigm's generator is trained on and samples with (none for DiT, SiT)."""
    return [str(PATHS.tokenizer(wildcards.paradigm))] if wildcards.paradigm in TOKEN_PARADIGMS else []


rule pretrain:
    input:
        dataset=str(PATHS.dataset),
        info=str(PATHS.dataset_info),
        tokenizer=tokenizer_of,
    output:
        model=str(PATHS.generator("{paradigm}")),
        info=str(PATHS.generator_info("{paradigm}")),
    wildcard_constraints:
        paradigm=one_of(PRETRAINED),
    params:
        network=lambda wildcards: config["generators"][wildcards.paradigm]["network"],
        objective=lambda wildcards: config["generators"][wildcards.paradigm]["objective"],
        pretrain=lambda wildcards: config["generators"][wildcards.paradigm]["pretrain"],
    priority: PRIORITY["generator"]
    threads: training_threads()
    resources:
        **rule_resources("pretrain"),
    log:
        f"{LOGS}/pretrain-{{paradigm}}.log",
    shell:
        "adagen pretrain --params {PARAMS_FILE} --paradigm {wildcards.paradigm} > {log} 2>&1"


# Full scale: official weights through the asset registry instead of the two rules above. A token paradigm's
# tokenizer comes with its generator, so its rule has the tokenizer among its outputs.
rule get_generator:
    output:
        model=str(PATHS.generator("{paradigm}")),
        info=str(PATHS.generator_info("{paradigm}")),
    wildcard_constraints:
        paradigm=one_of([name for name in DOWNLOADED if name not in TOKEN_PARADIGMS]),
    params:
        section=lambda wildcards: config["generators"][wildcards.paradigm],
    priority: PRIORITY["generator"]
    resources:
        **rule_resources("get_generator"),
    log:
        f"{LOGS}/get-generator-{{paradigm}}.log",
    shell:
        "adagen get-generator --params {PARAMS_FILE} --paradigm {wildcards.paradigm} > {log} 2>&1"


use rule get_generator as get_token_generator with:
    output:
        model=str(PATHS.generator("{paradigm}")),
        info=str(PATHS.generator_info("{paradigm}")),
        tokenizer=str(PATHS.tokenizer("{paradigm}")),
        tokenizer_info=str(PATHS.tokenizer_info("{paradigm}")),
    wildcard_constraints:
        paradigm=one_of([name for name in DOWNLOADED if name in TOKEN_PARADIGMS]),


def schedule_of(wildcards):
    """What a variant samples with beyond the generator: its trained policy or its tuned settings."""
    if wildcards.variant in (*POLICY_VARIANTS, RELEASED):
        return [str(PATHS.policy(wildcards.paradigm, wildcards.variant))]
    if wildcards.variant == "tuned-static":
        return [str(PATHS.tuned_static(wildcards.paradigm))]
    return []


rule sample:
    input:
        model=str(PATHS.generator("{paradigm}")),
        tokenizer=tokenizer_of,
        schedule=schedule_of,
        info=str(PATHS.dataset_info),
    output:
        samples=str(PATHS.samples("{paradigm}", "{variant}")),
        grid=report(str(PATHS.grid("{paradigm}", "{variant}")), caption="../report/grid.rst", category="Samples",
                    subcategory="{paradigm}", labels={"setting": "{paradigm}", "variant": "{variant}"}),
    params:
        sample=config["sample"],
        sampling=lambda wildcards: config["generators"][wildcards.paradigm]["sampling"],
    resources:
        **rule_resources("sample"),
    log:
        f"{LOGS}/sample-{{paradigm}}-{{variant}}.log",
    shell:
        "adagen sample --params {PARAMS_FILE} --paradigm {wildcards.paradigm} --variant {wildcards.variant}"
        " > {log} 2>&1"


rule evaluate:
    input:
        samples=str(PATHS.samples("{paradigm}", "{variant}")),
        dataset=str(PATHS.dataset),
        evaluator=str(PATHS.evaluator),
        refstats=str(PATHS.refstats_dir),
    output:
        str(PATHS.metrics("{paradigm}", "{variant}")),
    params:
        evaluator=config["evaluator"],
        metrics=config["metrics"],
    resources:
        **rule_resources("evaluate"),
    log:
        f"{LOGS}/evaluate-{{paradigm}}-{{variant}}.log",
    shell:
        "adagen evaluate --params {PARAMS_FILE} --paradigm {wildcards.paradigm} --variant {wildcards.variant}"
        " > {log} 2>&1"
