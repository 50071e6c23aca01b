.PHONY: run run-tls test lint bench lock sbom

# Run Perfuse with a demo fleet (installs what is missing, starts PostgreSQL and Redis).
run:
	@scripts/run.sh

# The same demo behind the nginx TLS front with PERFUSE_DAPHNES Daphnes (default 2; docs/proxy.md).
run-tls:
	@PERFUSE_TLS=1 scripts/run.sh

# Run the whole test suite against throwaway PostgreSQL, Redis and TimescaleDB servers.
test:
	@scripts/test.sh

# ruff check, ruff format --check, mypy --strict: the versions requirements.lock pins.
lint:
	@scripts/lint.sh

# requirements.lock from pyproject.toml, every file hashed (docs/DEVELOPERS.md, "Dependencies").
lock:
	@scripts/lock.sh $(LOCK_ARGS)

# CycloneDX JSON SBOM of requirements.lock and the npm packages, in dist/sbom.cdx.json.
sbom:
	@scripts/sbom.sh

# The backup restore drill alone (docs/backup.md): WAL archive, base backup, point-in-time restore.
.PHONY: restore-drill
restore-drill:
	@PERFUSE_TEST_TIMESCALE=0 scripts/test.sh tests/deploy/test_restore_drill.py
