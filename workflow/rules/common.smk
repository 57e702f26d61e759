# Params set, validation and paths shared by every rule.
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from adagen.config import Paths, validate_params
from adagen.generators import paradigm_of
from adagen.stages import POLICY_VARIANTS, RELEASED, VARIANTS, training_section

min_version("9.0")

# One params file per run: the one given with --configfile, else the embedded default. Loading the default
# only when none is given keeps keys of default.yaml from leaking into another set by config merging.
if workflow.overwrite_configfiles:
    PARAMS_FILE = str(workflow.overwrite_configfiles[-1])
else:
    PARAMS_FILE = "params/default.yaml"

    configfile: PARAMS_FILE


PARAMS_FILE = os.path.relpath(PARAMS_FILE) if Path(PARAMS_FILE).is_absolute() else PARAMS_FILE
validate(config, "../schemas/params.schema.yaml")
validate_params(config, PARAMS_FILE)  # the cross-key rules the CLI applies too
PATHS = Paths.for_params_file(PARAMS_FILE)
LOGS = f"logs/{PATHS.set_name}"
# Settings (`var`, `var-d16`, ...) by what they need: a VQ tokenizer (token paradigms), and whether their generator
# is trained here (source pretrain, the embedded default) or downloaded (source download, full scale).
TOKEN_PARADIGMS = [name for name in config["paradigms"] if paradigm_of(name).uses_tokenizer]
DOWNLOADED = [name for name in config["paradigms"] if config["generators"][name].get("source") == "download"]
PRETRAINED = [name for name in config["paradigms"] if name not in DOWNLOADED]


def one_of(names):
    """A wildcard constraint matching exactly these names (one that matches nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def training_threads():
    """Half the cores: two training jobs run side by side. The tiny networks scale poorly over threads
    (one 2-thread job is 1.5-1.7x a 1-thread job on 2 cores), so two 1-thread jobs get more done."""
    try:
        return max(1, workflow.cores // 2)
    except WorkflowError:  # no --cores (a cluster profile sets threads per rule)
        return 1


# Which ready job runs first on a few cores: the inputs every setting shares, then each setting's long chain
# (pretrain -> tune-static -> train -> fidelity -> tradeoff, refine), while the short sample and evaluate jobs
# (priority 0) fill the free core. Left to itself Snakemake started MaskGIT's policy training 10 minutes after it
# could, and the demo's last 6 minutes ran that chain on one core. The scheduler maximises the sum of the
# priorities of the jobs it starts together, so the evaluator, which takes both cores, outweighs any two others:
# else it waits for a moment when both are free, and every tune-static waits with it.
PRIORITY = {"evaluator": 100, "shared": 40, "generator": 30, "policy": 20, "measure": 10}


wildcard_constraints:
    paradigm=one_of(config["paradigms"]),
    variant="|".join(VARIANTS),


def rule_resources(rule_name):
    """The SLURM resources of a rule from the params set (`resources`): the defaults, then the rule's own."""
    section = config.get("resources", {})
    return {**section.get("default", {}), **section.get(rule_name, {})}
