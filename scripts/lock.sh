#!/usr/bin/env bash
# `make lock`: write requirements.lock from pyproject.toml (runtime + dev extras) and
# tooling/lock/installer.in (pip and the build backend), every file's sha256 included, for the
# Python 3.11 on Linux that the project runs on. Versions already in the lock are kept unless
# pyproject.toml no longer allows them; move one on with `make lock LOCK_ARGS="--upgrade-package NAME"`
# (or all: LOCK_ARGS=--upgrade). ensure_venv installs the result with hash checking.
# --no-strip-markers: a dependency needed on some 3.11 releases only (async-timeout below 3.11.3,
# Debian 12's 3.11.2) keeps its marker, so pip skips it where it does not apply.
source "$(dirname "$0")/lib.sh"

ensure_venv
cd "$ROOT"
"$VENV/bin/uv" pip compile pyproject.toml tooling/lock/installer.in --extra dev \
  --generate-hashes --no-strip-markers --python-version 3.11 --python-platform linux \
  --custom-compile-command "make lock" --quiet --output-file requirements.lock "$@"
log "requirements.lock written; commit it with pyproject.toml"
