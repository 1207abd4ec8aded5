#!/usr/bin/env bash
# The main job: the headless CVBM demo on the bundled sample data (writes demo_output/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh ""
exec .venv/bin/cvbm demo --out demo_output "$@"
