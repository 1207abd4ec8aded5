#!/usr/bin/env bash
# The full test suite, in its own virtual environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh "[testing]"
exec .venv/bin/python -m pytest -q --durations=15 "$@"
