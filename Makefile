.PHONY: install install-test lint test demo bench

install:  ## what the demo runs: ffmpeg, .venv, livekit-server
	bash scripts/install.sh

install-test:  ## install + the servers and clients only the tests use
	bash scripts/install-test.sh

lint: install
	.venv/bin/ruff check src tests bench scripts
	.venv/bin/mypy

test: install-test lint
	.venv/bin/pytest -q --durations=10

demo: install
	.venv/bin/python scripts/demo.py

bench: install
	.venv/bin/python bench/file_egress.py
	.venv/bin/python bench/websocket_egress.py
