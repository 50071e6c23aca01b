#!/usr/bin/env bash
# Point-in-time restore of Perfuse's PostgreSQL from scripts/backup.sh's archive (docs/backup.md).
#
#   restore.sh ARCHIVE_DIR NEW_PGDATA --target-time TIME [--backup NAME] [--archive-to DIR]
#              [--start PORT [--server-options OPTS]]
#
# Copies the newest complete base backup that finished before TIME (or NAME) into NEW_PGDATA
# (which must not exist or be empty: a restore never writes over a data directory), and sets up
# recovery: restore_command from ARCHIVE_DIR/wal, recovery_target_time = TIME,
# recovery_target_action = promote. The restored server replays every transaction that
# committed at or before TIME, none after, and then becomes a primary on a new timeline.
# It does not archive into ARCHIVE_DIR (it is not that server any more): archive_mode is off
# unless --archive-to DIR names a NEW archive for it (take a base backup there once promoted).
# --start PORT starts it on 127.0.0.1:PORT and waits until recovery is done and it is promoted;
# --server-options: more postgres options for that start (the drill's `-c fsync=off`).
# TIME: anything PostgreSQL reads as timestamptz, with its zone (2026-12-01 14:30:00.123+00).
source "$(dirname "$0")/lib.sh"

usage() { sed -n '4,5p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
archive="$(cd "$1" && pwd)" pgdata="$2"
shift 2
target="" backup="" archive_to="" port="" server_options=""
while [ $# -gt 0 ]; do
  case "$1" in
    --target-time) target="$2"; shift 2 ;;
    --backup) backup="$2"; shift 2 ;;
    --archive-to) archive_to="$2"; shift 2 ;;
    --start) port="$2"; shift 2 ;;
    --server-options) server_options="$2"; shift 2 ;;
    *) usage ;;
  esac
done
[ -n "$target" ] || usage
[[ "$target" != *"'"* ]] || usage  # it goes into postgresql.auto.conf between quotes
target_epoch="$(date -u -d "$target" +%s.%N)" || { log "cannot read the target time $target"; exit 2; }

# The newest complete backup (its .done written after pg_verifybackup) that ended before TIME:
# recovery cannot stop before the backup's own end, where its copy first is consistent.
if [ -z "$backup" ]; then
  for done in "$archive"/base/*.done; do
    [ -e "$done" ] && [ -d "${done%.done}" ] || continue
    ended="$(date -u -d "$(cat "$done")" +%s.%N)"
    awk -v e="$ended" -v t="$target_epoch" 'BEGIN { exit !(e < t) }' && backup="$(basename "${done%.done}")"
  done
  [ -n "$backup" ] || { log "no complete base backup in $archive/base ended before $target"; exit 1; }
fi
[ -f "$archive/base/$backup.done" ] || { log "base backup $backup is not complete (no $backup.done)"; exit 1; }

if [ -e "$pgdata" ] && [ -n "$(ls -A "$pgdata")" ]; then
  log "$pgdata is not empty; a restore goes into a new data directory"; exit 1
fi
mkdir -p "$pgdata"
[ "$(id -u)" = 0 ] && chown "$SERVICE_USER" "$pgdata"
chmod 700 "$pgdata"
pgdata="$(cd "$pgdata" && pwd)"
log "restoring base backup $backup into $pgdata, then WAL up to $target"
as_service cp -a "$archive/base/$backup/." "$pgdata/"
# The old server's log and socket lock file (when its socket lived in its data directory).
as_service rm -f "$pgdata/server.log" "$pgdata/backup_manifest" "$pgdata"/.s.PGSQL.*

# Recovery refuses settings below the old server's (its max_connections was raised by the
# command line of lib.sh's start_postgres, not in a file the backup holds): keep its values,
# which the backup's pg_control records.
settings="$(as_service "$(pg_bindir)/pg_controldata" "$pgdata" | sed -n \
  's/^\(max_connections\|max_worker_processes\|max_wal_senders\|max_prepared_xacts\|max_locks_per_xact\) setting: *\([0-9]*\)$/\1 \2/p' \
  | sed 's/max_prepared_xacts/max_prepared_transactions/; s/max_locks_per_xact/max_locks_per_transaction/' \
  | awk '{ printf "%s = %s\n", $1, $2 }')"

if [ -n "$archive_to" ]; then
  mkdir -p "$archive_to/wal"
  [ "$(id -u)" = 0 ] && chown "$SERVICE_USER" "$archive_to" "$archive_to/wal"
  archive_to="$(cd "$archive_to" && pwd)"
  [ "$archive_to" != "$archive" ] || { log "--archive-to must be a new archive, not $archive"; exit 1; }
  archiving="archive_mode = 'on'
archive_command = '$ROOT/scripts/wal-archive.sh $archive_to %p %f'"
else
  archiving="archive_mode = 'off'"
fi
# Later lines of postgresql.auto.conf win over the backed-up server's ALTER SYSTEM settings.
as_service tee -a "$pgdata/postgresql.auto.conf" >/dev/null <<CONF
# scripts/restore.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): base backup $backup, target $target
restore_command = 'cp "$archive/wal/%f" "%p"'
recovery_target_time = '$target'
recovery_target_action = 'promote'
$settings
$archiving
CONF
as_service touch "$pgdata/recovery.signal"

[ -n "$port" ] || { log "ready: start it (pg_ctl -D $pgdata start); it promotes itself at the target"; exit 0; }

as_service setsid -w "$(pg_bindir)/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 120 \
  -o "-h 127.0.0.1 -p $port -k $pgdata $server_options" start >/dev/null
for _ in $(seq 1 1200); do
  state="$(as_service "$(pg_bindir)/psql" -h 127.0.0.1 -p "$port" -U "${PGUSER:-perfuse}" -d postgres -qXtAc \
    "SELECT pg_is_in_recovery()" 2>/dev/null || true)"
  if [ "$state" = f ]; then
    grep -h "recovery stopping\|selected new timeline\|archive recovery complete" "$pgdata/server.log" >&2 || true
    log "restored and promoted on 127.0.0.1:$port"
    exit 0
  fi
  # A target after the last archived commit ends recovery with FATAL: the server is gone.
  as_service "$(pg_bindir)/pg_ctl" -D "$pgdata" status >/dev/null 2>&1 || break
  sleep 0.1
done
log "recovery did not finish (see $pgdata/server.log)"
tail -n 20 "$pgdata/server.log" >&2
exit 1
