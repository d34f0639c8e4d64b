#!/usr/bin/env bash
# /metrics side by side with prometheus_client's multiprocess mode, in one session:
#
# - fanin: INSTANCES simulated workers x STREAMS streams (the load generator's counters,
#   up-down counters, gauges and 10-bound histograms, each worker's streams sent once over
#   OTLP/gRPC), then SCRAPES timed GETs of /metrics; then the same GETs each after one
#   worker exported all its streams again (the export not timed), so every metric has
#   changed and is aggregated again.
# - prometheus_client: INSTANCES forked Python processes, each writing the same series
#   (10 counters, 10 livesum gauges, 10 gauges, 10 histograms of 25 label sets each, for
#   1000 streams) to PROMETHEUS_MULTIPROC_DIR; then the multiprocess collector's page
#   (MultiProcessCollector + generate_latest, what a gunicorn /metrics handler runs) timed
#   SCRAPES / 5 times (it is slow).
#
#   benches/scrape.sh
#   INSTANCES=1000 STREAMS=1000 SIDES=fanin benches/scrape.sh     # p99 at 1M streams
#
# Prints the median and p99 of each; only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."

INSTANCES=${INSTANCES:-64}
STREAMS=${STREAMS:-1000}
SCRAPES=${SCRAPES:-100}
SIDES=${SIDES:-fanin prometheus_client}
PROMETHEUS_CLIENT_VERSION=${PROMETHEUS_CLIENT_VERSION:-0.21.1}

work=$(mktemp -d)
fanin_pid=
cleanup() {
    if [ -n "$fanin_pid" ]; then kill -TERM "$fanin_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "building fanin and the load generator (release)..." >&2
cargo build --release --quiet
cargo bench --bench loadgen --no-run --quiet 2>/dev/null
loadgen=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
venv=target/bench-venv
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install --quiet "prometheus_client==$PROMETHEUS_CLIENT_VERSION"
python=$venv/bin/python

echo "fanin $(git rev-parse --short HEAD 2>/dev/null || echo unknown), prometheus_client $PROMETHEUS_CLIENT_VERSION, $(nproc) cores, $INSTANCES x $STREAMS streams"

# timings.py LABEL < one duration in seconds per line: median and p99 in ms
summary() {
    "$python" -c '
import sys, statistics
label = sys.argv[1]
times = sorted(float(line) * 1e3 for line in sys.stdin if line.strip())
p99 = times[max(0, -(-len(times) * 99 // 100) - 1)]
print(f"{label}: {len(times)} scrapes, median {statistics.median(times):.2f} ms, p99 {p99:.2f} ms, max {times[-1]:.2f} ms")
' "$1"
}

if [[ " $SIDES " == *" fanin "* ]]; then
    ./target/release/fanin serve --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
        --query-listen 127.0.0.1:0 > "$work/fanin.out" 2> "$work/fanin.err" &
    fanin_pid=$!
    for _ in $(seq 1 200); do grep -q '^query' "$work/fanin.out" 2>/dev/null && break; sleep 0.05; done
    grpc_addr=$(awk '/^otlp-grpc/ {print $4}' "$work/fanin.out")
    query_addr=$(awk '/^query/ {print $4}' "$work/fanin.out")
    "$loadgen" --protocol grpc --target "$grpc_addr" --instances "$INSTANCES" \
        --streams "$STREAMS" --once 2> "$work/loadgen.err" | grep '^RESULT' >&2
    # GET /metrics SCRAPES times; with "changed", one worker exports again before each.
    scrape() {
        "$python" - "$query_addr" "$SCRAPES" "$1" "$loadgen" "$grpc_addr" "$STREAMS" <<'EOF'
import subprocess, sys, time, urllib.request
address, scrapes, mode, loadgen, grpc, streams = sys.argv[1:]
url = f"http://{address}/metrics"
urllib.request.urlopen(url).read()
for _ in range(int(scrapes)):
    if mode == "changed":
        subprocess.run([loadgen, "--protocol", "grpc", "--target", grpc, "--instances", "1",
                        "--streams", streams, "--once"], check=True, capture_output=True)
    start = time.perf_counter()
    body = urllib.request.urlopen(url).read()
    print(time.perf_counter() - start)
lines = body.count(b"\n")
print(f"fanin page {len(body)} bytes, {lines} lines", file=sys.stderr)
EOF
    }
    scrape unchanged | summary "fanin /metrics, nothing changed since the last scrape"
    scrape changed | summary "fanin /metrics, every metric changed since the last scrape"
    kill -TERM "$fanin_pid"
    wait "$fanin_pid" 2>/dev/null || true
    fanin_pid=
fi

if [[ " $SIDES " == *" prometheus_client "* ]]; then
    mkdir "$work/multiproc"
    PROMETHEUS_MULTIPROC_DIR=$work/multiproc "$python" - "$INSTANCES" "$STREAMS" "$((SCRAPES / 5))" <<'EOF' 2>&1 >"$work/pc.times" | cat >&2
import multiprocessing, sys, time

instances, streams, scrapes = (int(arg) for arg in sys.argv[1:])

def worker(index):
    # Imported after fork, as a worker would: its values go to files of its own pid.
    from prometheus_client import Counter, Gauge, Histogram
    routes = [f"/api/v1/items/{n}" for n in range(5)]
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    labels = [(route, method) for route in routes for method in methods]
    bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    made = 0
    metric = 0
    while made < streams:
        count = min(len(labels), streams - made)
        name = f"loadgen_metric_{metric}"
        kind = metric % 4
        if kind == 0:
            family = Counter(name, "counter", ["http_route", "http_method", "http_status_code"])
            for route, method in labels[:count]:
                family.labels(route, method, "200").inc(10)
        elif kind == 1:
            family = Gauge(name, "up-down counter", ["http_route", "http_method"], multiprocess_mode="livesum")
            for n, (route, method) in enumerate(labels[:count]):
                family.labels(route, method).set(n % 7)
        elif kind == 2:
            family = Gauge(name, "gauge", ["http_route", "http_method"], multiprocess_mode="livesum")
            for n, (route, method) in enumerate(labels[:count]):
                family.labels(route, method).set(0.5 + n)
        else:
            family = Histogram(name, "histogram", ["http_route", "http_method"], buckets=bounds)
            for route, method in labels[:count]:
                family.labels(route, method).observe(0.3)
        made += count
        metric += 1

if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    for start in range(0, instances, 16):
        processes = [context.Process(target=worker, args=(n,)) for n in range(start, min(instances, start + 16))]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
            assert process.exitcode == 0, process.exitcode
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    page = b""
    for _ in range(scrapes):
        start = time.perf_counter()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        page = generate_latest(registry)
        print(time.perf_counter() - start)
    lines = page.count(b"\n")
    print(f"prometheus_client page {len(page)} bytes, {lines} lines", file=sys.stderr)
EOF
    summary "prometheus_client multiprocess collect" < "$work/pc.times"
fi
