"""The archive (contract section 6, docs/archive.md): each past day of each ward leaves the hot
store as Parquet — the readings, the signed batches they came in — and a manifest, in a
directory or an S3-compatible bucket, written once. `verify.archive_day_verified` is what a
retention job asks before it drops a day; `restore` puts a day back; `batches` re-verifies a
device's signature over what was kept, in the hot store or the archive."""
