#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, lints, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's Chromium drives the browser tests; opencv-doc ships the real footage and photos the tests use.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -f /usr/share/doc/opencv-doc/examples/data/Megamind_bugy.avi ] || missing+=(opencv-doc)
# espeak-ng speaks, and DejaVu and Liberation fonts draw, the words the OCR and speech tests know in advance
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
[ -f /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf ] || missing+=(fonts-liberation)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
bash scripts/setup-venv.sh requirements-dev.txt
.venv/bin/ruff check .
# Test files run in parallel worker processes (pytest-xdist; a file's tests stay together, so its fixtures are built
# once); most tests wait on real processes (offline.py, server.py, Chromium), so two workers help even on 2 cores.
.venv/bin/python -m pytest -q -p no:cacheprovider -n auto --maxprocesses 4 --dist loadfile "$@"
