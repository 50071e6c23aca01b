.PHONY: run test lint bench

# Run Perfuse with a demo fleet (installs what is missing, starts PostgreSQL and Redis).
run:
	@scripts/run.sh

# Run the whole test suite against throwaway PostgreSQL, Redis and TimescaleDB servers.
test:
	@scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

# The backup restore drill alone (docs/backup.md): WAL archive, base backup, point-in-time restore.
.PHONY: restore-drill
restore-drill:
	@PERFUSE_TEST_TIMESCALE=0 scripts/test.sh tests/deploy/test_restore_drill.py
