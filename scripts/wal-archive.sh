#!/usr/bin/env bash
# archive_command of PostgreSQL (docs/backup.md): wal-archive.sh ARCHIVE_DIR %p %f
#
# Copies one finished WAL segment (or history / backup-label file) into ARCHIVE_DIR/wal and
# exits 0 only once the copy is durable. PostgreSQL deletes or recycles the segment after a 0,
# so every step that could lose it comes first:
#   - never overwrite: a file of that name already archived with the SAME bytes is success (the
#     server crashed between our copy and its bookkeeping and asks again); DIFFERENT bytes are a
#     failure (two servers archiving into one place, or a restored copy on the old timeline) —
#     PostgreSQL keeps the segment and retries, and pg_stat_archiver.failed_count alerts;
#   - copy to a temporary name, fsync it, then link(2) it to its final name (atomic, and it
#     fails if the name exists, so two racing archivers cannot both win), fsync the directory.
# Runs as the database service user; no dependencies beyond coreutils.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 ARCHIVE_DIR %p %f" >&2
  exit 2
fi
archive="$1/wal" src="$2" name="$3"
dest="$archive/$name"

mkdir -p "$archive"
if [ -e "$dest" ]; then
  if cmp -s "$src" "$dest"; then exit 0; fi
  echo "wal-archive: $dest exists with different content; refusing to overwrite" >&2
  exit 1
fi

tmp="$archive/.$name.$$.tmp"
trap 'rm -f "$tmp"' EXIT
cp "$src" "$tmp"
sync "$tmp"
if ! ln "$tmp" "$dest" 2>/dev/null; then
  # Another archiver linked the name first: success only if it archived the same bytes.
  cmp -s "$src" "$dest" && exit 0
  echo "wal-archive: lost a race for $dest to different content" >&2
  exit 1
fi
rm -f "$tmp"
sync "$archive"
