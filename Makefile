# The two commands: `make train` (the built-in default job) and `make test` (the suite).
# Both run the set-up first; it is quick when nothing changed.
.PHONY: setup train test lock

ARGS ?=
PYTEST_ARGS ?=

setup:
	@bash scripts/setup.sh

train: setup
	.venv/bin/cispo-train $(ARGS)

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# Upgrade the dependencies: the newest versions pyproject.toml allows, kept only if the suite passes.
lock:
	@bash scripts/lock.sh
