# Per paradigm: pretrain the generator, sample each variant, evaluate it.


rule pretrain:
    input:
        dataset=str(PATHS.dataset),
        info=str(PATHS.dataset_info),
    output:
        model=str(PATHS.generator("{paradigm}")),
        info=str(PATHS.generator_info("{paradigm}")),
    params:
        network=lambda wildcards: config["generators"][wildcards.paradigm]["network"],
        objective=lambda wildcards: config["generators"][wildcards.paradigm]["objective"],
        pretrain=lambda wildcards: config["generators"][wildcards.paradigm]["pretrain"],
    threads: 2
    log:
        f"{LOGS}/pretrain-{{paradigm}}.log",
    shell:
        "adagen pretrain --params {PARAMS_FILE} --paradigm {wildcards.paradigm} > {log} 2>&1"


rule sample:
    input:
        model=str(PATHS.generator("{paradigm}")),
        info=str(PATHS.dataset_info),
    output:
        samples=str(PATHS.samples("{paradigm}", "{variant}")),
        grid=str(PATHS.grid("{paradigm}", "{variant}")),
    params:
        sample=config["sample"],
        sampling=lambda wildcards: config["generators"][wildcards.paradigm]["sampling"],
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
    log:
        f"{LOGS}/evaluate-{{paradigm}}-{{variant}}.log",
    shell:
        "adagen evaluate --params {PARAMS_FILE} --paradigm {wildcards.paradigm} --variant {wildcards.variant}"
        " > {log} 2>&1"
