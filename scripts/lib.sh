# Shared shell helpers for `make run` and `make test`. Sourced, not executed.
# Starts project-owned PostgreSQL and Redis on loopback as an unprivileged user.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

log() { printf '\033[1;34m[perfuse]\033[0m %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && { echo "$d"; return; }; done
  return 1
}

free_port() {
  "$PY" - <<'PY'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
PY
}

# Run a command as the unprivileged service user when we are root (PostgreSQL refuses root).
SERVICE_USER="${PERFUSE_SERVICE_USER:-postgres}"
as_service() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$SERVICE_USER" -- "$@"; else "$@"; fi
}

ensure_system_packages() {
  # $@: extra Debian packages needed by the caller (e.g. chromium for browser tests).
  local missing=()
  pg_bindir >/dev/null 2>&1 || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  local p
  for p in "$@"; do
    case "$p" in
      chromium) [ -x /usr/bin/chromium ] || missing+=(chromium) ;;
      nodejs) command -v node >/dev/null 2>&1 || missing+=(nodejs)
              command -v npm >/dev/null 2>&1 || missing+=(npm) ;;
      *) dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p") ;;
    esac
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    # Debian's package starts a cluster and a redis on default ports; we run our own.
    as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
    as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
    # Without systemd the package's init script may have started a broker on 1883.
    pkill -x -u mosquitto mosquitto >/dev/null 2>&1 || true
    # `prometheus` is installed for promtool only; its package starts a server on 9090.
    as_root systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
    pkill -x -u prometheus prometheus >/dev/null 2>&1 || true
    pkill -x -u prometheus prometheus-node-exporter >/dev/null 2>&1 || true
  fi
}

# ensure_venv: .venv holding exactly requirements.lock (`make lock` writes it from pyproject.toml).
# --require-hashes: every file pip installs must match a sha256 the lock records, whatever index or
# find-links this machine's pip configuration adds (a file the lock does not name is refused, not
# installed). The project itself (its metadata: archive manifests record its version) goes in
# without dependencies or build isolation: its build backend, setuptools, is in the lock too, so
# no unhashed download happens. `pip check` then fails when pyproject.toml asks for something the
# lock lacks (run `make lock`). Installs again whenever the lock or pyproject.toml changes.
ensure_venv() {
  local stamp="$VENV/.perfuse-lock" want
  want="$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$PY" ]; then
    # Django 5.2 LTS on the Python 3.11 that Debian 12 ships (pyproject pins >=3.11,<3.12).
    local base
    base="$(command -v python3.11 || command -v python3)"
    "$base" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
      || { log "Python 3.11 is required ($base is $("$base" -V 2>&1))"; return 1; }
    "$base" -c 'import venv, ensurepip' 2>/dev/null || as_root apt-get install -y -qq python3-venv >/dev/null
    log "creating virtualenv in .venv"
    "$base" -m venv "$VENV"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Python dependencies from requirements.lock (hashes checked)"
    local out="$VENV/pip-install.log" pip=("$PY" -m pip install -q --disable-pip-version-check)
    if ! { "${pip[@]}" --require-hashes -r "$ROOT/requirements.lock" \
           && "${pip[@]}" --no-deps --no-build-isolation -e "$ROOT"; } >"$out" 2>&1; then
      cat "$out" >&2
      log "pip install failed (log above)"
      return 1
    fi
    if ! "$PY" -m pip check --disable-pip-version-check >"$out" 2>&1; then
      cat "$out" >&2
      log "pip check failed (above); if pyproject.toml asks for what requirements.lock lacks, run \`make lock\` (docs/DEVELOPERS.md)"
      return 1
    fi
    echo "$want" > "$stamp"
  fi
}

# ensure_plotly: static/vendor/plotly.min.js from the npm package pinned in tooling/plotly
# (package-lock.json records its sha512 integrity, which `npm ci` checks), served only once its
# sha256 matches the one recorded in tooling/plotly/plotly.min.js.sha256.
ensure_plotly() {
  local dir="$ROOT/tooling/plotly" dest="$ROOT/static/vendor/plotly.min.js" want
  want="$(cut -d' ' -f1 "$dir/plotly.min.js.sha256")"
  [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$want" ] && return 0
  if ! (cd "$dir" && sha256sum --quiet -c plotly.min.js.sha256) >/dev/null 2>&1; then
    log "installing Plotly.js (tooling/plotly/package-lock.json)"
    (cd "$dir" && npm ci --no-audit --no-fund --silent >&2) || { log "npm ci failed in tooling/plotly"; return 1; }
    (cd "$dir" && sha256sum --quiet -c plotly.min.js.sha256) >&2 \
      || { log "tooling/plotly: plotly.min.js does not match plotly.min.js.sha256"; return 1; }
  fi
  mkdir -p "$ROOT/static/vendor"
  cp "$dir/node_modules/plotly.js-dist-min/plotly.min.js" "$dest"
}

# start_postgres DIR PORT: init (once) and start a cluster in DIR owned by the service user.
start_postgres() {
  local dir="$1" port="$2" bindir
  bindir="$(pg_bindir)"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown "$SERVICE_USER" "$dir"
  chmod 700 "$dir"
  if [ ! -f "$dir/PG_VERSION" ]; then
    as_service "$bindir/initdb" -D "$dir" -U perfuse --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  # setsid: a Ctrl-C in the terminal must not reach the postmaster (SIGINT = fast shutdown).
  as_service setsid -w "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $dir -c fsync=${PG_FSYNC:-on} -c max_connections=200 -c shared_buffers=512MB" start >/dev/null
  as_service "$bindir/psql" -h 127.0.0.1 -p "$port" -U perfuse -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='perfuse'" | grep -q 1 \
    || as_service "$bindir/createdb" -h 127.0.0.1 -p "$port" -U perfuse perfuse
}

# The database roles (audit/hardening.py, docs/security.md). perfuse_owner owns every table and
# runs the migrations; perfuse_app, the role the application connects as, owns nothing and may
# only SELECT and INSERT the audit tables. The cluster's superuser (perfuse) only sets them up.
DB_OWNER_ROLE=perfuse_owner
DB_APP_ROLE=perfuse_app

# superuser_sql PORT DB: run the SQL on stdin as the cluster's superuser.
superuser_sql() {
  as_service "$(pg_bindir)/psql" -h 127.0.0.1 -p "$1" -U perfuse -d "$2" -v ON_ERROR_STOP=1 -qX >/dev/null
}

# ensure_db_roles PORT DB [createdb]: create (once) the owner and application roles and give the
# owner DB. createdb: the owner may create databases (pytest-django creates the test database).
ensure_db_roles() {
  local port="$1" db="$2" createdb=NOCREATEDB
  [ "${3:-}" = createdb ] && createdb=CREATEDB
  superuser_sql "$port" "$db" <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$DB_OWNER_ROLE') THEN CREATE ROLE $DB_OWNER_ROLE LOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$DB_APP_ROLE') THEN CREATE ROLE $DB_APP_ROLE LOGIN; END IF;
END \$\$;
ALTER ROLE $DB_OWNER_ROLE NOSUPERUSER NOCREATEROLE $createdb NOREPLICATION NOBYPASSRLS;
ALTER ROLE $DB_APP_ROLE NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS NOINHERIT;
ALTER DATABASE $db OWNER TO $DB_OWNER_ROLE;
SQL
}

# harden_db PORT DB: the owner owns every object and the application role gets its grants. Run
# before migrate (a database first migrated as the superuser is handed to the owner) and after.
harden_db() {
  "$PY" "$ROOT/manage.py" audit_hardening_sql --app-role "$DB_APP_ROLE" --owner-role "$DB_OWNER_ROLE" \
    | superuser_sql "$1" "$2"
}

# db_url ROLE PORT: the URL of the project database on the local cluster, as ROLE.
db_url() { echo "postgres://$1@127.0.0.1:$2/perfuse"; }

stop_postgres() {
  local dir="$1"
  [ -f "$dir/postmaster.pid" ] && as_service "$(pg_bindir)/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
}

# start_replica PRIMARY_PORT DIR PORT: a hot standby of the local cluster on PRIMARY_PORT, made
# afresh in DIR by `pg_basebackup -R` (docs/replica.md: the copy streams the primary's WAL from
# then on) and started on PORT. initdb's pg_hba.conf trusts replication from loopback.
start_replica() {
  local primary="$1" dir="$2" port="$3"
  stop_postgres "$dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown "$SERVICE_USER" "$dir"
  chmod 700 "$dir"
  # (It warns about the primary's socket file in the data directory, which it skips.)
  as_service "$(pg_bindir)/pg_basebackup" -h 127.0.0.1 -p "$primary" -U perfuse -D "$dir" -R -X stream -c fast 2>/dev/null
  start_postgres "$dir" "$port"
}

# start_redis DIR PORT [persist]: a project-owned redis on loopback.
start_redis() {
  local dir="$1" port="$2" persist="${3:-yes}"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown "$SERVICE_USER" "$dir"
  local save=(--save "")
  [ "$persist" = yes ] && save=(--save "60 1000" --appendonly no)
  as_service redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "${save[@]}" >/dev/null
  local i
  for i in $(seq 1 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "redis did not start"; return 1
}

# own_redis DIR PERSIST [PORT]: unless REDIS_URL names a redis already, start a project-owned one
# in DIR (start_redis; PORT, a free one by default) and point REDIS_URL at it. OWN_REDIS=1 and
# REDIS_PORT tell the caller's cleanup to stop it (stop_redis).
own_redis() {
  [ -z "${REDIS_URL:-}" ] || return 0
  REDIS_PORT="${3:-$(free_port)}"
  start_redis "$1" "$REDIS_PORT" "$2"
  OWN_REDIS=1
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
}

stop_redis() {
  local dir="$1" port="$2"
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
}

# start_mosquitto STATE PKI_DIR PORT [refresh-crl]: write the project broker's configuration
# (telemetry/mqtt_broker.py; the deployment CA in PKI_DIR is created once) and start Mosquitto
# on 127.0.0.1:PORT, TLS only, client certificates required. Exports MQTT_URL, the CA, the
# bridge identity (MQTT_CERT_FILE/MQTT_KEY_FILE), PERFUSE_MQTT_PIDFILE (SIGHUP reloads the CRL)
# and the admin identity that drops revoked devices. refresh-crl: rebuild the CRL from the
# database first (it must be migrated). As root, Mosquitto drops to the `mosquitto` user (it
# refuses to keep root), or to the service user where no such user exists.
start_mosquitto() {
  local state="$1" pki="$2" port="$3" run_as=() setup_args=() line
  if [ "$(id -u)" = 0 ]; then
    if id mosquitto >/dev/null 2>&1; then run_as=(--run-as mosquitto); else run_as=(--run-as "$SERVICE_USER"); fi
  fi
  [ "${4:-}" = refresh-crl ] && setup_args+=(--refresh-crl)
  local out
  out="$("$PY" "$ROOT/manage.py" mqtt_broker_setup "$state" --port "$port" --pki-dir "$pki" "${run_as[@]}" "${setup_args[@]}")"
  while IFS= read -r line; do
    case "$line" in *=*) export "${line%%=*}=${line#*=}" ;; esac
  done <<<"$out"
  rm -f "$state/mosquitto.pid"
  # -d: daemonizes once the listener is open; the pid file says who to SIGHUP and stop.
  mosquitto -c "$state/mosquitto.conf" -d
  local i
  for i in $(seq 1 50); do
    [ -s "$state/mosquitto.pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  log "mosquitto did not start (log: $state/mosquitto.log)"; tail -n 20 "$state/mosquitto.log" >&2 || true
  return 1
}

# own_mosquitto STATE PKI_DIR [PORT] [refresh-crl]: unless MQTT_URL names a broker already (then
# MQTT_CA_FILE, MQTT_CERT_FILE, MQTT_KEY_FILE and PERFUSE_PKI_DIR describe it), start the project's
# own (start_mosquitto; PORT, a free one by default). OWN_MQTT=1 tells the cleanup to stop it.
own_mosquitto() {
  [ -z "${MQTT_URL:-}" ] || return 0
  MQTT_PORT="${3:-$(free_port)}"
  start_mosquitto "$1" "$2" "$MQTT_PORT" "${4:-}"
  OWN_MQTT=1
}

# stop_mosquitto STATE: SIGTERM (it saves its persistence file on the way out), wait for it.
stop_mosquitto() {
  local pidfile="$1/mosquitto.pid" pid i
  [ -s "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
