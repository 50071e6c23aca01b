#!/usr/bin/env bash
# `make run`: the demo. Starts (or reuses) project-owned PostgreSQL, Redis and Mosquitto under .data/,
# migrates (as the owner role), seeds a demo ward with its on-call roster, then runs a local SMTP
# sink (mail lands in .data/mail.log), Daphne, the engine, the notifier, the HL7 listener, the audit
# checkpoint job, the archive job, the MQTT bridge and the simulated fleet over MQTT (as the
# application role) until Ctrl-C.
source "$(dirname "$0")/lib.sh"

ensure_system_packages mosquitto nodejs libsodium23  # libsodium23: the ingest's Ed25519 verify (telemetry/ingest/ed25519.py)
ensure_venv
ensure_plotly

DATA="$ROOT/.data"
mkdir -p "$DATA"
[ "$(id -u)" = 0 ] && chmod 755 "$DATA"
PORT="${PORT:-8000}"
PIDS=()
# stop_pid PID SECONDS: SIGTERM, then SIGKILL if it has not exited in time.
stop_pid() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 $(( $2 * 10 ))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  trap '' INT TERM  # a second Ctrl-C must not cut the shutdown short and leave servers running
  set +e
  log "stopping"
  # Newest first: the simulator flushes through Daphne, the engine finishes its batch.
  local i
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do stop_pid "${PIDS[i]}" 15; done
  [ -n "${NGINX_TEMP:-}" ] && rm -rf "$NGINX_TEMP"
  [ -n "${OWN_MQTT:-}" ] && stop_mosquitto "$DATA/mqtt"
  [ -n "${OWN_REDIS:-}" ] && stop_redis "$DATA/redis" "$REDIS_PORT"
  [ -n "${OWN_REPLICA:-}" ] && stop_postgres "$DATA/pg-replica"
  [ -n "${OWN_PG:-}" ] && stop_postgres "$DATA/pg"
  log "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-config.settings.dev}"
if [ -z "${DATABASE_URL:-}" ]; then
  PG_PORT="${PERFUSE_PG_PORT:-54329}"
  start_postgres "$DATA/pg" "$PG_PORT"
  OWN_PG=1
  # The application connects as perfuse_app; only `migrate` runs as the owner (docs/security.md).
  ensure_db_roles "$PG_PORT" perfuse
  harden_db "$PG_PORT" perfuse
  DATABASE_OWNER_URL="$(db_url "$DB_OWNER_ROLE" "$PG_PORT")"
  DATABASE_URL="$(db_url "$DB_APP_ROLE" "$PG_PORT")"
  export DATABASE_URL
fi
own_redis "$DATA/redis" yes "${PERFUSE_REDIS_PORT:-63799}"

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-config.settings.dev}"
# PERFUSE_TLS=1 (`make run-tls`): behind nginx with several Daphnes (scripts/tls_front.sh, docs/proxy.md).
[ "${PERFUSE_TLS:-0}" = 1 ] && source "$ROOT/scripts/tls_front.sh" && export PERFUSE_BASE_URL="${PERFUSE_BASE_URL:-https://localhost:$TLS_PORT}"
export PERFUSE_BASE_URL="${PERFUSE_BASE_URL:-http://127.0.0.1:$PORT}"  # links in alarm messages
cd "$ROOT"
# With your own DATABASE_URL, set DATABASE_OWNER_URL to migrate as another role than the app's.
DATABASE_URL="${DATABASE_OWNER_URL:-$DATABASE_URL}" "$PY" manage.py migrate --noinput >/dev/null
[ -n "${OWN_PG:-}" ] && harden_db "$PG_PORT" perfuse
# Mosquitto on 127.0.0.1:18883 (TLS only, client certificates from the deployment CA in .data/pki,
# created once, before the demo devices are provisioned; docs/mqtt.md). The CRL is rebuilt from
# the database at every start.
own_mosquitto "$DATA/mqtt" "$DATA/pki" "${PERFUSE_MQTT_PORT:-18883}" refresh-crl
log "MQTT broker: $MQTT_URL (CA ${MQTT_CA_FILE:-unset})"
"$PY" manage.py seed_demo
"$PY" manage.py seed_demo_roster

# Alarm email goes to a local SMTP sink (aiosmtpd, a dev dependency) that prints every message it
# accepts into .data/mail.log; set PERFUSE_SMTP_HOST to use a real relay instead.
if [ -z "${PERFUSE_SMTP_HOST:-}" ]; then
  SMTP_PORT="${PERFUSE_SMTP_PORT:-8025}"
  PYTHONUNBUFFERED=1 "$PY" -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" >>"$DATA/mail.log" 2>&1 &
  PIDS+=($!)
  export PERFUSE_SMTP_HOST=127.0.0.1 PERFUSE_SMTP_PORT="$SMTP_PORT" PERFUSE_SMTP_SECURITY=none
  log "alarm email: SMTP sink on 127.0.0.1:$SMTP_PORT, messages in $DATA/mail.log"
fi

if [ "${PERFUSE_TLS:-0}" = 1 ]; then
  # The shape of docs/deploy.md on one machine: a streaming replica for history, FHIR searches and
  # exports (docs/replica.md; PERFUSE_REPLICA=0 leaves it out), the Daphnes' and the bridge's
  # /metrics summed through one multiprocess directory, and PERFUSE_ENGINES engines (below).
  if [ -n "${OWN_PG:-}" ] && [ "${PERFUSE_REPLICA:-1}" = 1 ]; then
    REPLICA_PORT="${PERFUSE_REPLICA_PORT:-54330}"
    start_replica "$PG_PORT" "$DATA/pg-replica" "$REPLICA_PORT"
    OWN_REPLICA=1
    export DATABASE_REPLICA_URL="$(db_url "$DB_APP_ROLE" "$REPLICA_PORT")"
    log "streaming replica on 127.0.0.1:$REPLICA_PORT (history, FHIR searches and exports read from it)"
  fi
  export PROMETHEUS_MULTIPROC_DIR="$DATA/metrics"
  rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
  start_tls_front
  PORT="$DAPHNE_PORT"  # the simulator's HTTP transport posts to the first Daphne directly
else
  "$VENV/bin/daphne" -b 127.0.0.1 -p "$PORT" --access-log "$DATA/access.log" config.asgi:application &
  PIDS+=($!)
fi
# PERFUSE_ENGINES engines (default 1; 2 with make run-tls) share the stream's partitions (docs/storage.md).
ENGINES="${PERFUSE_ENGINES:-$([ "${PERFUSE_TLS:-0}" = 1 ] && echo 2 || echo 1)}"
for (( e=0; e<ENGINES; e++ )); do
  "$PY" manage.py run_engine &
  PIDS+=($!)
done
[ "$ENGINES" -gt 1 ] && log "$ENGINES stream engines sharing ${PERFUSE_ENGINE_PARTITIONS:-16} partitions"
# Signs and anchors the audit chain head every minute (PERFUSE_AUDIT_ANCHOR: .data/audit-anchor.log).
# Signs and anchors the audit chain head every minute (PERFUSE_AUDIT_ANCHOR: .data/audit-anchor.log).
"$PY" manage.py audit_checkpoint --every 60 &
PIDS+=($!)
"$PY" manage.py run_notifier &
PIDS+=($!)
# HL7 ADT in over MLLP (docs/hl7.md): send an A01 with `python -m telemetry.hl7.send`.
export PERFUSE_HL7_LISTEN="${PERFUSE_HL7_LISTEN:-127.0.0.1:12575}"
"$PY" manage.py run_hl7 &
PIDS+=($!)
log "HL7 ADT listener (MLLP) on $PERFUSE_HL7_LISTEN"
[ -n "${PERFUSE_HL7_ORU_TARGET:-}" ] && log "HL7 ORU results every ${PERFUSE_HL7_ORU_INTERVAL:-60} s to $PERFUSE_HL7_ORU_TARGET"

# Archives each ward-day (Parquet + signed batches + manifest, docs/archive.md) into .data/archive
# (PERFUSE_ARCHIVE_URL) once it is a day old; `manage.py archive --day D` archives one now.
PERFUSE_ARCHIVE_AFTER_DAYS="${PERFUSE_ARCHIVE_AFTER_DAYS:-1}" "$PY" manage.py archive --every 3600 &
PIDS+=($!)
# The MQTT bridge: the broker's shared subscription -> group commit -> acks after commit.
"$PY" manage.py run_mqtt_ingest &
PIDS+=($!)

# Retention (docs/retention.md) with a short demo setting: a day's readings and signed batches leave
# the hot store once archived, verified and not under a legal hold, 2 days after it ended.
PERFUSE_RETENTION_READINGS_DAYS="${PERFUSE_RETENTION_READINGS_DAYS:-2}" \
  PERFUSE_RETENTION_BATCHES_DAYS="${PERFUSE_RETENTION_BATCHES_DAYS:-2}" \
  PERFUSE_RETENTION_ROLLUPS_DAYS="${PERFUSE_RETENTION_ROLLUPS_DAYS:-14}" \
  "$PY" manage.py apply_retention --every 3600 &
PIDS+=($!)
sleep 2
# The demo fleet keeps one MQTT connection per device (mutual TLS, certificates from .data/pki);
# PERFUSE_DEMO_TRANSPORT=http sends it through Daphne's HTTP ingest instead.
"$PY" manage.py simulate_fleet --demo --transport "${PERFUSE_DEMO_TRANSPORT:-mqtt}" --url "http://127.0.0.1:$PORT" \
  --hz "${PERFUSE_DEMO_HZ:-1}" --quiet --drain 5 &
PIDS+=($!)

log "Perfuse is running at ${PERFUSE_BASE_URL%/}/ — log in with a user above and its TOTP code. Ctrl-C stops everything."
wait -n "${PIDS[@]}" || true
