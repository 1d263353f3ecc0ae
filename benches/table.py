"""Prints the medians of benchmark reports (JSON lines from unpoll-bench) per server, with the
ratio unpoll / nchan when both are present."""
import json
import statistics
import sys

ROWS = [
    ("subscribed", "subscribed", "{:.0f}"),
    ("subscribe time for N (s)", "subscribe_s", "{:.3f}"),
    ("deliveries per second", "deliveries_per_s", "{:.0f}"),
    ("lost / out of order", None, None),
    ("latency p50 (ms)", "latency_ms.p50", "{:.1f}"),
    ("latency p99 (ms)", "latency_ms.p99", "{:.1f}"),
    ("latency max (ms)", "latency_ms.max", "{:.1f}"),
    ("server CPU per delivery (µs)", "server_cpu_us_per_delivery", "{:.2f}"),
    ("server memory per subscriber (KiB)", "server_mem_kib_per_subscriber", "{:.2f}"),
    ("upstream GETs per interval", "upstream_gets_per_interval", "{:.2f}"),
    ("load tool CPU (share of a core)", "load_tool_cpu_share", "{:.3f}"),
]


def get(report, path):
    value = report
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def main(path):
    reports = [json.loads(line) for line in open(path) if line.startswith("{")]
    servers = []
    for r in reports:
        if r["server"] not in servers:
            servers.append(r["server"])
    runs = {s: [r for r in reports if r["server"] == s] for s in servers}
    first = reports[0]
    print(f"{first['protocol']}, {first['subscribers']} subscribers, {len(runs[servers[0]])} run(s) each; medians\n")
    header = "| | " + " | ".join(servers) + (" | unpoll / nchan |" if len(servers) == 2 else " |")
    print(header)
    print("|---" * (len(servers) + 1 + (len(servers) == 2)) + "|")
    for label, key, fmt in ROWS:
        cells, values = [], []
        for s in servers:
            if key is None:
                lost = sum(r["lost"] for r in runs[s])
                ooo = sum(r["out_of_order"] for r in runs[s])
                cells.append(f"{lost} / {ooo}")
                values.append(None)
                continue
            vals = [get(r, key) for r in runs[s] if get(r, key) is not None]
            v = statistics.median(vals) if vals else None
            values.append(v)
            cells.append(fmt.format(v) if v is not None else "–")
        row = f"| {label} | " + " | ".join(cells)
        if len(servers) == 2:
            a, b = values[servers.index("unpoll")] if "unpoll" in servers else None, values[servers.index("nchan")] if "nchan" in servers else None
            row += " | " + (f"{a / b:.2f}" if a is not None and b not in (None, 0) else "–")
        print(row + " |")


main(sys.argv[1])
