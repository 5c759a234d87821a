.PHONY: install test lint demo

install:
	bash scripts/install.sh

lint: install
	.venv/bin/ruff check src tests

test: install lint
	.venv/bin/pytest tests/unit -q

demo: install
	@echo "demo: not implemented yet (see issue 2 notes)"; exit 1
