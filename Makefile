# Two entry points for a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench gpu-check gpu-wheels

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/megagpt demo --nproc 8

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra --durations=30 tests

bench: $(STAMP)
	$(PY) benchmarks/pretrain_throughput.py

# On a GPU machine: every GPU path (tests/gpu) and the GPU benchmarks, one table (skipped without CUDA).
# Uses .venv when there is one, else the image's python3 with the wheels in .whl/ (make gpu-wheels),
# else python3 as it is.
gpu-check:
	$(if $(wildcard $(PY)),$(PY) benchmarks/gpu_check.py,$(if $(wildcard .whl/*.whl),bash benchmarks/gpu_offline.sh check,python3 benchmarks/gpu_check.py))

# Where a package index is reachable: wheels of what a CUDA PyTorch image lacks, for GPU_PYTHON (default 3.12);
# GPU_WHEELS=--corpus adds the corpus packages the demo's GPU test needs.
GPU_PYTHON ?= 3.12
GPU_WHEELS ?=
gpu-wheels:
	bash benchmarks/gpu_offline.sh wheels $(GPU_PYTHON) $(GPU_WHEELS)
