#!/usr/bin/env bash
# Many topics: T topics of SUBS SSE subscribers each (subscriber i reads /doc?t=i%T), a
# SIZE-byte document in which one item changes every second, polled once a second per topic.
# Reports the upstream GETs per second (target: T per second, within 2 %), the most polls
# started in any 10 ms (an even spread is T/100), unpoll's CPU per poll (its parse, diff,
# encoding and the deliveries of its change), delivery latency and memory per topic.
#   benches/topics.sh                   # 1,000 × 10, then 10,000 × 1
# Environment: CASES ("1000x10 10000x1"), SIZE (10240), DURATION (10), WARMUP (3 s before the
# window; 75 starts it once every topic's history of 64 changes is full), THREADS (2),
# DIFF_THREADS (unpoll's default), JSON (1 for JSON lines), BASELINE (another unpoll binary,
# e.g. the previous commit's, measured after this one on each case, in the same run).
source "$(dirname "$0")/lib.sh"
SIZE="${SIZE:-10240}"
build >&2
raise_somaxconn
start_upstream --rate 1 --size "$SIZE"
EXTRA_SERVER="  max_topics: 20000
  max_topics_per_client: 20000
${DIFF_THREADS:+  diff_threads: $DIFF_THREADS}"
for case in ${CASES:-1000x10 10000x1}; do
  topics="${case%x*}"; subs="${case#*x}"
  for binary in "$BIN/unpoll" ${BASELINE:+"$BASELINE"}; do
    echo "== $topics topics × $subs subscribers, $SIZE-byte documents: $binary" >&2
    UNPOLL_BIN="$binary" start_unpoll 1s
    # shellcheck disable=SC2046
    "$BIN/unpoll-bench" subscribe --url "http://$UNPOLL/doc" --n "$((topics * subs))" --topics "$topics" \
      --protocol sse --warmup "${WARMUP:-3}" --duration "${DURATION:-10}" --interval 1 \
      --upstream-stats "http://$UPSTREAM/stats" $(pid_args "$UNPOLL_PID") \
      $(for p in $ORIGIN_PIDS; do printf -- '--upstream-pid %s ' "$p"; done) ${JSON:+--json}
    stop "$UNPOLL_PID"
    sleep 1
  done
done
