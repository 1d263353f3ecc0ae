#!/usr/bin/env bash
# Fan-out to SSE subscribers over plaintext HTTP/1.1, TLS HTTP/1.1 and HTTP/2 over TLS (N/K
# connections of K streams each), through a fresh unpoll for each, in one run: the bench
# upstream changes a SIZE-byte document once a second and every subscriber reads every event.
#   benches/tls.sh                      # 10,000 subscribers each way, HTTP/2 as 100 x 100
#   N=2000 K=50 MODES="tls h2" benches/tls.sh
# Environment: N (10000), K (100), MODES ("plain tls h2"), SIZE (1024), DURATION (10),
# WARMUP (2), THREADS (2), JSON (1 for JSON lines), CONCURRENCY (16 handshakes at once),
# NO_HANDSHAKES (1: skip the handshake rate, which needs nginx).
source "$(dirname "$0")/lib.sh"
N="${N:-10000}"; K="${K:-100}"; SIZE="${SIZE:-1024}"
build >&2
raise_somaxconn
# A CA and a certificate for localhost it issues, made for this run; the load tool trusts the CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$WORK/key.pem" -out "$WORK/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$WORK/leaf.ext"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
  -extfile "$WORK/leaf.ext" -out "$WORK/cert.pem" 2>/dev/null
start_upstream --rate 1 --size "$SIZE"
for mode in ${MODES:-plain tls h2}; do
  tls_port="$(free_port)"
  EXTRA_SERVER="  tls: [{listen: \"127.0.0.1:$tls_port\", cert: \"$WORK/cert.pem\", key: \"$WORK/key.pem\"}]" \
    start_unpoll 1000ms
  case "$mode" in
    plain) args=(--url "http://$UNPOLL/doc") ;;
    tls) args=(--url "https://127.0.0.1:$tls_port/doc" --ca "$WORK/ca.pem" --host localhost) ;;
    h2) args=(--url "https://127.0.0.1:$tls_port/doc" --ca "$WORK/ca.pem" --host localhost --h2-streams "$K") ;;
    *) echo "unknown mode $mode (plain, tls, h2)" >&2; exit 2 ;;
  esac
  echo "== $mode: $N SSE subscribers" >&2
  # shellcheck disable=SC2046
  "$BIN/unpoll-bench" subscribe "${args[@]}" --n "$N" --protocol sse \
    --duration "${DURATION:-10}" --warmup "${WARMUP:-2}" --interval 1 \
    --upstream-stats "http://$UPSTREAM/stats" $(pid_args "$UNPOLL_PID") ${JSON:+--json}
  kill "$UNPOLL_PID"; wait "$UNPOLL_PID" 2>/dev/null || true
done

# TLS handshakes per second: full handshakes (no resumption), each on a new connection, against
# unpoll's TLS listener and against nginx's with the same certificate, in this run.
if [ -z "${NO_HANDSHAKES:-}" ]; then
  command -v nginx >/dev/null || "$ROOT/benches/deps.sh" >&2
  tls_port="$(free_port)"
  EXTRA_SERVER="  tls: [{listen: \"127.0.0.1:$tls_port\", cert: \"$WORK/cert.pem\", key: \"$WORK/key.pem\"}]" \
    start_unpoll 1000ms
  "$BIN/unpoll-bench" handshakes --addr "127.0.0.1:$tls_port" --ca "$WORK/ca.pem" --label unpoll \
    --concurrency "${CONCURRENCY:-16}" --duration "${DURATION:-10}" $(pid_args "$UNPOLL_PID")
  kill "$UNPOLL_PID"; wait "$UNPOLL_PID" 2>/dev/null || true
  nginx_port="$(free_port)"
  mkdir -p "$WORK/hs"
  cat > "$WORK/hs/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes ${THREADS:-2};
pid $WORK/hs/nginx.pid;
error_log $WORK/hs/error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/hs/body;
  server {
    listen 127.0.0.1:$nginx_port ssl;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_session_cache off;
    ssl_session_tickets off;
    location / { return 200 "ok"; }
  }
}
CONF
  nginx -c "$WORK/hs/nginx.conf" -p "$WORK/hs" > "$WORK/hs/stdout" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [ -s "$WORK/hs/nginx.pid" ] && break; sleep 0.05; done
  [ -s "$WORK/hs/nginx.pid" ] || { cat "$WORK/hs/stdout" "$WORK/hs/error.log" >&2; exit 1; }
  master="$(cat "$WORK/hs/nginx.pid")"
  "$BIN/unpoll-bench" handshakes --addr "127.0.0.1:$nginx_port" --ca "$WORK/ca.pem" --label nginx \
    --concurrency "${CONCURRENCY:-16}" --duration "${DURATION:-10}" $(pid_args "$master $(pgrep -P "$master" | tr '\n' ' ')")
  kill "$master" 2>/dev/null || true
fi
