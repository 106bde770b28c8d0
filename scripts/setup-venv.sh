#!/usr/bin/env bash
# Create .venv with the pinned requirements (reused while the requirement files are unchanged).
# --isolated ignores a machine-wide pip config that points at a CPU-only torch build, which
# PyPI's torchvision cannot load ("operator torchvision::nms does not exist").
set -euo pipefail
cd "$(dirname "$0")/.."
req_files=(requirements.txt "$@")
stamp=$(cat "${req_files[@]}" | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp" ]; then
  python3 -m venv .venv
  .venv/bin/pip install --isolated -q --disable-pip-version-check -r "${req_files[-1]}"
  echo "$stamp" > .venv/.stamp
fi
