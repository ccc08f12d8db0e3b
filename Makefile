# rnnfast developer commands. Two quickstarts (see README.md):
#   make bench   set up a local .venv (torch CPU + tools), build, run the benchmark CLI
#   make test    set up the same way, build, run the test suite
# With an existing interpreter that already has torch (no network needed):
#   PYTHON=python3 make test
#
# Knobs: PYTHON (use this interpreter instead of .venv), MAX_JOBS (compile jobs),
# BENCH_ARGS (arguments of the benchmark CLI), PYTEST_ARGS.

VENV        := .venv
TORCH_PIN   := torch==2.13.0
DEV_DEPS    := numpy ninja setuptools wheel pytest pytest-benchmark hypothesis expecttest matplotlib rich \
               keras onnx onnxscript onnxruntime
MAX_JOBS    ?= 2
BENCH_ARGS  ?= --quick --cell all
PYTEST_ARGS ?=

ifeq ($(strip $(PYTHON)),)
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.rnnfast-setup
else
PY    := $(PYTHON)
STAMP := build/.rnnfast-setup-external
endif

.PHONY: setup build install test bench bench-pytest examples cmake-check cuda-compile-check gpu-check clean

setup: $(STAMP)

$(VENV)/.rnnfast-setup:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH_PIN) $(DEV_DEPS)
	touch $@

# An external interpreter is used as it is; only pure-Python tools it lacks are
# installed, and only if pip can reach a registry (failures are reported, not fatal).
build/.rnnfast-setup-external:
	mkdir -p build
	$(PY) -c "import torch" || (echo "rnnfast: PYTHON=$(PY) has no torch; install torch first" && exit 1)
	-$(PY) -m pip install -q $(filter-out numpy setuptools wheel,$(DEV_DEPS)) 2>/dev/null || \
	    echo "rnnfast: could not install optional dev tools with pip; using what $(PY) has"
	touch $@

build: setup
	MAX_JOBS=$(MAX_JOBS) $(PY) setup.py -q build_ext --inplace

# The standard install into the interpreter's environment (editable).
install: setup
	MAX_JOBS=$(MAX_JOBS) $(PY) -m pip install --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

bench: build
	$(PY) -m rnnfast.bench $(BENCH_ARGS)

bench-pytest: build
	$(PY) -m pytest bench/ -q --benchmark-json=bench/results/latest/pytest-benchmark.json

cmake-check: setup
	scripts/cmake_check.sh $(PY)

cuda-compile-check:
	scripts/cuda_compile_check.sh

gpu-check:
	scripts/gpu_check.sh

clean:
	rm -rf build rnnfast/_C*.so rnnfast/_build_info.py cmake-build
