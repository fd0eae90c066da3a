#!/usr/bin/env bash
# Real services for the marked tests: PostgreSQL 15 (the image's binaries, a throw-away data
# directory), Redis and Debian's chromium. `start` prints `export` lines for eval; `stop`
# stops what `start` started. Everything lives under one temporary folder.
set -euo pipefail

log() { echo "services: $*" >&2; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return; }
  done
  command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return; }
  log "no PostgreSQL binaries found"; exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

install() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v chromium >/dev/null || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
  fi
}

start() {
  local dir pg_port redis_port bin
  dir=$(mktemp -d /tmp/herald-services.XXXXXX)
  chmod 755 "$dir"
  bin=$(pg_bin)
  pg_port=$(free_port)
  redis_port=$(free_port)
  mkdir -p "$dir/pg" "$dir/redis"
  [ "$(id -u)" = 0 ] && chown postgres "$dir/pg"
  as_pg "$bin/initdb" -D "$dir/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
  as_pg "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log" -w \
    -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >&2
  redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes --dir "$dir/redis" \
    --pidfile "$dir/redis/redis.pid" --logfile "$dir/redis/log" --save "" --appendonly no >&2
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$bin" > "$dir/pg_bin"
  echo "$redis_port" > "$dir/redis_port"
  log "PostgreSQL on $pg_port, Redis on $redis_port, state in $dir"
  echo "export HERALD_SERVICES_DIR=$dir"
  echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/herald"
  echo "export CELERY_BROKER_URL=redis://127.0.0.1:$redis_port/0"
  echo "export REDIS_PORT=$redis_port"
  echo "export CHROMIUM_PATH=$(command -v chromium)"
}

stop() {
  local dir=${HERALD_SERVICES_DIR:-}
  [ -n "$dir" ] && [ -d "$dir" ] || { log "nothing to stop"; return 0; }
  if [ -f "$dir/redis/redis.pid" ]; then kill "$(cat "$dir/redis/redis.pid")" 2>/dev/null || true; fi
  # By its port too: a test that stops Redis starts it again without the pid file.
  if [ -f "$dir/redis_port" ]; then
    redis-cli -p "$(cat "$dir/redis_port")" shutdown nosave >/dev/null 2>&1 || true
  fi
  as_pg "$(cat "$dir/pg_bin")/pg_ctl" -D "$dir/pg/data" -m immediate stop >&2 || true
  rm -rf "$dir"
  log "stopped"
}

"${1:?usage: services.sh install|start|stop}"
