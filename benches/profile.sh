#!/usr/bin/env bash
# Where plain proxying spends its time: unpoll, the bare pingora proxy and nginx, each under the
# same wrk load as benches/proxy.sh, profiled with perf (the software cpu-clock event: VMs
# expose no hardware counters) and counted with strace -c (system calls per request).
#   benches/profile.sh                  # all three
#   TARGETS="unpoll bare" benches/profile.sh
# Environment: TARGETS ("unpoll bare nginx"), THREADS (1), CONNECTIONS (50), DURATION (10: the
# perf phase; the strace phase runs 5 s), TOP (25 symbols), ORIGIN (as in proxy.sh), PATH_,
# KEEP (a directory to keep perf.data and the reports in), CALLGRAPH=fp or dwarf (record call chains: perf
# report -g on the kept perf.data shows who called what).
# Needs perf and strace (Debian: linux-perf, strace), and perf_event_paranoid <= 1 or root.
source "$(dirname "$0")/lib.sh"
command -v wrk >/dev/null && command -v nginx >/dev/null || "$ROOT/benches/deps.sh"
command -v perf >/dev/null && command -v strace >/dev/null || {
  echo "perf and strace are needed: apt-get install linux-perf strace" >&2; exit 1; }
build >&2
(cd "$ROOT" && cargo build --release --locked --features bench-tools --bin unpoll-bare-pingora) >&2
URL_PATH="${PATH_:-/plain}"
THREADS="${THREADS:-1}"
OUT="${KEEP:-$WORK/profiles}"
mkdir -p "$OUT"

start_origin
echo "origin: ${ORIGIN:-nginx} at $UPSTREAM" >&2

load() { # load HOSTPORT SECONDS: prints the requests wrk completed
  wrk -t 1 -c "${CONNECTIONS:-50}" -d "$2s" "http://$1$URL_PATH" | awk '/requests in/ {print $1}'
}

tids() { ls "/proc/$1/task" | paste -sd, -; }

profile() { # profile NAME HOSTPORT PIDS (the processes serving requests)
  local name="$1" target="$2" pids="$3" requests seconds="${DURATION:-10}"
  echo "== $name" >&2
  load "$target" 2 >/dev/null # warm: connections to the origin pooled
  perf record -q ${CALLGRAPH:+--call-graph $CALLGRAPH} -e cpu-clock -F 4999 -o "$OUT/$name.perf.data" -p "$(echo "$pids" | tr ' ' ,)" -- sleep "$seconds" 2>/dev/null &
  local perf_pid=$!
  requests="$(load "$target" "$seconds")"
  wait "$perf_pid" || true
  {
    echo "# $name: $requests requests in ${seconds} s, $THREADS thread(s)"
    echo "## CPU by object"
    perf report -q -i "$OUT/$name.perf.data" --no-children --sort dso 2>/dev/null | awk "NR <= 8"
    echo "## CPU by symbol (top ${TOP:-25})"
    perf report -q -i "$OUT/$name.perf.data" --no-children --sort sym 2>/dev/null | awk -v n="${TOP:-25}" "NR <= n"
  } > "$OUT/$name.perf.txt"
  local all=""
  for p in $pids; do all="$all,$(tids "$p")"; done
  strace -c -f -o "$OUT/$name.strace.txt" -p "${all#,}" &
  local strace_pid=$!
  sleep 0.5
  requests="$(load "$target" 5)"
  kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
  python3 - "$OUT/$name.strace.txt" "$requests" "$name" >> "$OUT/$name.perf.txt" <<'PY'
import sys
path, requests, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = []
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        calls = int(f[3])
        rows.append((calls, f[-1]))
rows.sort(reverse=True)
total = sum(c for c, _ in rows)
print(f"## system calls per request under strace ({requests} requests): {total / requests:.2f}")
for calls, sc in rows[:12]:
    print(f"   {calls / requests:6.2f}  {sc}")
PY
  cat "$OUT/$name.perf.txt"
}

for name in ${TARGETS:-unpoll bare nginx}; do
  case "$name" in
    unpoll)
      start_unpoll 1s
      profile unpoll "$UNPOLL" "$UNPOLL_PID"
      stop "$UNPOLL_PID" ;;
    bare)
      bare="127.0.0.1:$(free_port)"
      "$BIN/unpoll-bare-pingora" --listen "$bare" --upstream "$UPSTREAM" --threads "$THREADS" > "$WORK/bare.log" 2>&1 &
      bare_pid=$!
      PIDS+=("$bare_pid")
      wait_http "$bare"
      profile bare "$bare" "$bare_pid"
      stop_now "$bare_pid" ;;
    nginx)
      start_nginx
      # The workers serve; the master only waits.
      profile nginx "$NGINX" "${NGINX_PIDS#* }"
      stop_nginx ;;
  esac
done
