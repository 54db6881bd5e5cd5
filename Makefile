# The two commands a newcomer needs: `make demo` and `make test`. Both run the set-up first.
#
# Set-up: a .venv made with python3 (3.11 on our machines), uv inside it, flo-backpack installed
# editable with its test extras, the fixture packages, and the editable local fixture packages.
# It is redone only when pyproject.toml or the fixture requirements change (the stamp file).
# Everything is compiled to bytecode, as pip does by default (uv only when asked): machines
# that set PYTHONDONTWRITEBYTECODE would otherwise compile every module at every start.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flo-setup-stamp
DEMO_CASE := import_names
DEMO_OUT := $(DEMO_CASE)-backpack

.PHONY: setup demo lint test clean

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# flohost, floextra, floplug: a library and its optional imports (flo-audit --minimize).
LOCAL_PACKAGES := floedit flohost floextra floplug

$(STAMP): pyproject.toml fixtures/requirements.txt $(LOCAL_PACKAGES:%=fixtures/packages/%/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -e '.[test]' -r fixtures/requirements.txt
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode $(LOCAL_PACKAGES:%=-e fixtures/packages/%)
	$(BIN)/python -m compileall -q auditor kernels provisioner
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flo-audit fixtures/notebooks/$(DEMO_CASE)/$(DEMO_CASE).ipynb -o $(DEMO_OUT) --force
	@echo
	@echo "The backpack is in $(CURDIR)/$(DEMO_OUT)/ (start with software/environment.yml)."

# The SLURM and SGE engine tests need a running SLURM and Grid Engine: .ci/slurm-setup.sh and
# .ci/sge-setup.sh bring them up (root; no-ops when up). `make test SLURM=skip` (or SGE=skip)
# skips those tests where you cannot be root. SLURM is required; Grid Engine, the second batch
# system, is skipped with a message when Debian's gridengine cannot be brought up here.
SLURM ?= up
SGE ?= up

# ruff (style, imports, complexity <= 15) on the whole tree, and mypy on auditor/ and
# provisioner/ ([tool.mypy] in pyproject.toml). `make test` runs it first and stops if it fails.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	@if [ "$(SLURM)" != skip ]; then bash .ci/slurm-setup.sh; fi
	@sge=$(SGE); if [ "$$sge" != skip ] && ! bash .ci/sge-setup.sh; then \
	    echo "make test: Grid Engine could not be brought up (see above): its tests are skipped, as with SGE=skip" >&2; \
	    sge=skip; fi; \
	echo "FLO_SLURM=$(SLURM) FLO_SGE=$$sge $(BIN)/python -m pytest"; \
	FLO_SLURM=$(SLURM) FLO_SGE=$$sge $(BIN)/python -m pytest

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
