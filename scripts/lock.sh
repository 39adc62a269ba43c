#!/usr/bin/env bash
# Re-lock the dependencies: install the newest versions pyproject.toml allows into a fresh
# .venv, run the whole suite, and only if it passes write what was installed to
# scripts/constraints.txt, which every later set-up installs exactly. `make lock` runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv
CISPO_UNLOCKED=1 bash scripts/setup.sh
.venv/bin/python -m pytest
{
  echo "# Written by scripts/lock.sh from the venv the whole suite passed with; do not edit by hand."
  .venv/bin/python -m pip freeze --exclude-editable
} > scripts/constraints.txt
echo "lock: scripts/constraints.txt written ($(grep -vc '^#' scripts/constraints.txt) packages)"
