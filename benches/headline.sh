#!/usr/bin/env bash
# What unpoll saves: N clients polling a legacy GET every second straight from the upstream,
# against N subscribers of the same document through unpoll, in one run, for each N:
#   poll:   N clients GET the upstream once a second each (spread over the second);
#   push:   N SSE subscribers through unpoll, which polls once a second; the document
#           changes about once a second in the upstream (0.5 to 1.5 s apart, so changes fall
#           anywhere in a poll interval), unseen by unpoll until its next poll;
#   write:  N SSE subscribers through unpoll; the document changes only by a PATCH sent
#           through unpoll about once a second, which refreshes the topic at once.
# The upstream stamps each change with its time, so the latency a client measures is the
# staleness it sees: from the change to the client holding it.
#   benches/headline.sh                 # N = 100, 1,000, 10,000
# Environment: N_LIST ("100 1000 10000"), SIZE (1024), DURATION (10), THREADS (2), KEEP (a
# directory to keep the JSON reports in).
source "$(dirname "$0")/lib.sh"
SIZE="${SIZE:-1024}"; DURATION="${DURATION:-10}"
build >&2
raise_somaxconn
OUT="${KEEP:-$WORK}"; mkdir -p "$OUT"
start_upstream --rate 1 --random-gaps --stamp change --size "$SIZE"
TIMED="$UPSTREAM"; TIMED_PIDS="$ORIGIN_PIDS"
start_upstream --rate 0 --stamp change --size "$SIZE"
WRITTEN="$UPSTREAM"; WRITTEN_PIDS="$ORIGIN_PIDS"

for n in ${N_LIST:-100 1000 10000}; do
  echo "== N=$n: polling" >&2
  # shellcheck disable=SC2046
  "$BIN/unpoll-bench" poll --url "http://$TIMED/doc" --n "$n" --interval 1 --warmup 3 --duration "$DURATION" \
    --upstream-stats "http://$TIMED/stats" $(for p in $TIMED_PIDS; do printf -- '--upstream-pid %s ' "$p"; done) \
    --json > "$OUT/poll-$n.json"
  sleep 1

  echo "== N=$n: through unpoll" >&2
  UPSTREAM="$TIMED" start_unpoll 1s
  # shellcheck disable=SC2046
  "$BIN/unpoll-bench" subscribe --url "http://$UNPOLL/doc" --n "$n" --protocol sse --warmup 2 \
    --duration "$DURATION" --upstream-stats "http://$TIMED/stats" $(pid_args "$UNPOLL_PID") \
    $(for p in $TIMED_PIDS; do printf -- '--upstream-pid %s ' "$p"; done) --json > "$OUT/push-$n.json"
  stop "$UNPOLL_PID"
  sleep 1

  echo "== N=$n: through unpoll, changes written through it" >&2
  UPSTREAM="$WRITTEN" start_unpoll 1s
  # shellcheck disable=SC2046
  "$BIN/unpoll-bench" subscribe --url "http://$UNPOLL/doc" --n "$n" --protocol sse --warmup 2 \
    --duration "$DURATION" --upstream-stats "http://$WRITTEN/stats" $(pid_args "$UNPOLL_PID") \
    $(for p in $WRITTEN_PIDS; do printf -- '--upstream-pid %s ' "$p"; done) --json > "$OUT/write-$n.json" &
  reader=$!
  # Writes about a second apart (0.5 to 1.5 s, so they fall anywhere in the poll interval),
  # from before the measurement starts to after it ends.
  end=$((SECONDS + DURATION + 8))
  while kill -0 "$reader" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do
    sleep "$(python3 -c 'import random; print(f"{random.uniform(0.5, 1.5):.3f}")')"
    curl -s -o /dev/null -X PATCH "http://$UNPOLL/doc"
  done
  wait "$reader"
  stop "$UNPOLL_PID"
  sleep 1
done

python3 - "$OUT" ${N_LIST:-100 1000 10000} <<'PY'
import json, sys
out, ns = sys.argv[1], sys.argv[2:]
load = lambda kind, n: json.load(open(f"{out}/{kind}-{n}.json"))
print("| N | upstream GETs/s: polling / unpoll | upstream CPU (share of a core): polling / unpoll |"
      " bytes per client per minute: polling / unpoll | staleness p50 / p99 (ms): polling | unpoll |"
      " unpoll, writes through it | errors, lost |")
print("|---|---|---|---|---|---|---|---|")
for n in ns:
    p, s, w = load("poll", n), load("push", n), load("write", n)
    r = lambda x: "-" if x is None else f"{x:.3g}" if x < 10 else f"{x:,.0f}"
    ratio = lambda a, b: "" if not a or not b else f" ({a / b:,.0f}×)"
    lat = lambda d: f"{r(d['p50'])} / {r(d['p99'])}"
    print(f"| {int(n):,} | {r(p['upstream_gets_per_s'])} / {r(s['upstream_gets_per_s'])}"
          f"{ratio(p['upstream_gets_per_s'], s['upstream_gets_per_s'])}"
          f" | {p['upstream_cpu_share']:.3f} / {s['upstream_cpu_share']:.4f}"
          f" | {r(p['bytes_per_client_per_min'])} / {r(s['wire_bytes_per_subscriber_per_min'])}"
          f"{ratio(p['bytes_per_client_per_min'], s['wire_bytes_per_subscriber_per_min'])}"
          f" | {lat(p['staleness_ms'])} | {lat(s['latency_ms'])} | {lat(w['latency_ms'])}"
          f" | {p['errors']}; {s['lost']}, {w['lost']} (subscribed {s['subscribed']}, {w['subscribed']}) |")
    print(f"  unpoll CPU: {s['server_cpu_share']:.3f} of a core (timed changes), {w['server_cpu_share']:.3f} (writes);"
          f" load tool: {p['load_tool_cpu_share']:.3f} polling, {s['load_tool_cpu_share']:.3f} subscribed", file=sys.stderr)
PY
