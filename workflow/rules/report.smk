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
        tradeoffs=expand(str(PATHS.tradeoff("{paradigm}")), paradigm=config["paradigms"])
        if "fidelity" in config["adagen"] else [],
        refinements=expand(str(PATHS.refinement("{paradigm}")), paradigm=config["paradigms"])
        if "refinement" in config["adagen"] else [],
        refstats=str(PATHS.refstats_dir),
        evaluator=str(PATHS.evaluator_info),
        dataset=str(PATHS.dataset_info),
    output:
        csv=report(str(PATHS.summary_csv), caption="../report/summary.rst", category="Summary"),
        md=str(PATHS.summary_md),
        schedules=[report(path, caption="../report/schedules.rst", category="Schedules",
                          labels={"setting": paradigm})
                   for paradigm, path in zip(config["paradigms"], expand(str(PATHS.schedules_plot("{paradigm}")),
                                                                         paradigm=config["paradigms"]))],
        training=[report(str(PATHS.training_plot(paradigm, variant)), caption="../report/training.rst",
                         category="Training", labels={"setting": paradigm, "variant": variant})
                  for paradigm in config["paradigms"] for variant in config["variants"] if variant in POLICY_VARIANTS],
        compute=[report(path, caption="../report/fid_nfe.rst", category="Refinement", labels={"setting": paradigm})
                 for paradigm, path in zip(config["paradigms"], expand(str(PATHS.fid_nfe_plot("{paradigm}")),
                                                                       paradigm=config["paradigms"]))]
        if "refinement" in config["adagen"] else [],
    resources:
        **rule_resources("report"),
    log:
        f"{LOGS}/report.log",
    shell:
        "adagen report --params {PARAMS_FILE} > {log} 2>&1"
