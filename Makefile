.PHONY: install install-test lint lint-native test demo bench

# The Rust toolchain (rustup) that builds and lints native/.
export PATH := $(HOME)/.cargo/bin:$(PATH)

install:  ## what the demo runs: ffmpeg, .venv, livekit-server
	bash scripts/install.sh

install-test:  ## install + the servers and clients only the tests use
	bash scripts/install-test.sh

lint: install lint-native
	.venv/bin/ruff check src tests bench scripts
	.venv/bin/mypy

lint-native: install  ## rustfmt + clippy + the Rust unit tests of the native media core (target directory shared with its build)
	cargo fmt --manifest-path native/Cargo.toml --check
	PYO3_PYTHON=$(CURDIR)/.venv/bin/python CARGO_TARGET_DIR=$(HOME)/.cache/trackegress/native-target \
		nice -n 10 cargo clippy --manifest-path native/Cargo.toml --locked --release --quiet -- -D warnings
	PYO3_PYTHON=$(CURDIR)/.venv/bin/python CARGO_TARGET_DIR=$(HOME)/.cache/trackegress/native-target \
		nice -n 10 cargo test --manifest-path native/Cargo.toml --locked --release --quiet --lib

# Parallel workers (pytest-xdist, one test file per worker: its module fixtures start once), then the tests that
# assert wall-clock timing in two lanes side by side: the CPU-heavy ones (a browser, spinning processes) one after
# another, and the light ones with deadlines (xdist_group "cpu" / "clock").
# `make test PYTEST_WORKERS=0` runs the first part in one process.
PYTEST_WORKERS ?= 6

test: install-test lint
	.venv/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not timing" --durations=10
	.venv/bin/pytest -q -n 2 --dist loadgroup -m timing --durations=5

demo: install
	.venv/bin/python scripts/demo.py

bench: install
	.venv/bin/python bench/file_egress.py
	.venv/bin/python bench/websocket_egress.py
