#!/usr/bin/env bash
# Plain reverse proxying, measured with wrk: the origin directly, through unpoll, through a bare
# pingora proxy (only `upstream_peer`: the floor unpoll is built on) and through nginx, all with
# keep-alive upstream connections to the same origin, A/B rotated, in one run, for each worker
# thread count in THREADS_LIST.
#   benches/proxy.sh
#   ORIGIN=bench benches/proxy.sh       # the bench upstream as the origin instead of nginx
# Environment: ORIGIN (nginx: a static 1 KB JSON served by nginx, as users' origins answer; bench:
# the bench upstream's /plain, one tokio thread), CONNECTIONS (50), DURATION (10), ROUNDS (3),
# THREADS_LIST ("1 2": proxy worker threads / nginx workers), WRK_THREADS (1), PATH_ (/plain),
# BASELINE (another unpoll binary, e.g. the previous commit's, measured as "baseline" in the same
# rotation: a change's before and after in one run), TARGETS ("direct unpoll bare nginx").
source "$(dirname "$0")/lib.sh"
command -v wrk >/dev/null && command -v nginx >/dev/null || "$ROOT/benches/deps.sh"
build >&2
(cd "$ROOT" && cargo build --release --locked --features bench-tools --bin unpoll-bare-pingora) >&2
URL_PATH="${PATH_:-/plain}"

start_origin
echo "origin: ${ORIGIN:-nginx} at $UPSTREAM" >&2
RESULTS="$WORK/wrk.txt"

measure() { # measure THREADS NAME HOSTPORT PIDS (the processes serving, for their CPU)
  local out rps p99 before after requests cpu
  before="$(cpu_ticks "$4")"
  out="$(wrk -t "${WRK_THREADS:-1}" -c "${CONNECTIONS:-50}" -d "${DURATION:-10}s" --latency "http://$3$URL_PATH")"
  after="$(cpu_ticks "$4")"
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then echo "$2: errors in the run" >&2; echo "$out" >&2; fi
  rps="$(echo "$out" | awk '/^Requests\/sec/ {print $2}')"
  p99="$(echo "$out" | awk '$1 == "99%" {print $2}')"
  requests="$(echo "$out" | awk '/requests in/ {print $1}')"
  # CPU of the serving processes per request, in microseconds (ticks are 1/CLK_TCK s).
  cpu="$(awk -v t=$((after - before)) -v r="$requests" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz * 1e6 / r}')"
  echo "$1 $2 $rps $p99 $cpu" | tee -a "$RESULTS" >&2
}

for threads in ${THREADS_LIST:-1 2}; do
  THREADS="$threads" start_unpoll 1s
  unpoll_pid="$UNPOLL_PID"; unpoll="$UNPOLL"
  THREADS="$threads" start_nginx
  bare="127.0.0.1:$(free_port)"
  "$BIN/unpoll-bare-pingora" --listen "$bare" --upstream "$UPSTREAM" --threads "$threads" > "$WORK/bare.log" 2>&1 &
  bare_pid=$!
  PIDS+=("$bare_pid")
  wait_http "$bare"
  if [ -n "${BASELINE:-}" ]; then
    UNPOLL_BIN="$BASELINE" THREADS="$threads" start_unpoll 1s
    baseline_pid="$UNPOLL_PID"; baseline="$UNPOLL"
  fi
  read -r -a order <<< "${TARGETS:-direct unpoll bare nginx}${BASELINE:+ baseline}"
  for round in $(seq "${ROUNDS:-3}"); do
    for name in "${order[@]}"; do
      case "$name" in
        direct) measure "$threads" direct "$UPSTREAM" "$ORIGIN_PIDS" ;;
        unpoll) measure "$threads" unpoll "$unpoll" "$unpoll_pid" ;;
        bare) measure "$threads" bare "$bare" "$bare_pid" ;;
        nginx) measure "$threads" nginx "$NGINX" "$NGINX_PIDS" ;;
        baseline) measure "$threads" baseline "$baseline" "$baseline_pid" ;;
      esac
    done
    order=("${order[@]:1}" "${order[0]}") # rotate, so that no one always runs first
  done
  stop "$unpoll_pid"; stop_now "$bare_pid"; stop_nginx
  if [ -n "${BASELINE:-}" ]; then stop "$baseline_pid"; fi
done
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
names = [n for n in ("direct", "unpoll", "baseline", "bare", "nginx") if any(r[1] == n for r in rows)]
print("| threads | | requests/s (median) | p99 per run | CPU µs per request (median) | vs nginx | vs bare pingora |")
print("|---|---|---|---|---|---|---|")
for t in sorted({r[0] for r in rows}, key=int):
    med = {n: statistics.median(float(r[2]) for r in rows if r[0] == t and r[1] == n) for n in names}
    med.setdefault("nginx", float("nan")); med.setdefault("bare", float("nan"))
    for n in names:
        p99 = ", ".join(r[3] for r in rows if r[0] == t and r[1] == n)
        cpu = statistics.median(float(r[4]) for r in rows if r[0] == t and r[1] == n)
        print(f"| {t} | {n} | {med[n]:.0f} | {p99} | {cpu:.1f} | {med[n] / med['nginx']:.2f} | {med[n] / med['bare']:.2f} |")
PY
