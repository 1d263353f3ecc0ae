#!/usr/bin/env bash
# A topic whose document is expensive to diff, beside plain proxying and another stream, with
# and without it, alternating, in the same run:
#   - plain GETs of /plain at RATE_PLAIN a second (unpoll-bench requests): latency from when
#     each was due;
#   - another stream (/doc, N SSE subscribers, the bench upstream changing it once a second):
#     events lost or out of order, delivery latency;
#   - the expensive topic: /shuffled, SHUFFLED_ROWS rows of SHUFFLED_FIELDS fields in a new
#     order on every poll, polled every 200 ms, with one subscriber that reads everything.
#   benches/hostile.sh
# Environment: ROUNDS (2), DURATION (15), N (1000), RATE_PLAIN (200), SHUFFLED_ROWS (2000),
# SHUFFLED_FIELDS (100), THREADS (2).
source "$(dirname "$0")/lib.sh"
build >&2
start_upstream --rate 1 --size 1024 --shuffled-rows "${SHUFFLED_ROWS:-2000}" --shuffled-fields "${SHUFFLED_FIELDS:-100}"
EXTRA_ROUTES="  - match: /shuffled
    upstream: bench
    stream:
      interval: 200ms
      linger: 1s"
start_unpoll 1s
RESULTS="$WORK/results.txt"

measure() { # measure LABEL
  "$BIN/unpoll-bench" subscribe --url "http://$UNPOLL/doc" --n "${N:-1000}" --duration "${DURATION:-15}" \
    --warmup 1 --json > "$WORK/sub.json" &
  local sub=$!
  sleep 1.5
  "$BIN/unpoll-bench" requests --url "http://$UNPOLL/plain" --rate "${RATE_PLAIN:-200}" \
    --duration "$(python3 -c "print(${DURATION:-15} - 1)")" --json > "$WORK/req.json"
  wait "$sub"
  python3 - "$1" "$WORK/req.json" "$WORK/sub.json" >> "$RESULTS" <<'PY'
import json, sys
req = json.load(open(sys.argv[2])); sub = json.load(open(sys.argv[3]))
print(json.dumps({"label": sys.argv[1], "req": req, "sub": sub}))
PY
  tail -1 "$RESULTS" >&2
}

for round in $(seq "${ROUNDS:-2}"); do
  measure quiet
  curl -sN -H 'Accept: text/event-stream' "http://$UNPOLL/shuffled" > /dev/null &
  HOSTILE=$!
  sleep 3
  measure hostile
  kill "$HOSTILE"; wait "$HOSTILE" 2>/dev/null || true
  sleep 3  # the expensive topic lingers 1 s, then stops
done
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(label, f):
    return statistics.median(f(r) for r in rows if r["label"] == label)
print("| | plain p50 | plain p99 | plain max | plain errors | other stream: lost / out of order | other stream p99 |")
print("|---|---|---|---|---|---|---|")
for label in ("quiet", "hostile"):
    print(f"| {label} | {med(label, lambda r: r['req']['p50_ms']):.2f} ms | {med(label, lambda r: r['req']['p99_ms']):.2f} ms"
          f" | {med(label, lambda r: r['req']['max_ms']):.1f} ms | {med(label, lambda r: r['req']['errors']):.0f}"
          f" | {med(label, lambda r: r['sub']['lost']):.0f} / {med(label, lambda r: r['sub']['out_of_order']):.0f}"
          f" | {med(label, lambda r: r['sub']['latency_ms']['p99'] or 0):.1f} ms |")
PY
