#!/usr/bin/env bash
# The main job: napari with the CVBM widgets and the sample data when there is a display;
# without one, the same workflow headless (`cvbm demo`: trains, prints Dice, writes demo_output/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] || [ "$(uname)" = "Darwin" ]; then
    bash scripts/setup_env.sh "[all]"
    exec .venv/bin/cvbm gui
fi
echo "no display: running the headless CVBM demo (cvbm demo)"
bash scripts/setup_env.sh ""
exec .venv/bin/cvbm demo --out demo_output "$@"
