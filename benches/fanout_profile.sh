#!/usr/bin/env bash
# Where fan-out spends its time: N SSE subscribers of one topic whose 1 KB document changes
# once a second, served by unpoll and by nginx + nchan in turn, each profiled with perf (the
# software cpu-clock event) and its system calls counted with `perf trace -s` (tracepoints, so
# the count does not slow the server as strace would) while the subscribers read.
#   benches/fanout_profile.sh
#   TARGETS=unpoll FORMAT=snapshot benches/fanout_profile.sh
# Environment: TARGETS ("unpoll nchan"), N (10000), DURATION (10: the perf phase; the syscall
# count runs 10 s, so a change more or less at its edges moves it by a tenth), TOP (25
# symbols), FORMAT (unpoll's), THREADS (2), KEEP (a directory to keep perf.data and the reports
# in).
# Needs perf (Debian: linux-perf), and perf_event_paranoid <= 1 or root.
source "$(dirname "$0")/lib.sh"
command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || "$ROOT/benches/deps.sh"
command -v perf >/dev/null || { echo "perf is needed: apt-get install linux-perf" >&2; exit 1; }
N="${N:-10000}"; SECONDS_PERF="${DURATION:-10}"; SECONDS_TRACE=10
build >&2
raise_somaxconn
OUT="${KEEP:-$WORK/profiles}"
mkdir -p "$OUT"
start_upstream --rate 1 --size 1024
POLLED="$UPSTREAM"

# profile NAME URL SERVER PIDS: subscribers for the whole phase, perf, then the syscall count.
profile() {
  local name="$1" url="$2" server="$3" pids="$4"
  echo "== $name" >&2
  # shellcheck disable=SC2046
  "$BIN/unpoll-bench" subscribe --url "$url" --server "$server" --n "$N" --protocol sse --warmup 1 \
    --duration "$((SECONDS_PERF + SECONDS_TRACE + 4))" $(pid_args "$pids") \
    ${FORMAT:+$( [ "$server" = unpoll ] && echo "--format $FORMAT")} --json > "$OUT/$name.json" &
  local reader=$!
  sleep 4 # everyone subscribed (about 0.5 s) and past the warm-up
  perf record -q -e cpu-clock -F 4999 -o "$OUT/$name.perf.data" -p "$(echo "$pids" | tr ' ' ,)" \
    -- sleep "$SECONDS_PERF" 2>/dev/null
  # perf trace counts per thread; the lines that matter are `name calls errors total min …`.
  perf trace -s -p "$(echo "$pids" | tr ' ' ,)" -o "$OUT/$name.trace.txt" -- sleep "$SECONDS_TRACE" 2>/dev/null || true
  wait "$reader"
  {
    echo "# $name: $N subscribers, one 1 KB change a second"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"deliveries {r['deliveries']} (lost {r['lost']}), CPU {r['server_cpu_us_per_delivery']:.2f} µs per delivery, p99 {r['latency_ms']['p99']} ms\")" "$OUT/$name.json"
    echo "## CPU by object"
    perf report -q -i "$OUT/$name.perf.data" --no-children --sort dso 2>/dev/null | awk "NF && NR <= 8"
    echo "## CPU by symbol (top ${TOP:-25})"
    perf report -q -i "$OUT/$name.perf.data" --no-children --sort sym 2>/dev/null | awk -v n="${TOP:-25}" "NF && NR <= n"
    python3 - "$OUT/$name.trace.txt" "$((N * SECONDS_TRACE))" <<'PY'
import collections, sys
path, deliveries = sys.argv[1], int(sys.argv[2])
calls = collections.Counter()
for line in open(path):
    f = line.split()
    # "   writev   10000   0   12.345   0.001 ..." : a name, then the call and error counts.
    if len(f) >= 4 and f[0].isidentifier() and f[1].isdigit() and f[2].isdigit():
        calls[f[0]] += int(f[1])
total = sum(calls.values())
print(f"## system calls per delivery ({deliveries} deliveries in the count): {total / deliveries:.2f}")
for name, n in calls.most_common(10):
    print(f"   {n / deliveries:6.3f}  {name}")
PY
  } > "$OUT/$name.txt"
  cat "$OUT/$name.txt"
}

for target in ${TARGETS:-unpoll nchan}; do
  case "$target" in
    unpoll)
      UPSTREAM="$POLLED" start_unpoll 1s
      profile unpoll "http://$UNPOLL/doc" unpoll "$UNPOLL_PID"
      stop "$UNPOLL_PID" ;;
    nchan)
      UPSTREAM="$POLLED" start_nginx
      "$BIN/unpoll-bench" upstream --rate 1 --size 1024 --publish "http://$NGINX/pub" > /dev/null 2> "$WORK/publisher.err" &
      publisher=$!
      sleep 0.5
      profile nchan "http://$NGINX/sub" nchan "$NGINX_PIDS"
      stop "$publisher"
      stop_nginx ;;
  esac
done
