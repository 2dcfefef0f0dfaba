# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# XLA:CPU (jaxlib 0.10.2) sends convolutions to YNNPACK by default; naming the YNN fusion
# types explicitly (here: none) keeps them on Eigen, which ran the demo's training steps 1.3-1.7x
# faster on the 2-core AMD EPYC. LLVM at -O1 instead of -O2 halves the compile time (90 s of
# the demo's 10 minutes) at the same step time (BENCHMARKS.md, "CPU convolutions" and "CPU
# compile time"). Empty it to compare: `make demo CPU_XLA_FLAGS=`.
CPU_XLA_FLAGS ?= --xla_cpu_experimental_ynn_fusion_type= --xla_backend_optimization_level=1
# JAX_PLATFORMS=cpu: the venv also holds libtpu (bench.py --target), which jax would otherwise try
# to start as a device at every run, printing warnings about the TPU host it cannot find.
ON_CPU := JAX_PLATFORMS=cpu XLA_FLAGS="$(CPU_XLA_FLAGS) $$XLA_FLAGS"

.PHONY: demo demo-seeds test lint clean

$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "jax[cpu]>=0.10.2" -r requirements-test.txt
	touch $(STAMP)

demo: $(STAMP)
	$(ON_CPU) $(PY) train.py --config configs/phantom_tiny.py --workdir runs/demo
	@echo "== the numbers to compare with README's demo table =="
	$(ON_CPU) $(PY) evaluate.py --workdir runs/demo --headline

# The demo recipe over seeds 0, 1, 2, each checked against its floors (README "The demo recipe").
demo-seeds: $(STAMP)
	$(ON_CPU) $(PY) benchmarks/demo_seeds.py

# ruff's rules and line length live in pyproject.toml ([tool.ruff]); `ruff format .` fixes what the
# second line reports.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -n 2 --dist loadscope --durations=15 tests

clean:
	rm -rf $(VENV) .pytest_cache .jax_cache
