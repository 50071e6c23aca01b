#!/usr/bin/env bash
# `make test`: install what is missing, start throwaway PostgreSQL + Redis (+ the TimescaleDB
# test server, Mosquitto with a throwaway CA) unless DATABASE_URL / REDIS_URL / TIMESCALE_TEST_URL /
# MQTT_URL point at existing ones
# (with your own DATABASE_URL — the application role — also set DATABASE_OWNER_URL, a role that
# may create databases, and DATABASE_SUPERUSER_URL), then run the whole suite. Extra arguments
# go to pytest.
source "$(dirname "$0")/lib.sh"

ensure_system_packages chromium nodejs mosquitto nginx prometheus systemd libsodium23  # nginx: the TLS front; promtool, systemd-analyze: deploy/; libsodium23: Ed25519 verify
ensure_venv
ensure_plotly

TMP="$(mktemp -d /tmp/perfuse-test.XXXXXX)"
chmod 755 "$TMP"
PIDS=()
cleanup() {
  set +e
  [ -n "${OWN_PG:-}" ] && stop_postgres "$TMP/pg"
  [ -n "${OWN_REDIS:-}" ] && stop_redis "$TMP/redis" "$REDIS_PORT"
  [ -n "${OWN_MQTT:-}" ] && stop_mosquitto "$TMP/mqtt"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

if [ -z "${DATABASE_URL:-}" ]; then
  PG_PORT="$(free_port)"
  PG_FSYNC=off start_postgres "$TMP/pg" "$PG_PORT"
  OWN_PG=1
  # The suite runs as the application role; pytest-django creates and migrates the test
  # database as the owner (tests/conftest.py); a few tests need the superuser itself.
  ensure_db_roles "$PG_PORT" perfuse createdb
  DATABASE_URL="$(db_url "$DB_APP_ROLE" "$PG_PORT")"
  DATABASE_OWNER_URL="$(db_url "$DB_OWNER_ROLE" "$PG_PORT")"
  DATABASE_SUPERUSER_URL="$(db_url perfuse "$PG_PORT")"
  export DATABASE_URL DATABASE_OWNER_URL DATABASE_SUPERUSER_URL
fi
own_redis "$TMP/redis" no
# A throwaway deployment CA and Mosquitto (TLS, client certificates) for the MQTT tests
# (tests/mqtt_support.py); MQTT_URL with PERFUSE_PKI_DIR and the MQTT_*_FILE paths name another.
own_mosquitto "$TMP/mqtt" "$TMP/pki"
# PERFUSE_TEST_TIMESCALE=0 skips the TimescaleDB test server (its tests then skip) for quick targeted runs.
if [ -z "${TIMESCALE_TEST_URL:-}" ] && [ "${PERFUSE_TEST_TIMESCALE:-1}" != 0 ] && [ -x "$ROOT/scripts/timescale-server.sh" ]; then
  TS_PORT="$(free_port)"
  "$ROOT/scripts/timescale-server.sh" "$TS_PORT" "$TMP/timescale" > "$TMP/timescale.log" 2>&1 &
  PIDS+=($!)
  # PGlite asks for a password (any) and always serves one database whatever the name.
  export TIMESCALE_TEST_URL="postgres://postgres:postgres@127.0.0.1:$TS_PORT/postgres"
  export TIMESCALE_TEST_LOG="$TMP/timescale.log"
fi

# The suite's databases are throwaway ones that no replica streams from (tests/config/test_replica.py
# makes its own primary and standby).
unset DATABASE_REPLICA_URL
export DJANGO_SETTINGS_MODULE=config.settings.test
cd "$ROOT"
log "running tests (PostgreSQL ${DATABASE_URL##*@}, Redis ${REDIS_URL#redis://}, MQTT ${MQTT_URL#mqtts://})"
"$PY" -m pytest "$@"
