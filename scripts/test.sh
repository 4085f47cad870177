#!/usr/bin/env bash
# Set up everything, then run the lint and the whole test suite (real SIPp, real PJSIP,
# real model inference). Extra arguments go to pytest (e.g. -k rtp, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
