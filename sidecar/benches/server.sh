#!/usr/bin/env bash
# The server benchmark (issue: `gatehouse run` against `wasmtime serve`),
# run by `./dev bench-server`. All on loopback, load from wrk, same run:
#   (a) gatehouse invoke API, no-op plugin (noop, POST /v1/plugins/noop/invoke)
#   (b) wasmtime serve of hello_proxy.wasm, defaults, then tuned pooling
#   (c) gatehouse serving the same hello_proxy.wasm under /p/hello/, on the
#       default runtime (one worker per core) and on one worker
# Prints req/s, p50 and p99 per row and the ratios. Not a test: numbers only.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TOOLS="$ROOT/target/tools"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-32}"

if ! command -v wrk >/dev/null; then
    echo "bench: installing wrk" >&2
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
if [ ! -x "$TOOLS/bin/wasmtime" ]; then
    echo "bench: installing wasmtime-cli 48.0.8 (the version gatehouse embeds; several minutes)" >&2
    cargo install --quiet --locked wasmtime-cli --version 48.0.8 --root "$TOOLS"
fi
WASMTIME="$TOOLS/bin/wasmtime"
COMPONENT="$ROOT/target/wasm32-wasip2/release/hello_proxy.wasm"
GATEHOUSE="$ROOT/target/release/gatehouse"

WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "bench: $1 never answered" >&2; exit 1; }

# One wrk run: prints "req/s p50 p99".
load() {
    local url=$1 method=${2:-GET}
    local script="$WORK/post.lua"
    printf 'wrk.method = "POST"\nwrk.body = "x"\nwrk.headers["content-type"] = "text/plain"\n' > "$script"
    local args=(-t2 -c"$CONNECTIONS" -d"$DURATION" --latency)
    [ "$method" = POST ] && args+=(-s "$script")
    wrk "${args[@]}" "$url" > "$WORK/out"
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/out")
    p50=$(awk '$1=="50%" {print $2}' "$WORK/out")
    p99=$(awk '$1=="99%" {print $2}' "$WORK/out")
    local errors
    errors=$(awk '/Non-2xx|Socket errors/ {print}' "$WORK/out" | tr '\n' ' ')
    echo "$rps $p50 $p99 ${errors}"
}

# gatehouse: the no-op plugin and the proxy component, no [http] grant.
mkdir -p "$WORK/policies"
cat > "$WORK/policies/noop.toml" <<TOML
[plugin]
name = "noop"
component = "noop.wasm"
[limits]
concurrency = 256
TOML
cat > "$WORK/policies/hello.toml" <<TOML
[plugin]
name = "hello"
component = "hello_proxy.wasm"
[limits]
concurrency = 256
# hello_proxy imports outgoing-handler (for /fetch); the benchmark's "/"
# never calls out.
[http]
allow = ["http://localhost:9"]
TOML
GH_PORT=$(free_port)
cat > "$WORK/gatehouse.toml" <<TOML
policy_dir = "$WORK/policies"
plugin_dir = "$ROOT/target/wasm32-wasip2/release"
data_dir = "$WORK/data"
[server]
listen = "127.0.0.1:$GH_PORT"
admin_listen = "off"
max_connections = 4096
TOML
GATEHOUSE_LOG=warn "$GATEHOUSE" --config "$WORK/gatehouse.toml" run > /dev/null &
PIDS+=($!)
wait_for "http://127.0.0.1:$GH_PORT/readyz"

# The runtime layout: the same sidecar on one tokio worker (tokio reads
# TOKIO_WORKER_THREADS), so no request hops between workers.
GH1_PORT=$(free_port)
sed "s/127.0.0.1:$GH_PORT/127.0.0.1:$GH1_PORT/" "$WORK/gatehouse.toml" > "$WORK/gatehouse1.toml"
TOKIO_WORKER_THREADS=1 GATEHOUSE_LOG=warn "$GATEHOUSE" --config "$WORK/gatehouse1.toml" run > /dev/null &
PIDS+=($!)
wait_for "http://127.0.0.1:$GH1_PORT/readyz"

WT_PORT=$(free_port)
"$WASMTIME" serve -S cli=y --addr "127.0.0.1:$WT_PORT" "$COMPONENT" 2> /dev/null &
PIDS+=($!)
wait_for "http://127.0.0.1:$WT_PORT/"

WT_TUNED_PORT=$(free_port)
"$WASMTIME" serve -S cli=y --addr "127.0.0.1:$WT_TUNED_PORT" \
    -O pooling-allocator=y -O pooling-memory-keep-resident=2097152 -O pooling-table-keep-resident=524288 \
    "$COMPONENT" 2> /dev/null &
PIDS+=($!)
wait_for "http://127.0.0.1:$WT_TUNED_PORT/"

echo "server benchmark: wrk -t2 -c$CONNECTIONS -d$DURATION, everything on this machine's $(nproc) cores"
echo
echo "| row | req/s | p50 | p99 | notes |"
echo "|---|---|---|---|---|"
declare -A RPS
for round in 1 2; do
    for row in wasmtime wasmtime-tuned gatehouse-proxy gatehouse-invoke gatehouse-proxy-1-worker; do
        case $row in
            wasmtime) result=$(load "http://127.0.0.1:$WT_PORT/") ;;
            wasmtime-tuned) result=$(load "http://127.0.0.1:$WT_TUNED_PORT/") ;;
            gatehouse-proxy) result=$(load "http://127.0.0.1:$GH_PORT/p/hello/") ;;
            gatehouse-invoke) result=$(load "http://127.0.0.1:$GH_PORT/v1/plugins/noop/invoke" POST) ;;
            gatehouse-proxy-1-worker) result=$(load "http://127.0.0.1:$GH1_PORT/p/hello/") ;;
        esac
        read -r rps p50 p99 notes <<< "$result"
        echo "| $row (round $round) | $rps | $p50 | $p99 | ${notes:-} |"
        RPS[$row]=$rps
    done
done
echo
ratio() { python3 -c "print(f'{float($1)/float($2):.2f}')"; }
echo "gatehouse-proxy / wasmtime serve (defaults): $(ratio "${RPS[gatehouse-proxy]}" "${RPS[wasmtime]}")"
echo "gatehouse-proxy / wasmtime serve (tuned):    $(ratio "${RPS[gatehouse-proxy]}" "${RPS[wasmtime-tuned]}")"
echo "gatehouse-invoke / wasmtime serve (defaults): $(ratio "${RPS[gatehouse-invoke]}" "${RPS[wasmtime]}")"
