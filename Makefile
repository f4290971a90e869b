# qt_ros developer entry points. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
BUILD_INPUTS := CMakeLists.txt package.xml $(wildcard msg/*.msg srv/*.srv scripts/*) tools/colcon_build.sh
ENV := source tools/env.sh &&

.PHONY: help env test lint pytest demo bench compare clean distclean

help:
	@echo "make demo   - learn a policy and run it through ROS 2 on the simulated robot (builds the environment first)"
	@echo "make test   - ruff + the whole test suite (builds the environment first)"
	@echo "make env    - only build .venv (ROS 2 Kilted wheels, PyTorch) and colcon-build qt_ros"
	@echo "make bench  - run the benchmarks (prints JSON)"
	@echo "make compare - Q-T vs BC vs ablations on one collected dataset (Markdown table + PNG)"

env: install/.qt_ros-built

.venv/.qt_ros-deps: requirements/lock.txt tools/make_venv.sh tools/fix_ros_wheel_cmake.py
	tools/make_venv.sh

install/.qt_ros-built: .venv/.qt_ros-deps $(BUILD_INPUTS)
	tools/colcon_build.sh

lint: env
	$(ENV) ruff check .

pytest: env
	$(ENV) tools/run_pytest.sh $(PYTEST_ARGS)

test: lint pytest

demo: env
	$(ENV) python -m qt_ros.demo $(DEMO_ARGS)

bench: env
	$(ENV) qt-ros bench act && qt-ros bench train && qt-ros bench record && qt-ros bench convert \
	  && qt-ros bench policy-node && qt-ros bench policy-node --with-recorder \
	  && qt-ros bench collect && qt-ros bench eval

# The comparison table of docs/design.md 3.9: a paper-like mix (8 % clean demonstrations, 92 %
# noisy replays), converted, then every variant trained and evaluated on the same unseen seeds
# (qt_ros/demo/mix_comparison.py, the pipeline of `make demo DEMO_ARGS=--full` too). Hours on
# 2 CPU cores at the defaults; e.g. COMPARE_ARGS="--steps 2000 --episodes 30" for a look, and
# COMPARE_ARGS=--help for its options (any qt-ros compare option passes through).
COMPARE_DIR ?= compare_runs
COMPARE_ARGS ?=
compare: env
	$(ENV) python -m qt_ros.demo.mix_comparison --out $(COMPARE_DIR) $(COMPARE_ARGS)

clean:
	rm -rf build install log .pytest_cache .ruff_cache

distclean: clean
	rm -rf "$$(readlink -f .venv)" .venv
