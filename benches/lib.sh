# Shared by the benchmark scripts: builds, free ports, and starting the bench upstream,
# unpoll and nginx + nchan on 127.0.0.1 in a scratch directory. Everything started here is
# stopped when the calling script exits.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d /tmp/unpoll-bench.XXXXXX)"
BIN="$ROOT/target/release"
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

build() {
  (cd "$ROOT" && ./scripts/build-deps.sh && cargo build --release --locked --features bench-tools --bin unpoll --bin unpoll-bench)
}

# A deep accept queue, so that thousands of subscribers connecting at once are not dropped
# and retried a second later. Needs root; otherwise the kernel's value stays (reported).
raise_somaxconn() {
  local want=16384
  if [ "$(cat /proc/sys/net/core/somaxconn)" -lt "$want" ]; then
    echo "$want" > /proc/sys/net/core/somaxconn 2>/dev/null || true
  fi
  echo "net.core.somaxconn = $(cat /proc/sys/net/core/somaxconn)" >&2
}

# start_upstream ARGS...: the bench upstream; sets UPSTREAM (host:port) and ORIGIN_PIDS.
start_upstream() {
  "$BIN/unpoll-bench" upstream "$@" > "$WORK/upstream.out" 2> "$WORK/upstream.err" &
  PIDS+=($!)
  ORIGIN_PIDS=$!
  for _ in $(seq 100); do
    UPSTREAM="$(head -1 "$WORK/upstream.out" 2>/dev/null || true)"
    [ -n "$UPSTREAM" ] && return 0
    sleep 0.05
  done
  echo "the bench upstream did not start" >&2; cat "$WORK/upstream.err" >&2; exit 1
}

wait_http() { # wait_http host:port
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on $1" >&2; tail -20 "$WORK"/*.log >&2 2>/dev/null; exit 1
}

# start_origin: the origin of the plain-proxy benches; sets UPSTREAM (host:port) and ORIGIN_PIDS
# (its processes). ORIGIN=nginx
# (the default): nginx returning a fixed 1 KB JSON body (one worker, keep-alive without a
# request limit), as users' origins answer; ORIGIN=bench: the bench upstream's /plain.
start_origin() {
  if [ "${ORIGIN:-nginx}" != nginx ]; then start_upstream --rate 0 --threads 1; return; fi
  local port body
  port="$(free_port)"
  mkdir -p "$WORK/origin"
  body="$(python3 -c 'import json; print(json.dumps({"items": [{"id": i, "name": f"item-{i:04}", "value": 0} for i in range(23)]}, separators=(",", ":")))')"
  cat > "$WORK/origin/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes 1;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/origin/body;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / { default_type application/json; return 200 '$body'; }
  }
}
CONF
  nginx -c "$WORK/origin/nginx.conf" -p "$WORK/origin" > "$WORK/origin/stdout" 2>&1 &
  local master=$!
  PIDS+=("$master")
  UPSTREAM="127.0.0.1:$port"
  wait_http "$UPSTREAM"
  ORIGIN_PIDS="$master $(pgrep -P "$master" | tr '\n' ' ')"
}

# start_unpoll INTERVAL: unpoll with one stream route /doc and a plain route for the rest
# (and the routes in EXTRA_ROUTES before it, the upstreams in EXTRA_UPSTREAMS after `bench`;
# EXTRA_YAML is added at the end, e.g. a `cluster:`); sets UNPOLL and UNPOLL_ADMIN (host:port)
# and UNPOLL_PID. Each call starts one more unpoll.
start_unpoll() {
  local port admin
  port="$(free_port)"; admin="$(free_port)"
  cat > "$WORK/unpoll-$port.yaml" <<YAML
server:
  listen: ["127.0.0.1:$port"]
  admin: "127.0.0.1:$admin"
  threads: ${THREADS:-2}
  max_subscribers: 20000
${EXTRA_SERVER:-}
upstreams:
  bench:
    servers: ["$UPSTREAM"]
${EXTRA_UPSTREAMS:-}
routes:
  - match: /doc
    upstream: bench
    stream:
      interval: $1
      max_subscribers: 20000
      history: 64
${EXTRA_ROUTES:-}
  - match: /*
    upstream: bench
${EXTRA_YAML:-}
YAML
  RUST_LOG=warn "${UNPOLL_BIN:-$BIN/unpoll}" run -c "$WORK/unpoll-$port.yaml" --no-watch > "$WORK/unpoll-$port.log" 2>&1 &
  UNPOLL_PID=$!
  PIDS+=("$UNPOLL_PID")
  UNPOLL="127.0.0.1:$port"
  UNPOLL_ADMIN="127.0.0.1:$admin"
  wait_http "$UNPOLL"
}

# start_nginx: nginx with nchan (subscribe at /sub, publish at /pub) and a keep-alive reverse
# proxy to the bench upstream for everything else; sets NGINX (host:port) and NGINX_PIDS
# (the master and its workers, for --pid).
start_nginx() {
  local port module
  port="$(free_port)"
  module="$(ls /usr/lib/nginx/modules/ngx_nchan_module.so 2>/dev/null || true)"
  [ -n "$module" ] || { echo "nginx's nchan module is missing: run benches/deps.sh" >&2; exit 1; }
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx/nginx.conf" <<CONF
load_module $module;
daemon off;
master_process on;
worker_processes ${THREADS:-2};
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 19000; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  upstream bench { server $UPSTREAM; keepalive 64; }
  nchan_max_reserved_memory 256M;
  server {
    listen 127.0.0.1:$port backlog=16384;
    location = /sub {
      nchan_subscriber;
      nchan_channel_id bench;
      # A new subscriber gets the newest stored message at once, as unpoll sends its snapshot.
      nchan_subscriber_first_message -1;
    }
    location = /pub {
      nchan_publisher;
      nchan_channel_id bench;
      nchan_message_buffer_length 10;
    }
    location / {
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # The forwarding headers unpoll sends, as an operator's nginx would (equal work).
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
    }
  }
}
CONF
  nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" > "$WORK/nginx/stdout" 2>&1 &
  PIDS+=($!)
  NGINX="127.0.0.1:$port"
  wait_http "$NGINX"
  sleep 0.2
  local master
  master="$(cat "$WORK/nginx/nginx.pid")"
  NGINX_PIDS="$master $(pgrep -P "$master" | tr '\n' ' ')"
}

# cpu_ticks PIDS: user + system CPU the processes (and their threads) used so far, in clock ticks.
cpu_ticks() {
  local total=0 p
  for p in $1; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

pid_args() { for p in $1; do printf -- '--pid %s ' "$p"; done; }

# stop_now PID: SIGKILL and wait (the bare pingora proxy, which waits out pingora's graceful
# shutdown on SIGTERM and SIGINT while wrk's kept-alive connections linger).
stop_now() {
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

stop() { # stop PID: SIGTERM and wait
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

stop_nginx() {
  stop "$(cat "$WORK/nginx/nginx.pid" 2>/dev/null || echo 0)"
  for _ in $(seq 100); do pgrep -f "nginx -c $WORK/nginx/nginx.conf" >/dev/null || return 0; sleep 0.05; done
}
