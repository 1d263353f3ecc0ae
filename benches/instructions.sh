#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind (valgrind): unpoll, a BASELINE build and
# the bare pingora proxy, each on one worker thread, serving the same wrk load from the nginx
# origin of benches/proxy.sh. Requests per second and CPU per request move by ±10 % between runs
# on a VM, so a change of a fraction of a microsecond is lost in them; a count of instructions
# moves by well under 1 %, and callgrind names the functions that make the difference.
# `polls` (and `polls-baseline` with BASELINE) count instructions per poll instead: POLL_TOPICS
# topics of one SSE subscriber each, a 10 KB document with one item changed each second (the
# many-topics case of benches/topics.sh, small enough to run under callgrind), divided by the
# upstream GETs made while counting; each poll's change is delivered to its subscriber.
#   benches/instructions.sh
#   BASELINE=target-base/release/unpoll-1f76fb2 benches/instructions.sh
#   TARGETS=polls BASELINE=... benches/instructions.sh
# Environment: TARGETS ("unpoll bare"; also "polls"), BASELINE (another unpoll binary, counted as
# "baseline", or "polls-baseline" after "polls"), DURATION (10 s of counted load, after 3 s of
# warm-up), CONNECTIONS (10), POLL_TOPICS (100), TOP (30 functions per target), KEEP (a directory
# to keep the callgrind files in).
# Needs valgrind (installed from Debian if missing). Under callgrind a server runs about 50 times
# slower; only the counts per request matter. `memcpy` counts one instruction per byte for large
# copies (its `rep movsb`), so its count is the bytes copied.
source "$(dirname "$0")/lib.sh"
command -v wrk >/dev/null && command -v nginx >/dev/null || "$ROOT/benches/deps.sh"
if ! command -v valgrind >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind >/dev/null
fi
build >&2
(cd "$ROOT" && cargo build --release --locked --features bench-tools --bin unpoll-bare-pingora) >&2
OUT="${KEEP:-$WORK/callgrind}"
mkdir -p "$OUT"
start_origin
echo "origin: ${ORIGIN:-nginx} at $UPSTREAM" >&2

# The load of proxied requests: warms, then prints how many requests were served while counting.
requests_load() { # requests_load PID
  wrk -t 1 -c "${CONNECTIONS:-10}" -d 3s "http://127.0.0.1:$PORT/plain" > /dev/null
  callgrind_control -i on "$1" > /dev/null
  wrk -t 1 -c "${CONNECTIONS:-10}" -d "${DURATION:-10}s" "http://127.0.0.1:$PORT/plain" | awk '/requests in/ {print $1}'
}

upstream_gets() { curl -s "http://$POLL_UPSTREAM/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["gets"])'; }

# The load of polls: one subscriber per topic for the whole count; prints the GETs made meanwhile.
polls_load() { # polls_load PID
  local topics="${POLL_TOPICS:-100}" reader before after
  "$BIN/unpoll-bench" subscribe --url "http://127.0.0.1:$PORT/doc" --n "$topics" --topics "$topics" \
    --protocol sse --subscribe-timeout 120 --warmup 600 --duration 1 --interval 1 > /dev/null 2>&1 &
  reader=$!
  PIDS+=("$reader")
  sleep 15 # subscribed, every topic polled a few times
  before="$(upstream_gets)"
  callgrind_control -i on "$1" > /dev/null
  sleep "${DURATION:-10}"
  after="$(upstream_gets)"
  kill "$reader" 2>/dev/null || true
  echo "$((after - before))"
}

count() { # count NAME LOAD COMMAND...: runs COMMAND (a server on $PORT) under callgrind
  local name="$1" load="$2" pid requests total
  shift 2
  rm -f "$OUT/$name".*.out*
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$name.%p.out" "$@" > "$OUT/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done
  requests="$("$load" "$pid")"
  callgrind_control -d "$pid" > /dev/null
  stop_now "$pid"
  local file
  file="$(ls "$OUT/$name".*.out.1)"
  # Functions only (no source), so that two targets' files can be compared line by line.
  callgrind_annotate --auto=no --threshold=100 "$file" 2>/dev/null > "$OUT/$name.txt"
  total="$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}' "$OUT/$name.txt")"
  echo "$name $requests $total" >> "$OUT/totals.txt"
  printf '%s: %s served, %.0f instructions each\n' "$name" "$requests" "$((total / requests))"
  awk -v r="$requests" -v n="${TOP:-30}" '
    /^-+$/ {dashes++; next}
    dashes >= 6 && $1 ~ /^[0-9,]+$/ && shown < n {
      c = $1; gsub(",", "", c); $1 = ""; $2 = ""; sub(/^ +/, "")
      sub(/ \[.*\]$/, ""); sub(/^.*:/, "")
      printf "  %8.0f  %s\n", c / r, substr($0, 1, 140); shown++
    }' "$OUT/$name.txt"
}

: > "$OUT/totals.txt"
for name in ${TARGETS:-unpoll bare}${BASELINE:+ baseline}; do
  [ "$name" = baseline ] && [[ " ${TARGETS:-} " == *" polls "* ]] && name=polls-baseline
  PORT="$(free_port)"
  bin="$BIN/unpoll"
  case "$name" in *baseline) bin="$BASELINE" ;; esac
  case "$name" in
    unpoll | baseline)
      cat > "$WORK/count-$PORT.yaml" <<YAML
server:
  listen: ["127.0.0.1:$PORT"]
  threads: 1
upstreams:
  origin:
    servers: ["$UPSTREAM"]
routes:
  - match: /*
    upstream: origin
YAML
      RUST_LOG=warn count "$name" requests_load "$bin" run -c "$WORK/count-$PORT.yaml" --no-watch ;;
    polls | polls-baseline)
      if [ -z "${POLL_UPSTREAM:-}" ]; then
        "$BIN/unpoll-bench" upstream --rate 1 --size 10240 > "$WORK/poll-upstream.out" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 100); do POLL_UPSTREAM="$(head -1 "$WORK/poll-upstream.out" 2>/dev/null || true)"; [ -n "$POLL_UPSTREAM" ] && break; sleep 0.05; done
      fi
      cat > "$WORK/count-$PORT.yaml" <<YAML
server:
  listen: ["127.0.0.1:$PORT"]
  threads: 1
  max_topics_per_client: 20000
upstreams:
  bench:
    servers: ["$POLL_UPSTREAM"]
routes:
  - match: /doc
    upstream: bench
    stream:
      interval: 1s
YAML
      RUST_LOG=warn count "$name" polls_load "$bin" run -c "$WORK/count-$PORT.yaml" --no-watch ;;
    bare)
      count bare requests_load "$BIN/unpoll-bare-pingora" --listen "127.0.0.1:$PORT" --upstream "$UPSTREAM" --threads 1 ;;
  esac
done
