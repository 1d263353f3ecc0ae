#!/usr/bin/env bash
# Write-to-push latency: N SSE subscribers of /doc, polled every INTERVAL; the document changes
# by a PATCH (the bench upstream stamps each change with the time the write arrived, which is
# what every subscriber's latency is measured from). Two phases in one run, each with its own
# subscribers:
#   through: PATCHes through unpoll, WRITES_THROUGH of them about a second apart (each write
#            refreshes /doc at once);
#   direct:  PATCHes straight to the upstream, WRITES_DIRECT of them more than an interval
#            apart (each change waits for the next poll: the latency polling alone gives).
# Then the upstream GETs each phase cost, against the interval's own.
#   benches/refresh.sh                  # 1,000 subscribers, a 10 s interval
# Environment: N (1000), INTERVAL (10, seconds), WRITES_THROUGH (30), WRITES_DIRECT (8),
# SIZE (1024), THREADS (2), JSON (1 for JSON lines).
source "$(dirname "$0")/lib.sh"
N="${N:-1000}"; INTERVAL="${INTERVAL:-10}"
build >&2
raise_somaxconn
start_upstream --rate 0 --size "${SIZE:-1024}" --stamp change
start_unpoll "${INTERVAL}s"

gets() { curl -s "http://$UPSTREAM/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["gets"])'; }

# phase NAME URL WRITES MIN MAX: subscribers for the phase, and WRITES PATCHes of URL, MIN to
# MAX seconds apart (uniformly at random, so that writes fall anywhere in the poll interval).
phase() {
  local name="$1" url="$2" writes="$3" min="$4" max="$5"
  local gaps duration before after
  gaps="$(python3 -c "import random; print(' '.join(f'{random.uniform($min, $max):.3f}' for _ in range($writes)))")"
  duration="$(python3 -c "print(int(sum(float(g) for g in '$gaps'.split()) + $INTERVAL + 3))")"
  echo "== $name: $N subscribers, $writes writes, measured for $duration s" >&2
  # shellcheck disable=SC2046
  "$BIN/unpoll-bench" subscribe --url "http://$UNPOLL/doc" --n "$N" --protocol sse \
    --duration "$duration" --warmup 3 --interval "$INTERVAL" $(pid_args "$UNPOLL_PID") ${JSON:+--json} \
    > "$WORK/$name.out" &
  local reader=$!
  sleep 3.5
  before="$(gets)"
  for gap in $gaps; do
    sleep "$gap"
    curl -s -o /dev/null -X PATCH "$url"
  done
  wait "$reader"
  after="$(gets)"
  cat "$WORK/$name.out"
  python3 -c "
gets = $after - $before
regular = $duration / $INTERVAL
print(f'$name: {gets} upstream GETs for $writes writes over {$duration} s ({regular:.1f} on the interval alone): '
      f'{max(gets - regular, 0) / $writes:.2f} extra per write')"
}

phase through "http://$UNPOLL/doc" "${WRITES_THROUGH:-30}" 0.5 1.5
phase direct "http://$UPSTREAM/doc" "${WRITES_DIRECT:-8}" "$(python3 -c "print($INTERVAL * 1.05)")" "$(python3 -c "print($INTERVAL * 1.3)")"
