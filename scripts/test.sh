#!/usr/bin/env bash
# The full test suite, in its own virtual environment, with napari on a virtual display (Xvfb).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/system_deps.sh
bash scripts/setup_env.sh "[testing]"
exec xvfb-run -a -s "-screen 0 1400x1000x24" .venv/bin/python -m pytest -q --durations=15 "$@"
