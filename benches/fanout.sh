#!/usr/bin/env bash
# Fan-out through unpoll: the bench upstream changes a SIZE-byte document RATE times a second,
# unpoll polls it every 1/RATE s, and N subscribers per protocol read every event.
#   benches/fanout.sh                 # 10,000 SSE then 10,000 WebSocket subscribers, 10 s each
#   N=2000 PROTOCOLS=ws FORMAT=merge-patch benches/fanout.sh
#   IDLE=1 benches/fanout.sh          # the document never changes: idle memory and CPU
# Environment: N (10000), PROTOCOLS ("sse ws"), RATE (1), SIZE (1024), DURATION (10),
# WARMUP (2), FORMAT (unpoll's default, json-patch), THREADS (2), JSON (1 for JSON lines).
source "$(dirname "$0")/lib.sh"
N="${N:-10000}"; RATE="${RATE:-1}"; SIZE="${SIZE:-1024}"
if [ -n "${IDLE:-}" ]; then RATE=1; fi
INTERVAL_MS="$(python3 -c "print(round(1000/float('$RATE')))")"
INTERVAL="$(python3 -c "print($INTERVAL_MS/1000)")"
build >&2
raise_somaxconn
if [ -n "${IDLE:-}" ]; then
  # Unchanged, with an ETag: unpoll's polls get 304s and nothing is sent to anyone.
  start_upstream --rate 0 --stamp change --size "$SIZE"
else
  start_upstream --rate "$RATE" --size "$SIZE"
fi
for proto in ${PROTOCOLS:-sse ws}; do
  # A fresh proxy per protocol, so memory freed by one run can't hide the next one's.
  start_unpoll "${INTERVAL_MS}ms"
  # shellcheck disable=SC2046
  "$BIN/unpoll-bench" subscribe --url "http://$UNPOLL/doc" --n "$N" --protocol "$proto" \
    --duration "${DURATION:-10}" --warmup "${WARMUP:-2}" --interval "$INTERVAL" \
    --upstream-stats "http://$UPSTREAM/stats" $(pid_args "$UNPOLL_PID") \
    ${FORMAT:+--format "$FORMAT"} ${JSON:+--json}
  kill "$UNPOLL_PID"; wait "$UNPOLL_PID" 2>/dev/null || true
done
