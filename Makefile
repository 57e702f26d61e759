# Two commands on a fresh machine: `make demo` (the embedded default end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
PARAMS ?= params/default.yaml

.PHONY: demo test venv clean-results slurm-profile

# The virtual environment, from the tested pins (constraints.txt); rebuilt when the pins or the project change.
$(BIN)/adagen: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@# pip's bytecode here can record other source times than the installed files carry, so every import finds it
	@# stale, and with PYTHONDONTWRITEBYTECODE set Python never rewrites it: each of the pipeline's processes then
	@# compiled some 4,000 modules again (8 of an evaluate's 18 s). Compile once, here. (A few of the packages'
	@# template files are not Python 3 and fail to compile, hence the `|| true`.)
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib src > /dev/null 2>&1 || true
	touch $@

venv: $(BIN)/adagen

# The embedded default through Snakemake on all local cores, then the summary table and the wall time.
demo: venv
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --configfile $(PARAMS) --cores $(CORES) all || exit $$?; \
	set_name=$$(basename $(PARAMS) .yaml); \
	cat results/$$set_name/summary.md; \
	echo "make demo: $$(( $$(date +%s) - start )) s wall time for the pipeline (after install)"

test: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

# The SLURM profile template as the user's `slurm` profile, where `snakemake --profile slurm` looks for it.
# An existing profile (a site's own) is left alone.
SNAKEMAKE_CONFIG := $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake
slurm-profile:
	@if [ -e "$(SNAKEMAKE_CONFIG)/slurm" ]; then \
		echo "$(SNAKEMAKE_CONFIG)/slurm exists: left as it is (compare it with workflow/profiles/slurm)"; \
	else \
		mkdir -p "$(SNAKEMAKE_CONFIG)" && cp -r workflow/profiles/slurm "$(SNAKEMAKE_CONFIG)/slurm" && \
		echo "installed $(SNAKEMAKE_CONFIG)/slurm: set slurm_partition (and configfile) in its config.yaml"; \
	fi

clean-results:
	rm -rf results/ logs/ .snakemake/ data/*/
