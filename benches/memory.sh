#!/usr/bin/env bash
# What a topic's history costs: a SIZE-byte document in which one item changes RATE times a
# second, polled as often, history 64, one SSE and one WebSocket subscriber. Prints the
# proxy's resident memory once the first versions are in (the document itself: its body, parsed
# tree, snapshot and encodings) and again after VERSIONS versions (the history full, and the
# subscriber queues' ring of 256 events passed).
#   benches/memory.sh
# Environment: SIZE (1048576), RATE (5), VERSIONS (120).
source "$(dirname "$0")/lib.sh"
SIZE="${SIZE:-1048576}"; RATE="${RATE:-5}"; VERSIONS="${VERSIONS:-120}"
build >&2
start_upstream --rate "$RATE" --size "$SIZE"
INTERVAL_MS="$(python3 -c "print(round(1000/float('$RATE')))")"
start_unpoll "${INTERVAL_MS}ms"
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$UNPOLL_PID/status"; }
curl -sN -H 'Accept: text/event-stream' "http://$UNPOLL/doc" > /dev/null &
PIDS+=($!)
"$BIN/unpoll-bench" subscribe --url "http://$UNPOLL/doc" --n 1 --protocol ws --warmup 0 \
  --duration "$(python3 -c "print(($VERSIONS + 5) / $RATE)")" --json > "$WORK/ws.json" &
WS=$!
sleep "$(python3 -c "print(5 / $RATE + 1)")"
first="$(rss)"
wait "$WS"
last="$(rss)"
history="$(curl -s "http://${UNPOLL_ADMIN}/metrics" | awk '/^unpoll_history_bytes/ {print $2}')"
echo "document $SIZE bytes, $VERSIONS versions: RSS $first KiB after 5 versions, $last KiB after; grew $((last - first)) KiB; history holds ${history:-?} bytes"
