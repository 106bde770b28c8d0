#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, lints, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then  # the browser tests drive Debian's Chromium
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
bash scripts/setup-venv.sh requirements-dev.txt
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
