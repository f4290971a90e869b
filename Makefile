# qt_ros developer entry points. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
BUILD_INPUTS := CMakeLists.txt package.xml $(wildcard msg/*.msg srv/*.srv scripts/*) tools/colcon_build.sh
ENV := source tools/env.sh &&

.PHONY: help env test lint pytest demo bench clean distclean

help:
	@echo "make demo   - closed-loop demo on the simulated robot (builds the environment first)"
	@echo "make test   - ruff + the whole test suite (builds the environment first)"
	@echo "make env    - only build .venv (ROS 2 Kilted wheels, PyTorch) and colcon-build qt_ros"
	@echo "make bench  - run the benchmarks (prints JSON)"

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
	  && qt-ros bench policy-node && qt-ros bench policy-node --with-recorder

clean:
	rm -rf build install log .pytest_cache .ruff_cache

distclean: clean
	rm -rf "$$(readlink -f .venv)" .venv
