# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "jax[cpu]>=0.10.2" -r requirements-test.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train.py --config configs/phantom_tiny.py --workdir runs/demo
	@echo "== the numbers to compare with README's demo table =="
	$(PY) evaluate.py --workdir runs/demo --headline

test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -n 2 --dist loadscope --durations=15 tests

clean:
	rm -rf $(VENV) .pytest_cache .jax_cache
