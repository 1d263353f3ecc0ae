#!/usr/bin/env bash
# A large document beside a small one: a SIZE-byte document (1 MiB) in which CHANGED of the
# rows (1 %) change every second, read by N_LARGE SSE subscribers, and a 1 KB document changing
# every second read by N_SMALL subscribers, both polled once a second by one unpoll. Three
# phases: the small topic alone, the large one alone (CPU per change, delivery latency), then
# both at once (is the small topic's latency unaffected?).
#   benches/large.sh
# Environment: SIZE (1048576), CHANGED (0.01), N_LARGE (1000), N_SMALL (1000), DURATION (15),
# THREADS (2), SETTLE (12: seconds between the large topic's subscribers and the small one's in
# the third phase).
source "$(dirname "$0")/lib.sh"
SIZE="${SIZE:-1048576}"; DURATION="${DURATION:-15}"; SETTLE="${SETTLE:-12}"
build >&2
raise_somaxconn
start_upstream --rate 1 --size 1024
SMALL="$UPSTREAM"
start_upstream --rate 1 --size "$SIZE" --changed-fraction "${CHANGED:-0.01}"
LARGE="$UPSTREAM"; LARGE_PIDS="$ORIGIN_PIDS"
EXTRA_UPSTREAMS="  small:
    servers: [\"$SMALL\"]"
EXTRA_ROUTES="  - match: /small
    upstream: small
    stream:
      interval: 1s
      max_subscribers: 20000"
start_unpoll 1s

# subscribers PATH N NAME [--json]: N SSE subscribers of PATH, measured for DURATION (or
# FOR seconds).
subscribers() {
  # shellcheck disable=SC2046
  "$BIN/unpoll-bench" subscribe --url "http://$UNPOLL/$1" --n "$2" --protocol sse --warmup 3 \
    --duration "${FOR:-$DURATION}" --interval 1 $(pid_args "$UNPOLL_PID") "${@:4}" > "$WORK/$3.out"
}
report() { echo "== $1"; cat "$WORK/$1.out"; }

subscribers small "${N_SMALL:-1000}" small-alone
report small-alone
subscribers doc "${N_LARGE:-1000}" large-alone --upstream-stats "http://$LARGE/stats" \
  $(for p in $LARGE_PIDS; do printf -- '--upstream-pid %s ' "$p"; done)
report large-alone
python3 - "$WORK/large-alone.out" <<'PY' || true
import re, sys
text = open(sys.argv[1]).read()
cpu = float(re.search(r"\(([0-9.]+) of a core\)", text.split("server CPU:")[1]).group(1))
print(f"large alone: unpoll used {cpu:.3f} of a core for one change a second: {cpu * 1000:.0f} ms of CPU per change, its deliveries included")
PY
# The small topic is measured once the large one's subscribers are in (1,000 snapshots of a
# MiB take several seconds), within the large one's window.
FOR=$((DURATION + SETTLE)) subscribers doc "${N_LARGE:-1000}" large-together &
large=$!
sleep "$SETTLE"
subscribers small "${N_SMALL:-1000}" small-together
wait "$large"
report large-together
report small-together
