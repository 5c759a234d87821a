.PHONY: install lint test demo bench

install:
	bash scripts/install.sh

lint: install
	.venv/bin/ruff check src tests bench scripts
	.venv/bin/mypy

test: install lint
	.venv/bin/pytest -q --durations=10

demo: install
	.venv/bin/python scripts/demo.py

bench: install
	.venv/bin/python bench/file_egress.py
	.venv/bin/python bench/websocket_egress.py
