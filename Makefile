# One-command set-up. `make demo` installs and runs the main job on the embedded digits data;
# `make test` installs and runs the test suite (what CI runs).
PY ?= python3
PIP := $(PY) -m pip

.PHONY: install demo test bench clean

install:
	# torch 2.13.0 CPU build first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install "torch==2.13.0"
	$(PIP) install setuptools wheel ninja pybind11
	$(PIP) install --no-build-isolation -e ".[test]"
	$(PY) -c "import dyninfer._C, torch; print('dyninfer._C loaded with torch', torch.__version__)"

demo: install
	$(PY) -m dyninfer.cli demo

test: install
	$(PY) -m pytest -x -q tests

bench: install
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf build dyninfer/*.so *.egg-info
