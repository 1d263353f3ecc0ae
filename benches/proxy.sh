#!/usr/bin/env bash
# Plain reverse proxying, measured with wrk: the bench upstream directly, through unpoll, and
# through nginx (keep-alive upstream connections), A/B alternating, same upstream, same run.
#   benches/proxy.sh
# Environment: CONNECTIONS (50), DURATION (10), ROUNDS (3), THREADS (2: proxy threads / nginx
# workers), WRK_THREADS (1), PATH_ (/plain: a fixed 1 KB JSON body).
source "$(dirname "$0")/lib.sh"
command -v wrk >/dev/null && command -v nginx >/dev/null || "$ROOT/benches/deps.sh"
build >&2
start_upstream --rate 0 --threads 1
URL_PATH="${PATH_:-/plain}"
start_unpoll 1s
start_nginx
RESULTS="$WORK/wrk.txt"

measure() { # measure NAME HOSTPORT
  local out rps p99
  out="$(wrk -t "${WRK_THREADS:-1}" -c "${CONNECTIONS:-50}" -d "${DURATION:-10}s" --latency "http://$2$URL_PATH")"
  if echo "$out" | grep -q "Non-2xx"; then echo "$1: errors in the run" >&2; echo "$out" >&2; fi
  rps="$(echo "$out" | awk '/^Requests\/sec/ {print $2}')"
  p99="$(echo "$out" | awk '$1 == "99%" {print $2}')"
  echo "$1 $rps $p99" | tee -a "$RESULTS" >&2
}

for round in $(seq "${ROUNDS:-3}"); do
  if [ $((round % 2)) -eq 1 ]; then
    measure direct "$UPSTREAM"; measure unpoll "$UNPOLL"; measure nginx "$NGINX"
  else
    measure nginx "$NGINX"; measure unpoll "$UNPOLL"; measure direct "$UPSTREAM"
  fi
done
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
med = {n: statistics.median(float(r[1]) for r in rows if r[0] == n) for n in ("direct", "unpoll", "nginx")}
p99 = {n: [r[2] for r in rows if r[0] == n] for n in med}
print("| | requests/s (median) | p99 latency per run | vs nginx |")
print("|---|---|---|---|")
for n in ("direct", "unpoll", "nginx"):
    print(f"| {n} | {med[n]:.0f} | {', '.join(p99[n])} | {med[n] / med['nginx']:.2f} |")
PY
