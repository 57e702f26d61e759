# The summary table, sanity figures, stage times and sample grids of the params set.


rule report:
    input:
        metrics=expand(str(PATHS.metrics("{paradigm}", "{variant}")), paradigm=config["paradigms"],
                       variant=config["variants"]),
        samples=expand(str(PATHS.samples("{paradigm}", "{variant}")), paradigm=config["paradigms"],
                       variant=config["variants"]),
        grids=expand(str(PATHS.grid("{paradigm}", "{variant}")), paradigm=config["paradigms"],
                     variant=config["variants"]),
        policies=expand(str(PATHS.policy_info("{paradigm}", "{variant}")), paradigm=config["paradigms"],
                        variant=[v for v in config["variants"] if v in POLICY_VARIANTS]),
        models=expand(str(PATHS.generator_info("{paradigm}")), paradigm=config["paradigms"]),
        tokenizers=expand(str(PATHS.tokenizer_info("{paradigm}")),
                          paradigm=[p for p in config["paradigms"] if p in TOKEN_PARADIGMS]),
        refstats=str(PATHS.refstats_dir),
        evaluator=str(PATHS.evaluator_info),
        dataset=str(PATHS.dataset_info),
    output:
        csv=str(PATHS.summary_csv),
        md=str(PATHS.summary_md),
        schedules=expand(str(PATHS.schedules_plot("{paradigm}")), paradigm=config["paradigms"]),
        training=expand(str(PATHS.training_plot("{paradigm}", "{variant}")), paradigm=config["paradigms"],
                        variant=[v for v in config["variants"] if v in POLICY_VARIANTS]),
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/report.log",
    shell:
        "adagen report --params {PARAMS_FILE} > {log} 2>&1"
