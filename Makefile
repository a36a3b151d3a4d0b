# FRS-ROS: the two commands are `make demo` (set up, then run the main job) and `make test`.
# Both set up .venv themselves (idempotent: a no-op after the first run).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup setup-lerobot demo test test-long lint bench bench-lerobot clean

setup:
	@bash scripts/setup.sh

# The LeRobot side env (.venv-lerobot) the pi0/pi05 adapter tests run in (idempotent; docs/lerobot.md).
setup-lerobot: setup
	@FRS_VENV=$(VENV) bash scripts/setup_lerobot.sh

demo: setup
	$(PY) -m frs_bringup.sim_demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# In a network namespace of its own (scripts/isolated.sh): no other ROS session on this host can
# reach the nodes the tests start, whatever ROS_DOMAIN_ID both drew.
test: setup setup-lerobot
	bash scripts/isolated.sh $(PY) -m pytest -q

# The stress runs marked `long` (docs/stress.md); not part of `make test`.
test-long: setup
	bash scripts/isolated.sh $(PY) -m pytest -q -m long

bench: setup
	$(PY) frs_steering/bench/bench_steering.py
	$(PY) frs_steering/bench/bench_ros_overhead.py --chunks 300
	$(PY) frs_bringup/bench/cpu_per_node.py

bench-lerobot: setup-lerobot
	PYTHONPATH=frs_steering:frs_control .venv-lerobot/bin/frs-python frs_steering/bench/bench_lerobot.py

clean:
	rm -rf build $(VENV) .venv-lerobot
