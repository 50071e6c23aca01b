#!/usr/bin/env bash
# Base backups and WAL archiving of Perfuse's PostgreSQL (docs/backup.md).
#
#   backup.sh configure ARCHIVE_DIR    archive_mode=on, archive_command=wal-archive.sh (ALTER
#                                      SYSTEM; restart the server once afterwards)
#   backup.sh base-backup ARCHIVE_DIR  a verified base backup into ARCHIVE_DIR/base/<UTC time>
#   backup.sh prune ARCHIVE_DIR N      keep the newest N base backups and the WAL they need
#   backup.sh check [MAX_AGE_SECONDS]  the archiver's health (pg_stat_archiver) as one JSON line;
#                                      exit 1 when it failed since its last success, or WAL
#                                      waits while the last archived one is too old
#
# Connection: libpq's PGHOST / PGPORT / PGUSER (default 127.0.0.1, 54329 and perfuse: `make run`'s
# cluster and its superuser). base-backup needs a role with REPLICATION (or a superuser).
# Layout of ARCHIVE_DIR (owned by the database service user):
#   wal/<segment>            every archived WAL file (scripts/wal-archive.sh writes them)
#   base/<name>/             a plain-format base backup with its backup_manifest
#   base/<name>.done         written once the backup is complete and pg_verifybackup passed; only
#                            backups with it are restored (scripts/restore.sh) or counted by prune
source "$(dirname "$0")/lib.sh"

export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-54329}" PGUSER="${PGUSER:-perfuse}"

sql() { as_service "$(pg_bindir)/psql" -d postgres -v ON_ERROR_STOP=1 -qXtAc "$1"; }

# archive_dir DIR: DIR made absolute and writable by the service user.
archive_dir() {
  mkdir -p "$1/wal" "$1/base"
  [ "$(id -u)" = 0 ] && chown "$SERVICE_USER" "$1" "$1/wal" "$1/base"
  (cd "$1" && pwd)
}

configure() {
  local dir
  dir="$(archive_dir "$1")"
  # archive_timeout bounds what a quiet server has not archived yet: the RPO (docs/backup.md).
  sql "ALTER SYSTEM SET wal_level = 'replica'"
  sql "ALTER SYSTEM SET archive_mode = 'on'"
  sql "ALTER SYSTEM SET archive_command = '$ROOT/scripts/wal-archive.sh $dir %p %f'"
  sql "ALTER SYSTEM SET archive_timeout = '${PERFUSE_ARCHIVE_TIMEOUT:-60s}'"
  sql "SELECT pg_reload_conf()" >/dev/null
  log "WAL archiving into $dir/wal configured; restart PostgreSQL once for archive_mode to apply"
}

base_backup() {
  local dir name target
  dir="$(archive_dir "$1")"
  name="$(date -u +%Y%m%dT%H%M%SZ)"
  target="$dir/base/$name"
  [ ! -e "$target" ] || { log "$target exists"; return 1; }
  # -X stream: the WAL the backup needs to be consistent travels with it, so it restores even if
  # the archive lost a segment of its own window. --checkpoint=fast: start now, not at the next
  # scheduled checkpoint. Plain format so that pg_verifybackup (PostgreSQL 15) can check it.
  as_service "$(pg_bindir)/pg_basebackup" -D "$target.partial" -Fp -X stream --checkpoint=fast \
    --manifest-checksums=SHA256 --label="perfuse $name" --no-password
  as_service "$(pg_bindir)/pg_verifybackup" -q "$target.partial"
  as_service mv "$target.partial" "$target"
  date -u +%Y-%m-%dT%H:%M:%S.%NZ | as_service tee "$target.done" >/dev/null
  as_service sync "$target.done" "$dir/base"
  echo "$target"
}

# complete_backups DIR: the names of the complete base backups, oldest first.
complete_backups() {
  local done
  for done in "$1"/base/*.done; do
    [ -e "$done" ] && [ -d "${done%.done}" ] && basename "${done%.done}"
  done | sort
}

prune() {
  local dir keep names oldest start
  dir="$(archive_dir "$1")" keep="$2"
  [ "$keep" -ge 1 ] 2>/dev/null || { log "prune: keep at least one base backup"; return 2; }
  mapfile -t names < <(complete_backups "$dir")
  [ ${#names[@]} -gt "$keep" ] || { log "prune: ${#names[@]} base backup(s), nothing to remove"; return 0; }
  local n
  for n in "${names[@]:0:${#names[@]}-keep}"; do
    log "prune: removing base backup $n"
    as_service rm -rf "$dir/base/$n" "$dir/base/$n.done"
  done
  oldest="${names[${#names[@]}-keep]}"
  # WAL before the oldest kept backup's first segment can no longer be replayed onto anything.
  start="$(sed -n 's/^START WAL LOCATION: .* (file \([0-9A-F]\{24\}\))$/\1/p' "$dir/base/$oldest/backup_label")"
  [ -n "$start" ] || { log "prune: no START WAL LOCATION in $oldest/backup_label"; return 1; }
  as_service "$(pg_bindir)/pg_archivecleanup" "$dir/wal" "$start"
  # pg_archivecleanup keeps the backup history files (SEGMENT.OFFSET.backup) of removed backups.
  local f
  for f in "$dir"/wal/*.backup; do
    [ -e "$f" ] && [[ "$(basename "$f")" < "$start" ]] && as_service rm -f "$f"
  done
  log "prune: kept ${keep} base backup(s) from $oldest and the WAL from $start"
}

check() {
  local max_age="${1:-600}" out
  # One row. waiting_segments: finished segments not archived yet (their .ready files; needs a
  # superuser or pg_monitor). A quiet server writes no WAL and so archives nothing for hours: an
  # old last_archived_wal alone is no alarm, an old one with segments waiting is (a hung or
  # failing archive_command), and so is any failure since the last success.
  out="$(sql "SELECT json_build_object(
         'last_archived_wal', last_archived_wal,
         'last_archived_age_seconds', round(extract(epoch FROM now() - last_archived_time)),
         'waiting_segments', waiting,
         'failed_count', failed_count,
         'last_failed_wal', last_failed_wal,
         'ok', NOT coalesce(last_failed_time > last_archived_time, last_failed_time IS NOT NULL)
               AND (waiting = 0 OR coalesce(now() - last_archived_time < make_interval(secs => $max_age), false)))
       FROM pg_stat_archiver,
            LATERAL (SELECT count(*) AS waiting FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') AS w")"
  echo "$out"
  [[ "$out" == *'"ok" : true'* ]]
}

case "${1:-}" in
  configure) [ $# -eq 2 ] || { echo "usage: $0 configure ARCHIVE_DIR" >&2; exit 2; }; configure "$2" ;;
  base-backup) [ $# -eq 2 ] || { echo "usage: $0 base-backup ARCHIVE_DIR" >&2; exit 2; }; base_backup "$2" ;;
  prune) [ $# -eq 3 ] || { echo "usage: $0 prune ARCHIVE_DIR KEEP" >&2; exit 2; }; prune "$2" "$3" ;;
  check) check "${2:-600}" ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
