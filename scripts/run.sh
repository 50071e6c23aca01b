#!/usr/bin/env bash
# `make run`: the demo. Starts (or reuses) project-owned PostgreSQL and Redis under .data/,
# migrates, seeds a demo ward, then runs Daphne, the engine and the simulated fleet until Ctrl-C.
source "$(dirname "$0")/lib.sh"

ensure_system_packages
ensure_venv
ensure_plotly

DATA="$ROOT/.data"
mkdir -p "$DATA"
[ "$(id -u)" = 0 ] && chmod 755 "$DATA"
PORT="${PORT:-8000}"
PIDS=()
cleanup() {
  set +e
  log "stopping"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  [ -n "${OWN_REDIS:-}" ] && stop_redis "$DATA/redis" "$REDIS_PORT"
  [ -n "${OWN_PG:-}" ] && stop_postgres "$DATA/pg"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${DATABASE_URL:-}" ]; then
  PG_PORT="${PERFUSE_PG_PORT:-54329}"
  start_postgres "$DATA/pg" "$PG_PORT"
  OWN_PG=1
  export DATABASE_URL="postgres://perfuse@127.0.0.1:$PG_PORT/perfuse"
fi
if [ -z "${REDIS_URL:-}" ]; then
  REDIS_PORT="${PERFUSE_REDIS_PORT:-63799}"
  start_redis "$DATA/redis" "$REDIS_PORT" yes
  OWN_REDIS=1
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
fi

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-config.settings.dev}"
cd "$ROOT"
"$PY" manage.py migrate --noinput >/dev/null
"$PY" manage.py seed_demo

"$VENV/bin/daphne" -b 127.0.0.1 -p "$PORT" config.asgi:application &
PIDS+=($!)
"$PY" manage.py run_engine &
PIDS+=($!)
sleep 2
"$PY" manage.py simulate_fleet --demo --url "http://127.0.0.1:$PORT" --hz "${PERFUSE_DEMO_HZ:-1}" --quiet &
PIDS+=($!)

log "Perfuse is running at http://127.0.0.1:$PORT/ — log in with a user above and its TOTP code. Ctrl-C stops everything."
wait -n "${PIDS[@]}" || true
