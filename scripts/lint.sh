#!/usr/bin/env bash
# `make lint`: ruff check, ruff format --check and mypy --strict, at the versions requirements.lock
# pins (ensure_venv installs the lock first, so a stale .venv cannot lint with other versions).
source "$(dirname "$0")/lib.sh"

ensure_venv
cd "$ROOT"
"$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check . && "$VENV/bin/mypy"
