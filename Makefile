# nightlab's user interface. Every target bootstraps .venv itself on a fresh machine.
#   make campaign PROGRAM=programs/quickstart.md ORG=roles/tiered
#   make test
#   make resume TAG=<tag> | make status [TAG=<tag>] | make log TAG=<tag>
#   make compare PROGRAM=programs/quickstart.md ORGS="roles/tiered roles/tpe" EXPERIMENTS=10 REPLICATES=3
#   make meta PROGRAM=programs/quickstart.md ROUNDS=3
#   make nightly PROGRAM=programs/quickstart.md ORG=roles/tiered UNTIL=07:00 | make report TAG=<tag>

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and on its own: a loose requirement can pull a multi-GB CUDA build.
# On a GPU box the same pin from PyPI is the CUDA build.
TORCH_SPEC ?= torch==2.13.0
PROGRAM ?= programs/quickstart.md
ORG ?= roles/tiered
PRESET ?= cpu
PYTEST_ARGS ?=
EXPERIMENTS ?=
TAG ?=
ORGS ?= roles/tiered roles/local-only roles/local-search roles/random roles/tpe roles/cmaes roles/centaur
REPLICATES ?= 3
NAME ?=
ROUNDS ?= 3
UNTIL ?= 07:00

export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv test campaign resume status compare meta nightly report log data baseline bench redteam lint graph clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24,<27"
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

data: venv
	NIGHTLAB_PRESET=$(PRESET) $(BIN)/python -m trainer.prepare --preset $(PRESET)

baseline: data
	NIGHTLAB_PRESET=$(PRESET) $(BIN)/python -m trainer.train

campaign: venv
	$(BIN)/nightlab campaign --program $(PROGRAM) --org $(ORG) $(if $(TAG),--tag $(TAG)) $(if $(EXPERIMENTS),--max-experiments $(EXPERIMENTS))

resume: venv
	$(if $(TAG),,$(error make resume needs TAG=<campaign tag>; `make status` lists them))
	$(BIN)/nightlab resume $(TAG) $(if $(EXPERIMENTS),--max-experiments $(EXPERIMENTS))

status: venv
	$(BIN)/nightlab status $(TAG)

nightly: venv
	$(BIN)/nightlab nightly --program $(PROGRAM) --org $(ORG) --until $(UNTIL) $(if $(TAG),--tag $(TAG))

report: venv
	$(if $(TAG),,$(error make report needs TAG=<campaign tag>; `make status` lists them))
	$(BIN)/nightlab report $(TAG)

meta: venv
	$(BIN)/nightlab meta --program $(PROGRAM) --org $(ORG) --rounds $(ROUNDS) $(if $(EXPERIMENTS),--experiments $(EXPERIMENTS)) $(if $(NAME),--name $(NAME))

compare: venv
	$(BIN)/nightlab compare --program $(PROGRAM) $(ORGS) --experiments $(or $(EXPERIMENTS),10) --replicates $(REPLICATES) $(if $(NAME),--name $(NAME))

log: venv
	$(if $(TAG),,$(error make log needs TAG=<campaign tag>; `make status` lists them))
	$(BIN)/nightlab log $(TAG)

bench: venv
	$(BIN)/python -m evals.bench_trainer
	$(BIN)/python -m evals.bench_models
	$(BIN)/python -m evals.bench_memory
	$(BIN)/python -m evals.bench_loop
	$(BIN)/python -m evals.bench_vet
	$(BIN)/python -m evals.bench_keep_rule
	$(BIN)/python -m evals.bench_measure
	$(BIN)/python -m evals.bench_campaign --experiments 10

redteam: venv data
	$(BIN)/python -m evals.redteam                # the vet gates: hostile and legitimate edits
	$(BIN)/python -m evals.redteam.boundary --legit all  # every attack class end to end, and the legit set

lint: venv
	$(BIN)/ruff check org memory trainer evals tests

# docs/graph.md is drawn from org/graph.py's build_graph(); tests/test_graph.py fails when it is stale.
graph: venv
	$(BIN)/python -m org.graph > docs/graph.md.tmp && mv docs/graph.md.tmp docs/graph.md

clean:
	rm -rf $(VENV) .pytest_cache
