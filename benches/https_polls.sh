#!/usr/bin/env bash
# Polls over HTTPS next to plain HTTP, same run: two bench upstreams serving the same
# document, one plain and one HTTPS (a certificate for `localhost` from a CA made here with
# openssl), and one unpoll polling TOPICS topics of each every INTERVAL. The phases alternate
# (plain, HTTPS, plain, ...); each reports polls per second and unpoll's CPU per poll.
#   benches/https_polls.sh
# Environment: TOPICS (200), INTERVAL (50ms), DURATION (15 s per phase), ROUNDS (2),
# THREADS (2: unpoll's threads), SIZE (1024: the document's bytes), RATE (1: changes/s), STAMP (serve:
# every answer is new, so every poll is diffed and sent; change: an ETag, so unchanged polls
# are 304s).
source "$(dirname "$0")/lib.sh"
command -v openssl >/dev/null || { echo "this bench makes its certificates with openssl: apt-get install openssl" >&2; exit 1; }
build >&2
TOPICS="${TOPICS:-200}"

# A CA and a certificate for localhost.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$WORK/ext.cnf"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
  -days 2 -extfile "$WORK/ext.cnf" -out "$WORK/server.pem" 2>/dev/null

upstream_args=(--rate "${RATE:-1}" --size "${SIZE:-1024}" --threads 1 --stamp "${STAMP:-serve}")
start_upstream "${upstream_args[@]}"
PLAIN="$UPSTREAM"
mv "$WORK/upstream.out" "$WORK/plain.out"
start_upstream "${upstream_args[@]}" --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key"
SECURE="$UPSTREAM"

port="$(free_port)"; admin="$(free_port)"
cat > "$WORK/unpoll.yaml" <<YAML
server:
  listen: ["127.0.0.1:$port"]
  admin: "127.0.0.1:$admin"
  threads: ${THREADS:-2}
  max_topics_per_client: 100000
upstreams:
  plain:
    servers: ["$PLAIN"]
    max_concurrent_polls: 1000
  secure:
    servers: ["$SECURE"]
    max_concurrent_polls: 1000
    tls: {sni: localhost, ca: "$WORK/ca.pem"}
routes:
  - {match: "/plain/{id}", upstream: plain, stream: {interval: ${INTERVAL:-50ms}}}
  - {match: "/secure/{id}", upstream: secure, stream: {interval: ${INTERVAL:-50ms}}}
YAML
RUST_LOG=warn "$BIN/unpoll" run -c "$WORK/unpoll.yaml" --no-watch > "$WORK/unpoll.log" 2>&1 &
UNPOLL_PID=$!
PIDS+=("$UNPOLL_PID")
wait_http "127.0.0.1:$port"

# phase NAME ROUTE: TOPICS subscribers, one per topic of ROUTE, held while measuring.
phase() {
  python3 - "$1" "$2" "$port" "$admin" "$UNPOLL_PID" "$TOPICS" "${DURATION:-15}" <<'PY' | tee -a "$WORK/results.txt" >&2
import asyncio, re, sys, time, urllib.request
name, route, port, admin, pid, topics, duration = sys.argv[1:8]
topics, duration = int(topics), float(duration)

def polls():
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
    pattern = r'unpoll_upstream_polls_total\{[^}]*route="/%s/\{id\}"[^}]*\} (\S+)' % route
    return sum(float(v) for v in re.findall(pattern, text))

def cpu():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in seconds

async def subscriber(i, stop):
    r, w = await asyncio.open_connection("127.0.0.1", int(port))
    w.write(f"GET /{route}/{i} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode())
    await w.drain()
    while not stop.is_set():
        try:
            if not await asyncio.wait_for(r.read(65536), 0.5):
                break
        except asyncio.TimeoutError:
            pass
    w.close()

async def main():
    stop = asyncio.Event()
    tasks = [asyncio.create_task(subscriber(i, stop)) for i in range(topics)]
    await asyncio.sleep(3)  # every topic polling
    p0, c0, t0 = polls(), cpu(), time.monotonic()
    await asyncio.sleep(duration)
    p1, c1, t1 = polls(), cpu(), time.monotonic()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    n = p1 - p0
    print(f"{name} {n / (t1 - t0):.0f} {(c1 - c0) / n * 1e6:.1f} {(c1 - c0) / (t1 - t0) * 100:.0f}")

asyncio.run(main())
PY
  sleep 2  # topics linger, then retire
}

for round in $(seq "${ROUNDS:-2}"); do
  if [ $((round % 2)) -eq 1 ]; then phase http plain; phase https secure; else phase https secure; phase http plain; fi
done
grep -c "TLS failed" "$WORK/unpoll.log" >/dev/null && { echo "TLS failures in the run:" >&2; grep "TLS failed" "$WORK/unpoll.log" >&2; }
python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
print("| upstream | polls/s (median) | CPU per poll, µs (median) | unpoll CPU % (median) |")
print("|---|---|---|---|")
for n in ("http", "https"):
    r = [x for x in rows if x[0] == n]
    med = lambda i: statistics.median(float(x[i]) for x in r)
    print(f"| {n} | {med(1):.0f} | {med(2):.1f} | {med(3):.0f} |")
PY
