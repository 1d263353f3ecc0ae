#!/usr/bin/env bash
# The same fan-out workload against unpoll and against nginx + nchan, in one run, A/B
# alternating, then a table of both with the ratios (unpoll / nchan).
#   benches/compare.sh              # 10,000 SSE subscribers, 1 KB document changing once a second
#   PROTOCOL=ws ROUNDS=3 benches/compare.sh
# unpoll polls the bench upstream every second; nchan gets each change by POST from a second
# bench upstream. Latency is receive time minus the time the document left the upstream (the
# GET answer for unpoll, the POST for nchan). Environment: N (10000), PROTOCOL (sse), ROUNDS (2),
# RATE (1), SIZE (1024), DURATION (10), WARMUP (2), THREADS (2: proxy threads / nginx workers),
# FORMAT (unpoll's format; FORMAT=snapshot sends the whole document, as nchan does),
# BASELINE (another unpoll binary, e.g. the previous commit's, measured in the same rotation
# as "unpoll-baseline").
source "$(dirname "$0")/lib.sh"
N="${N:-10000}"; RATE="${RATE:-1}"; SIZE="${SIZE:-1024}"; PROTOCOL="${PROTOCOL:-sse}"
INTERVAL_MS="$(python3 -c "print(round(1000/float('$RATE')))")"
INTERVAL="$(python3 -c "print($INTERVAL_MS/1000)")"
command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || "$ROOT/benches/deps.sh"
build >&2
raise_somaxconn
start_upstream --rate "$RATE" --size "$SIZE"
POLLED="$UPSTREAM"
RESULTS="$WORK/results.jsonl"
common=(--n "$N" --protocol "$PROTOCOL" --duration "${DURATION:-10}" --warmup "${WARMUP:-2}" --interval "$INTERVAL" --json)

run_unpoll() {
  UPSTREAM="$POLLED" UNPOLL_BIN="${1:-$BIN/unpoll}" start_unpoll "${INTERVAL_MS}ms"
  # shellcheck disable=SC2046
  "$BIN/unpoll-bench" subscribe --url "http://$UNPOLL/doc" --server unpoll "${common[@]}" \
    --upstream-stats "http://$POLLED/stats" $(pid_args "$UNPOLL_PID") ${FORMAT:+--format "$FORMAT"} \
    | sed "s/\"server\":\"unpoll\"/\"server\":\"${2:-unpoll}\"/" | tee -a "$RESULTS"
  stop "$UNPOLL_PID"
}

run_nchan() {
  UPSTREAM="$POLLED" start_nginx
  "$BIN/unpoll-bench" upstream --rate "$RATE" --size "$SIZE" --publish "http://$NGINX/pub" > /dev/null 2> "$WORK/publisher.err" &
  local publisher=$!
  sleep 0.5 # the publisher's first document is in the channel before anyone subscribes
  # shellcheck disable=SC2046
  "$BIN/unpoll-bench" subscribe --url "http://$NGINX/sub" --server nchan "${common[@]}" \
    $(pid_args "$NGINX_PIDS") | tee -a "$RESULTS"
  stop "$publisher"
  stop_nginx
}

for round in $(seq "${ROUNDS:-2}"); do
  if [ -n "${BASELINE:-}" ]; then
    # Each binary goes first in one round of two.
    if [ $((round % 2)) -eq 1 ]; then run_unpoll; run_nchan; run_unpoll "$BASELINE" unpoll-baseline
    else run_unpoll "$BASELINE" unpoll-baseline; run_nchan; run_unpoll; fi
  elif [ $((round % 2)) -eq 1 ]; then run_unpoll; run_nchan; else run_nchan; run_unpoll; fi
done
python3 "$ROOT/benches/table.py" "$RESULTS"
