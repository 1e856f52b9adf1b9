# Two set-up commands that work on a fresh machine (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install quickstart test test-isa test-slow lint fashion-mnist

$(PY):
	$(PYTHON) -m venv $(VENV)

# CPU torch wheel first, so that the package's torch range never pulls a CUDA build.
install: $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[test]"

quickstart: install
	HF_HUB_OFFLINE=1 $(PY) scripts/quickstart.py

# Two workers: most of the time is subprocesses importing torch, which leave a core idle.
# loadscope keeps a module on one worker, so its module fixtures are built once; modules
# go out in the order tests/conftest.py sorts them (longest first), not by test count.
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow or ci" -n 2 --dist loadscope --no-loadscope-reorder

# The numerically sensitive files once more with torch's portable kernels (no SIMD), so a
# result that hinges on the CPU's vector unit fails here as well as on the machine that has it.
ISA_FILES := tests/test_px_cache.py tests/test_px_roundoff.py tests/test_px_tie.py \
	tests/test_px_determinism.py tests/test_px_bruteforce.py tests/test_families.py \
	tests/test_px_trained.py tests/test_px_form_default.py
test-isa: install
	HF_HUB_OFFLINE=1 ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m "not slow" -n 2 --dist loadscope $(ISA_FILES)

test-slow: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check hf_px tests scripts
	$(VENV)/bin/ruff format --check hf_px tests scripts

# Fashion-MNIST for scripts/bench_quality.py --data fashion-mnist (Debian package, ~30 MB).
FMNIST_FILE := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
fashion-mnist:
	@test -f $(FMNIST_FILE) || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	  || { echo "error: cannot install dataset-fashion-mnist; run as root: apt-get update && apt-get install -y dataset-fashion-mnist" >&2; exit 1; }
	@test -f $(FMNIST_FILE) && echo "fashion-mnist: $(dir $(FMNIST_FILE))"
