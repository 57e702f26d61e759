# Data, the evaluation feature network and the reference statistics (shared by every paradigm).


rule prepare_data:
    output:
        dataset=str(PATHS.dataset),
        info=str(PATHS.dataset_info),
    params:
        section=config["data"],
    resources:
        **rule_resources("prepare_data"),
    log:
        f"{LOGS}/prepare-data.log",
    shell:
        "adagen prepare-data --params {PARAMS_FILE} > {log} 2>&1"


rule train_evaluator:
    input:
        dataset=str(PATHS.dataset),
    output:
        model=str(PATHS.evaluator),
        info=str(PATHS.evaluator_info),
    params:
        section=config["evaluator"],
    priority: PRIORITY["evaluator"]
    threads: 2
    resources:
        **rule_resources("train_evaluator"),
    log:
        f"{LOGS}/train-evaluator.log",
    shell:
        "adagen train-evaluator --params {PARAMS_FILE} > {log} 2>&1"


rule refstats:
    input:
        dataset=str(PATHS.dataset),
        evaluator=str(PATHS.evaluator),
    output:
        directory(str(PATHS.refstats_dir)),
    params:
        evaluator=config["evaluator"],
        metrics=config["metrics"],
    priority: PRIORITY["shared"]
    resources:
        **rule_resources("refstats"),
    log:
        f"{LOGS}/refstats.log",
    shell:
        "adagen refstats --params {PARAMS_FILE} > {log} 2>&1"
