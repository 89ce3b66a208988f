# One-command set-up. `make demo` installs and runs the main job on the embedded digits data;
# `make test` installs and runs the test suite (what CI runs).
PY ?= python3
PIP := $(PY) -m pip
TORCH_INDEX ?=

.PHONY: install demo test bench analyze fuzz sanitize clean

install:
	# Fashion-MNIST from Debian into /usr/share/datasets/fashion-mnist, where dyninfer reads it (CI runs as root).
	# Without apt-get, or if it fails, warn and go on: the data set then needs --data-root.
	@if test -d /usr/share/datasets/fashion-mnist; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist; } \
			|| echo "warning: 'apt-get install -y dataset-fashion-mnist' failed; Fashion-MNIST is not installed"; \
	else \
		echo "warning: apt-get not found; install Fashion-MNIST with 'apt-get install dataset-fashion-mnist'" \
			"or pass a folder of its IDX files as --data-root"; \
	fi
	# CMake builds libdyninfer_rt and the C/C++ examples (their tests skip without it)
	@command -v cmake >/dev/null 2>&1 || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y cmake; } \
		|| $(PIP) install cmake || echo "warning: cmake not installed; the C and C++ example tests will be skipped"
	# torch 2.13.0 CPU build first: an unpinned torch would pull a multi-GB CUDA build. Where the
	# registry serves a CUDA build of 2.13.0, take PyTorch's CPU index:
	#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
	$(PIP) install "torch==2.13.0" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install setuptools wheel ninja pybind11
	# the ray extra too, so that the Ray Serve test runs in make test (about 2 minutes to install here)
	$(PIP) install --no-build-isolation -e ".[test,ray]"
	$(PY) -c "import dyninfer._C, torch; print('dyninfer._C loaded with torch', torch.__version__)"

demo: install
	$(PY) -m dyninfer.cli demo

test: install
	$(PY) -m pytest -x -q tests

# Regenerates every benchmark figure and plot in the README (about 5 minutes on 2 cores).
bench: install
	$(PY) benchmarks/bench_engine.py --runs 300
	$(PY) benchmarks/isa_cap.py avx2 benchmarks/bench_engine.py --runs 300 --out benchmarks/results/engine_avx2cap.json \
		|| echo "AVX2-capped engine benchmark skipped (no CPUID faulting on this machine)"
	$(PY) -m dyninfer.cli bench --checkpoint dyninfer/assets/resnet56_digits_dynamic.safetensors \
		--batch-sizes 1 8 --threads 1 2 --runs 200 --out benchmarks/results/bench_resnet56.json \
		--plots benchmarks/results --no-progress
	$(PY) benchmarks/scaling.py

# Regenerates the README's "Interpreting calculation paths" figures and report
# (benchmarks/results/analysis/; about 1 minute on the 2-core machine when quiet).
analyze: install
	$(PY) -m dyninfer.cli analyze --out-dir benchmarks/results/analysis

# libFuzzer + ASan + UBSan on the plan parser, validator and interpreter (fuzz/plan_fuzzer.cpp) and
# on the runtime's artefact loader (fuzz/artefact_fuzzer.cpp: safetensors container, versions, plan,
# one run): FUZZ_RUNS executions of each, seeded by fuzz/make_corpus.py; the corpora grow in
# build/fuzz/corpus and build/fuzz/corpus_artefacts. Findings (crash-*, leak-*, timeout-*) land in
# build/fuzz and fail the target. About 370 plan executions per second per core here.
FUZZ_RUNS ?= 500000
fuzz: install
	@command -v clang++ >/dev/null 2>&1 || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y clang; }
	bash fuzz/build.sh
	$(PY) fuzz/make_corpus.py build/fuzz/seeds
	mkdir -p build/fuzz/corpus build/fuzz/corpus_artefacts
	cd build/fuzz && ./plan_fuzzer -runs=$(FUZZ_RUNS) -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 corpus seeds
	cd build/fuzz && ./artefact_fuzzer -runs=$(FUZZ_RUNS) -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 \
		corpus_artefacts seeds/artefacts

# The extension built with ASan + UBSan (build/sanitize), running the engine, plan and deploy tests.
sanitize: install
	PY=$(PY) bash tests/sanitize.sh

clean:
	rm -rf build dyninfer/*.so *.egg-info
