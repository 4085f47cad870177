#!/usr/bin/env bash
# Set up everything, then start Switchboard on its embedded models.
# Extra arguments go to `switchboard serve` (e.g. --agent echo, --config my.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/switchboard serve "$@"
