#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind (valgrind): unpoll, a BASELINE build and
# the bare pingora proxy, each on one worker thread, serving the same wrk load from the nginx
# origin of benches/proxy.sh. Requests per second and CPU per request move by ±10 % between runs
# on a VM, so a change of a fraction of a microsecond is lost in them; a count of instructions
# moves by well under 1 %, and callgrind names the functions that make the difference.
#   benches/instructions.sh
#   BASELINE=target-base/release/unpoll-1f76fb2 benches/instructions.sh
# Environment: TARGETS ("unpoll bare"), BASELINE (another unpoll binary, counted as "baseline"),
# DURATION (10 s of counted load, after 3 s of warm-up), CONNECTIONS (10), TOP (30 functions per
# target), KEEP (a directory to keep the callgrind files in).
# Needs valgrind (installed from Debian if missing). Under callgrind a server runs about 50 times slower; only
# the counts per request matter. `memcpy` counts one instruction per byte for large copies (its
# `rep movsb`), so its count is the bytes copied.
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

count() { # count NAME COMMAND...: runs COMMAND (a server on $PORT) under callgrind
  local name="$1" pid requests total
  shift
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$name.%p.out" "$@" > "$OUT/$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done
  wrk -t 1 -c "${CONNECTIONS:-10}" -d 3s "http://127.0.0.1:$PORT/plain" > /dev/null
  callgrind_control -i on "$pid" > /dev/null
  requests="$(wrk -t 1 -c "${CONNECTIONS:-10}" -d "${DURATION:-10}s" "http://127.0.0.1:$PORT/plain" | awk '/requests in/ {print $1}')"
  callgrind_control -d "$pid" > /dev/null
  stop_now "$pid"
  local file
  file="$(ls "$OUT/$name".*.out.1)"
  callgrind_annotate "$file" 2>/dev/null > "$OUT/$name.txt"
  total="$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}' "$OUT/$name.txt")"
  echo "$name $requests $total" >> "$OUT/totals.txt"
  printf '%s: %s requests, %.0f instructions per request\n' "$name" "$requests" "$((total / requests))"
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
  PORT="$(free_port)"
  case "$name" in
    unpoll | baseline)
      bin="$BIN/unpoll"
      [ "$name" = baseline ] && bin="$BASELINE"
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
      RUST_LOG=warn count "$name" "$bin" run -c "$WORK/count-$PORT.yaml" --no-watch ;;
    bare)
      count bare "$BIN/unpoll-bare-pingora" --listen "127.0.0.1:$PORT" --upstream "$UPSTREAM" --threads 1 ;;
  esac
done
