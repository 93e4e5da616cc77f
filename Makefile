PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?=
ARGS ?=

.PHONY: setup serve test lint clean gpu-wheels gpu-check sm90-check
PART ?= 1
TRITON ?= 3.6.0

$(BIN)/qasr: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU wheel on disk here; a looser pin pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# espeak-ng speaks the demo model's training corpus (and one test)
	command -v espeak-ng >/dev/null || (apt-get update -qq && apt-get install -y -qq espeak-ng)
	# a throwaway PostgreSQL server for the task store's tests; Debian keeps initdb off PATH
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq postgresql)
	# the deployment files' validators and the fault test's load balancer: nginx (nginx -t, the fault test) and
	# promtool (the alert rules); hadolint and kubernetes-validate come with the test extra
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update -qq && apt-get install -y -qq nginx-light)
	command -v promtool >/dev/null || (apt-get update -qq && apt-get install -y -qq prometheus)
	touch $@

setup: $(BIN)/qasr

serve: setup
	$(BIN)/qasr serve $(if $(MODEL),--model $(MODEL)) --host 127.0.0.1 --port 8000 $(ARGS)

# ruff first: it also holds the rule that the source folders are imported as qasr.*, never bare
test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q $(ARGS)

# the wheels the GPU image lacks (transformers with Qwen3-ASR, pytest), into .whl/: run here, with network
gpu-wheels: setup
	$(BIN)/python benchmarks/gpu_check.py wheels

# on the GPU machine (no network, no venv: its own python3), after bringing .whl/ along; PART=1, then PART=2
gpu-check:
	python3 benchmarks/gpu_check.py $(PART)

# every kernel configuration compiled for sm_90 (no GPU needed) by another Triton than the venv's, by default the GPU
# image's: register counts and spills differ between releases (the FP8 decode kernel: 194 registers with 3.6, 168
# with 3.9)
sm90-check: setup
	$(BIN)/pip install -q --no-deps --target .triton-$(TRITON) triton==$(TRITON)
	PYTHONPATH=.triton-$(TRITON) $(BIN)/pytest -q -p no:cacheprovider tests/kernels/test_compile.py
	# and each configuration's registers, stack and shared memory (the test above passes or names a failure)
	PYTHONPATH=.triton-$(TRITON) $(BIN)/python tests/kernels/sm90_compile.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
