#!/usr/bin/env bash
# Plain reverse proxying, measured with wrk: the origin directly, through unpoll, through a bare
# pingora proxy (only `upstream_peer`: the floor unpoll is built on) and through nginx, all with
# keep-alive upstream connections to the same origin, A/B rotated, in one run, for each worker
# thread count in THREADS_LIST.
#   benches/proxy.sh
#   ORIGIN=bench benches/proxy.sh       # the bench upstream as the origin instead of nginx
# Environment: ORIGIN (nginx: a static 1 KB JSON served by nginx, as users' origins answer; bench:
# the bench upstream's /plain, one tokio thread), CONNECTIONS (50), DURATION (10), ROUNDS (3),
# THREADS_LIST ("1 2": proxy worker threads / nginx workers), WRK_THREADS (1), PATH_ (/plain).
source "$(dirname "$0")/lib.sh"
command -v wrk >/dev/null && command -v nginx >/dev/null || "$ROOT/benches/deps.sh"
build >&2
(cd "$ROOT" && cargo build --release --locked --features bench-tools --bin unpoll-bare-pingora) >&2
URL_PATH="${PATH_:-/plain}"

start_origin
echo "origin: ${ORIGIN:-nginx} at $UPSTREAM" >&2
RESULTS="$WORK/wrk.txt"

measure() { # measure THREADS NAME HOSTPORT
  local out rps p99
  out="$(wrk -t "${WRK_THREADS:-1}" -c "${CONNECTIONS:-50}" -d "${DURATION:-10}s" --latency "http://$3$URL_PATH")"
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then echo "$2: errors in the run" >&2; echo "$out" >&2; fi
  rps="$(echo "$out" | awk '/^Requests\/sec/ {print $2}')"
  p99="$(echo "$out" | awk '$1 == "99%" {print $2}')"
  echo "$1 $2 $rps $p99" | tee -a "$RESULTS" >&2
}

for threads in ${THREADS_LIST:-1 2}; do
  THREADS="$threads" start_unpoll 1s
  unpoll_pid="$UNPOLL_PID"
  THREADS="$threads" start_nginx
  bare="127.0.0.1:$(free_port)"
  "$BIN/unpoll-bare-pingora" --listen "$bare" --upstream "$UPSTREAM" --threads "$threads" > "$WORK/bare.log" 2>&1 &
  bare_pid=$!
  PIDS+=("$bare_pid")
  wait_http "$bare"
  order=(direct unpoll bare nginx)
  for round in $(seq "${ROUNDS:-3}"); do
    for name in "${order[@]}"; do
      case "$name" in
        direct) measure "$threads" direct "$UPSTREAM" ;;
        unpoll) measure "$threads" unpoll "$UNPOLL" ;;
        bare) measure "$threads" bare "$bare" ;;
        nginx) measure "$threads" nginx "$NGINX" ;;
      esac
    done
    order=("${order[@]:1}" "${order[0]}") # rotate, so that no one always runs first
  done
  stop "$unpoll_pid"; stop "$bare_pid"; stop_nginx
done
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
names = ("direct", "unpoll", "bare", "nginx")
print("| threads | | requests/s (median) | p99 per run | vs nginx | vs bare pingora |")
print("|---|---|---|---|---|---|")
for t in sorted({r[0] for r in rows}, key=int):
    med = {n: statistics.median(float(r[2]) for r in rows if r[0] == t and r[1] == n) for n in names}
    for n in names:
        p99 = ", ".join(r[3] for r in rows if r[0] == t and r[1] == n)
        print(f"| {t} | {n} | {med[n]:.0f} | {p99} | {med[n] / med['nginx']:.2f} | {med[n] / med['bare']:.2f} |")
PY
