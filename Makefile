# FRS-ROS: the two commands are `make demo` (set up, then run the main job) and `make test`.
# Both set up .venv themselves (idempotent: a no-op after the first run).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test lint bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m frs_bringup.sim_demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) frs_steering/bench/bench_steering.py
	$(PY) frs_steering/bench/bench_ros_overhead.py --chunks 300

clean:
	rm -rf build $(VENV)
