.PHONY: run run-tls test lint bench

# Run Perfuse with a demo fleet (installs what is missing, starts PostgreSQL and Redis).
run:
	@scripts/run.sh

# The same demo behind the nginx TLS front with PERFUSE_DAPHNES Daphnes (default 2; docs/proxy.md).
run-tls:
	@PERFUSE_TLS=1 scripts/run.sh

# Run the whole test suite against throwaway PostgreSQL, Redis and TimescaleDB servers.
test:
	@scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
