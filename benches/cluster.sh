#!/usr/bin/env bash
# Fan-out through a cluster: the same workload against one unpoll alone and against three
# unpoll nodes sharing one redis-server (the subscribers split evenly over them), in one run,
# alternating; then a table with a column per process (`single`, `node-a`, `node-b`,
# `node-c`) and the redis-server's CPU.
#   benches/cluster.sh             # 6,000 SSE subscribers, 1 KB document changing once a second
#   N=3000 PROTOCOL=ws benches/cluster.sh
# Latency is receive time minus the time the document left the upstream, as in compare.sh: for
# a follower node it includes the trip through Redis. CPU per delivery is each node's own (its
# subscribers' deliveries over its CPU). Environment: N (6000), PROTOCOL (sse), ROUNDS (1),
# RATE (1), SIZE (1024), DURATION (10), WARMUP (2), THREADS (2 per node).
source "$(dirname "$0")/lib.sh"
N="${N:-6000}"; RATE="${RATE:-1}"; SIZE="${SIZE:-1024}"; PROTOCOL="${PROTOCOL:-sse}"
INTERVAL_MS="$(python3 -c "print(round(1000/float('$RATE')))")"
INTERVAL="$(python3 -c "print($INTERVAL_MS/1000)")"
build >&2
raise_somaxconn
start_upstream --rate "$RATE" --size "$SIZE"
RESULTS="$WORK/results.jsonl"
# Every node is sent the same Host, as through one load balancer (a topic includes it).
common=(--protocol "$PROTOCOL" --duration "${DURATION:-10}" --warmup "${WARMUP:-2}" --interval "$INTERVAL" --json --host api.example.com)

label() { # label NAME: the report's `server` becomes NAME (the table's column)
  python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r["server"]=sys.argv[1]; print(json.dumps(r))' "$1"
}

cpu_seconds() { # cpu_seconds PID: user + system CPU so far
  python3 -c 'import os,sys; f=open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")",1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK"))' "$1"
}

run_single() {
  start_unpoll "${INTERVAL_MS}ms"
  "$BIN/unpoll-bench" subscribe --url "http://$UNPOLL/doc" --server unpoll --n "$N" "${common[@]}" \
    --upstream-stats "http://$UPSTREAM/stats" --pid "$UNPOLL_PID" | label single | tee -a "$RESULTS"
  stop "$UNPOLL_PID"
}

run_cluster() {
  local redis_port redis_pid nodes=() pids=() name i cpu0 cpu1
  redis_port="$(free_port)"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no > "$WORK/redis.log" 2>&1 &
  redis_pid=$!
  PIDS+=("$redis_pid")
  wait_http "127.0.0.1:$redis_port"
  # The cluster's secret, the same for every node.
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/cluster.secret"
  for name in a b c; do
    EXTRA_YAML="cluster: {redis: \"redis://127.0.0.1:$redis_port/0\", node: node-$name, secret_file: \"$WORK/cluster.secret\"}" start_unpoll "${INTERVAL_MS}ms"
    nodes+=("$UNPOLL"); pids+=("$UNPOLL_PID")
  done
  cpu0="$(cpu_seconds "$redis_pid")"
  for i in 0 1 2; do
    name="node-$(echo abc | cut -c$((i + 1)))"
    # The first node's load tool counts the upstream's GETs, for the whole cluster.
    "$BIN/unpoll-bench" subscribe --url "http://${nodes[$i]}/doc" --server unpoll --n "$((N / 3))" "${common[@]}" \
      $([ "$i" -eq 0 ] && echo --upstream-stats "http://$UPSTREAM/stats") --pid "${pids[$i]}" \
      | label "$name" > "$WORK/$name.json" &
  done
  wait_loaders
  cpu1="$(cpu_seconds "$redis_pid")"
  cat "$WORK"/node-*.json | tee -a "$RESULTS"
  echo "redis-server CPU during the cluster run (subscribe, warm-up, measurement): $(python3 -c "print(round($cpu1 - $cpu0, 2))") s" | tee -a "$WORK/redis-cpu.txt"
  for p in "${pids[@]}"; do stop "$p"; done
  stop "$redis_pid"
}

wait_loaders() {
  local p
  for p in $(jobs -p); do
    case " ${PIDS[*]} " in *" $p "*) ;; *) wait "$p" ;; esac
  done
}

for round in $(seq "${ROUNDS:-1}"); do
  if [ $((round % 2)) -eq 1 ]; then run_single; run_cluster; else run_cluster; run_single; fi
done
python3 "$ROOT/benches/table.py" "$RESULTS"
cat "$WORK/redis-cpu.txt"
