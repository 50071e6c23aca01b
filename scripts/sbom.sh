#!/usr/bin/env bash
# `make sbom`: the CycloneDX SBOM of requirements.lock and the pinned npm packages
# (tooling/lock/sbom.py), written to dist/sbom.cdx.json unless --output says otherwise.
source "$(dirname "$0")/lib.sh"

ensure_venv
"$PY" "$ROOT/tooling/lock/sbom.py" "$@"
