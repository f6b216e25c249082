#!/usr/bin/env bash
# Creates .venv at the repository root and installs mixphm with its dev tools.
# torch==2.13.0 is installed first: it resolves to the CPU wheel on disk here;
# a bare or newer torch requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
