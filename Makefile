# Two entry points for a fresh machine (see README):
#   make quickstart   create .venv if missing, build the phantom dataset, run the main job
#   make test         create .venv if missing, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_DATA ?= ../shared/data

.PHONY: venv quickstart test bench clean-data

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

quickstart: venv
	$(PY) examples/quickstart.py --out exps/quickstart --data data/PHANTOM

test: venv
	SSL_SHARED_DATA=$(SHARED_DATA) $(PY) -m pytest -q tests

bench: venv
	$(PY) benchmarks/bench_superpixels.py
	$(PY) benchmarks/bench_supervoxels.py
	$(PY) -m benchmarks.bench_model
	$(PY) benchmarks/bench_episodes.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_conv3x3.py
	$(PY) -m benchmarks.bench_precision
	$(PY) benchmarks/bench_validation.py
	$(PY) benchmarks/bench_layout.py

clean-data:
	rm -rf data/PHANTOM
