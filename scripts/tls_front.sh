# Sourced by scripts/run.sh when PERFUSE_TLS=1 (`make run-tls`): the demo behind the nginx front of
# deploy/nginx/ (docs/proxy.md) — PERFUSE_DAPHNES Daphne processes (default 2) on loopback ports
# from PERFUSE_DAPHNE_PORT (default 8001), nginx on https://localhost:PERFUSE_TLS_PORT (default
# 8443) with a certificate from the project CA in .data/pki (trust .data/pki/ca.pem). Needs
# scripts/lib.sh, $DATA and the PIDS array of run.sh.

TLS_PORT="${PERFUSE_TLS_PORT:-8443}"
DAPHNES="${PERFUSE_DAPHNES:-2}"
DAPHNE_PORT="${PERFUSE_DAPHNE_PORT:-8001}"

# start_tls_front: the Daphnes, then nginx in front of them (all added to PIDS).
start_tls_front() {
  ensure_system_packages nginx
  local i port upstreams=() state="$DATA/nginx"
  for (( i=0; i<DAPHNES; i++ )); do
    port=$(( DAPHNE_PORT + i ))
    # Each Daphne believes X-Forwarded-For/-Proto and X-Request-ID from nginx alone (config/net.py).
    PERFUSE_TRUSTED_PROXIES="${PERFUSE_TRUSTED_PROXIES:-127.0.0.1}" \
      "$VENV/bin/daphne" -b 127.0.0.1 -p "$port" --access-log "$DATA/access-$port.log" config.asgi:application &
    PIDS+=($!)
    upstreams+=(--upstream "127.0.0.1:$port")
  done
  # nginx's workers run unprivileged when we are root: their temp files live where they can reach.
  NGINX_TEMP="$(mktemp -d /tmp/perfuse-nginx.XXXXXX)"
  "$PY" "$ROOT/manage.py" proxy_setup "$state" --listen "127.0.0.1:$TLS_PORT" "${upstreams[@]}" \
    --pki-dir "$DATA/pki" --temp-dir "$NGINX_TEMP" >/dev/null
  nginx -t -q -e "$state/error.log" -c "$state/nginx.conf"
  nginx -e "$state/error.log" -c "$state/nginx.conf" &
  PIDS+=($!)
  log "TLS front: nginx on https://localhost:$TLS_PORT in front of $DAPHNES Daphnes (ports $DAPHNE_PORT..$(( DAPHNE_PORT + DAPHNES - 1 ))); CA $DATA/pki/ca.pem, log $state/access.log"
}
