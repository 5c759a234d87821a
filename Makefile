.PHONY: install install-test lint checks test test-parallel timing-cpu timing-clock test-py313 py313-tests dist demo bench

# The Rust toolchain (rustup) that builds and lints native/.
export PATH := $(HOME)/.cargo/bin:$(PATH)

install:  ## what the demo runs: ffmpeg, .venv, livekit-server
	bash scripts/install.sh

install-test:  ## install + the servers and clients only the tests use
	bash scripts/install-test.sh

lint: install  ## ruff, mypy --strict, rustfmt, clippy and the Rust unit tests of the native media core
	$(MAKE) --no-print-directory checks

checks:  ## what lint runs, without the install step (the native core's target directory is shared with its build)
	.venv/bin/ruff check src tests bench scripts
	.venv/bin/mypy
	cargo fmt --manifest-path native/Cargo.toml --check
	PYO3_PYTHON=$(CURDIR)/.venv/bin/python CARGO_TARGET_DIR=$(HOME)/.cache/trackegress/native-target \
		nice -n 10 cargo clippy --manifest-path native/Cargo.toml --locked --release --quiet -- -D warnings
	PYO3_PYTHON=$(CURDIR)/.venv/bin/python CARGO_TARGET_DIR=$(HOME)/.cache/trackegress/native-target \
		nice -n 10 cargo test --manifest-path native/Cargo.toml --locked --release --quiet --lib

# The parallel tests: pytest-xdist workers, one test file per worker (its module fixtures start once). Then the tests that
# assert wall-clock timing, in two lanes side by side: the end-to-end ones (a browser, spinning processes, ICE
# restarts, the multi-host tests) one after another, and the WebSocket sink's in-process deadlines (xdist_group "cpu" /
# "clock", each lane a pytest process: timing-cpu, timing-clock).
# Before them, side by side, the lint checks and the Python 3.13 run (py313-tests): beside the parallel run they
# starved its end-to-end tests (a WebSocket tone test got 1.56 s of 3 s, a proxied upload lost frames).
# `make test PYTEST_WORKERS=0` runs the parallel part in one process.
PYTEST_WORKERS ?= 5

test: install-test dist
	$(MAKE) --no-print-directory -j2 --output-sync=target checks py313-tests
	$(MAKE) --no-print-directory test-parallel
	$(MAKE) --no-print-directory -j2 --output-sync=target timing-cpu timing-clock

test-parallel:
	.venv/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not timing" --durations=10

# Each lane a pytest process of its own, its tests one at a time, its servers on the ports of one xdist worker's block.
timing-cpu timing-clock:
	PYTEST_XDIST_WORKER=gw$(if $(filter timing-cpu,$@),0,1) .venv/bin/pytest -q -p no:cacheprovider -m timing \
		--lane $(subst timing-,,$@) --durations=5

# Python 3.13, in a Debian trixie root (scripts/py313.sh: laid once by debootstrap, cached in ~/.cache/trackegress):
# the unit suite and a file and a WebSocket e2e, on dist/'s wheels.
PY313_E2E = "tests/e2e/test_file_egress.py::test_published_frames_are_recorded_byte_for_byte[h264]" \
	tests/e2e/test_websocket_egress.py::test_tone_arrives_as_48k_stereo_pcm

test-py313: dist
	$(MAKE) --no-print-directory py313-tests

# What make test runs beside the lint and the parallel run (dist/ made before): its servers take ports from a block
# of their own (tests/support/server.py free_port: the block of worker 19, which no run here has).
py313-tests:
	bash scripts/py313.sh dist/*.whl -- env PYTEST_XDIST_WORKER=gw19 \
		python -m pytest -q -p no:cacheprovider -m "not timing" tests/unit $(PY313_E2E)

dist: install  ## dist/: the project's wheel and the native core's manylinux abi3 wheel (no toolchain to install)
	bash scripts/dist.sh

demo: install
	.venv/bin/python scripts/demo.py

bench: install
	.venv/bin/python bench/file_egress.py
	.venv/bin/python bench/websocket_egress.py
