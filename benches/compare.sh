#!/usr/bin/env bash
# Side by side: the same OTLP load against fanin and Rotel (a Rust OpenTelemetry collector,
# run with its blackhole exporter), alternating, a fresh process per run, in one session.
# Then the same unpaced (overload), then fanin's memory per stored stream.
#
#   benches/compare.sh                 # everything, defaults below
#   RATE=250000 ROUNDS=3 benches/compare.sh ingest
#   COMPRESS=per-request benches/compare.sh ingest   # gzip inside each timed request
#
# Sections: ingest (paced; points per CPU-second of the target), overload (unpaced), memory.
# Rotel only receives and drops; fanin also aggregates. Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-500000}            # offered data points per second
DURATION=${DURATION:-15}        # seconds per run
ROUNDS=${ROUNDS:-2}             # alternating rounds per configuration
INSTANCES=${INSTANCES:-64}
STREAMS=${STREAMS:-500}
POINTS_PER_REQUEST=${POINTS_PER_REQUEST:-1000}
CONNECTIONS=${CONNECTIONS:-8}
ROTEL_VERSION=${ROTEL_VERSION:-0.0.1a15}
# gzip bodies: compressed before the clock starts (ahead), or by the generator inside each
# request's latency (per-request), which also puts the compression on the shared cores.
COMPRESS=${COMPRESS:-ahead}
SECTIONS=${*:-ingest overload memory}

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "building fanin and the load generator (release)..." >&2
cargo build --release --quiet
cargo bench --bench loadgen --no-run --quiet 2>/dev/null
loadgen=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
venv=target/bench-venv
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install --quiet "rotel==$ROTEL_VERSION"
rotel=$("$venv/bin/python" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')

wait_port() { # host:port
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on $1" >&2
    return 1
}

# start_target NAME -> sets target_pid, grpc_addr, http_addr
start_target() {
    case "$1" in
        fanin)
            ./target/release/fanin serve --grpc-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
                --query-listen 127.0.0.1:0 > "$work/fanin.out" 2> "$work/fanin.err" &
            target_pid=$!
            for _ in $(seq 1 200); do grep -q '^query' "$work/fanin.out" 2>/dev/null && break; sleep 0.05; done
            grpc_addr=$(awk '/^otlp-grpc/ {print $4}' "$work/fanin.out")
            http_addr=$(awk '/^otlp-http/ {print $4}' "$work/fanin.out")
            ;;
        rotel)
            grpc_addr=127.0.0.1:24317
            http_addr=127.0.0.1:24318
            "$rotel" start --otlp-grpc-endpoint "$grpc_addr" --otlp-http-endpoint "$http_addr" \
                --exporter blackhole --pid-file "$work/rotel.pid" > "$work/rotel.out" 2>&1 &
            target_pid=$!
            wait_port "$grpc_addr"
            wait_port "$http_addr"
            ;;
    esac
    pids+=("$target_pid")
}

stop_target() {
    kill -TERM "$target_pid" 2>/dev/null || true
    wait "$target_pid" 2>/dev/null || true
}

# run NAME PROTOCOL GZIP(yes|no) RATE [extra loadgen args] -> prints "NAME RESULT ..."
run() {
    local name=$1 protocol=$2 gzip=$3 rate=$4
    shift 4
    start_target "$name"
    local target=$grpc_addr
    if [ "$protocol" = http ]; then target=$http_addr; fi
    local flags=()
    if [ "$gzip" = yes ]; then flags+=(--gzip); fi
    if [ "$gzip" = yes ] && [ "$COMPRESS" = per-request ]; then flags+=(--compress-per-request); fi
    local result
    result=$("$loadgen" --protocol "$protocol" --target "$target" --pid "$target_pid" \
        --instances "$INSTANCES" --streams "$STREAMS" --points-per-request "$POINTS_PER_REQUEST" \
        --connections "$CONNECTIONS" --rate "$rate" --duration "$DURATION" "${flags[@]}" "$@" \
        2> "$work/loadgen.err" | grep '^RESULT')
    stop_target
    echo "$name $result"
}

# field KEY < lines
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

echo "fanin $(git rev-parse --short HEAD 2>/dev/null || echo unknown), rotel $ROTEL_VERSION, $(nproc) cores"

if [[ " $SECTIONS " == *" ingest "* ]]; then
    echo
    echo "== ingest: $INSTANCES instances x $STREAMS streams, $POINTS_PER_REQUEST points/request, $CONNECTIONS connections, paced at $RATE points/s, ${DURATION}s per run, gzip compressed $COMPRESS"
    : > "$work/ingest"
    for round in $(seq 1 "$ROUNDS"); do
        for config in "grpc no" "grpc yes" "http no" "http yes"; do
            set -- $config
            # Alternate which target goes first, so drift in the machine hits both alike.
            if [ $((round % 2)) -eq 1 ]; then order="fanin rotel"; else order="rotel fanin"; fi
            for name in $order; do
                line=$(run "$name" "$1" "$2" "$RATE")
                echo "$1 gzip=$2 round=$round $line" | tee -a "$work/ingest" >&2
            done
        done
    done
    printf '\n%-6s %-5s | %14s %14s %6s | %9s %9s | %9s %9s\n' protocol gzip \
        "fanin pts/cpu-s" "rotel pts/cpu-s" ratio "fanin p99" "rotel p99" "fanin pts/s" "rotel pts/s"
    for config in "grpc no" "grpc yes" "http no" "http yes"; do
        set -- $config
        mean() { grep "^$1 gzip=$2 .* $3 RESULT" "$work/ingest" | field "$4" | awk '{ s += $1; n++ } END { if (n) printf "%.0f", s / n; else printf "nan" }'; }
        meanf() { grep "^$1 gzip=$2 .* $3 RESULT" "$work/ingest" | field "$4" | awk '{ s += $1; n++ } END { if (n) printf "%.2f", s / n; else printf "nan" }'; }
        f=$(mean "$1" "$2" fanin points_per_cpu_s)
        r=$(mean "$1" "$2" rotel points_per_cpu_s)
        printf '%-8s %-5s | %14s %14s %6s | %7sms %7sms | %9s %9s\n' "$1" "$2" "$f" "$r" \
            "$(awk -v f="$f" -v r="$r" 'BEGIN { printf "%.2f", f / r }')" \
            "$(meanf "$1" "$2" fanin p99_ms)" "$(meanf "$1" "$2" rotel p99_ms)" \
            "$(mean "$1" "$2" fanin points_per_s)" "$(mean "$1" "$2" rotel points_per_s)"
    done
fi

if [[ " $SECTIONS " == *" overload "* ]]; then
    echo
    echo "== overload: unpaced, ${DURATION}s per run (does the receiver push back, does memory grow?)"
    for protocol in grpc http; do
        for name in fanin rotel; do
            line=$(run "$name" "$protocol" no 0)
            printf '%-5s %-5s points/s=%s p99_ms=%s errors=%s peak_rss_mib=%s cpu_s=%s\n' "$protocol" "$name" \
                "$(echo "$line" | field points_per_s)" "$(echo "$line" | field p99_ms)" \
                "$(echo "$line" | field errors)" "$(echo "$line" | field target_peak_rss_mib)" \
                "$(echo "$line" | field target_cpu_s)"
        done
    done
fi

if [[ " $SECTIONS " == *" memory "* ]]; then
    echo
    echo "== memory: fanin resident memory per stored stream (each instance's streams sent once)"
    for instances in 200 2000; do
        streams=$((instances * STREAMS))
        line=$(INSTANCES=$instances run fanin grpc no 0 --once)
        before=$(echo "$line" | field target_rss_before_mib)
        after=$(echo "$line" | field target_rss_mib)
        accepted=$(echo "$line" | field points)
        printf 'streams=%-8s accepted=%-8s rss_before_mib=%-7s rss_after_mib=%-8s bytes_per_stream=%s\n' \
            "$streams" "$accepted" "$before" "$after" \
            "$(awk -v a="$after" -v b="$before" -v n="$streams" 'BEGIN { printf "%.0f", (a - b) * 1048576 / n }')"
    done
fi
