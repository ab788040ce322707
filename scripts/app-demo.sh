#!/usr/bin/env bash
# Measures an unmodified application's own traffic: redis-benchmark → ingress I → relay B →
# egress E (-r) → redis-server, all on loopback. Prints what redis-benchmark saw and the
# ingress's report (written when it exits). redis comes from Debian (scripts/lab-deps.sh installs
# it as root).
#
# usage: scripts/app-demo.sh [REQUESTS]   (default 20000; redis-benchmark -t ping,set,get -c 1)
set -euo pipefail

requests=${1:-20000}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    scripts/lab-deps.sh --no-shellcheck
fi
cargo build --release -q
bin=target/release/subsegment-tcp-speeds
tmp=$(mktemp -d "${TMPDIR:-/tmp}/app-demo.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start LOG PORT CMD...: starts CMD in the background and waits until PORT accepts.
start() {
    local log=$1 port=$2 _
    shift 2
    "$@" >"$log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.05
    done
    cat "$log" >&2
    echo "app-demo.sh: $1 did not listen on $port" >&2
    exit 1
}

redis_port=$(free_port) e_port=$(free_port) b_port=$(free_port) i_port=$(free_port)
start "$tmp/redis.log" "$redis_port" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no
start "$tmp/E.log" "$e_port" "$bin" -l "127.0.0.1:$e_port" -f "127.0.0.1:$redis_port" -r -n E
start "$tmp/B.log" "$b_port" "$bin" -l "127.0.0.1:$b_port" -f "127.0.0.1:$e_port" -n B
start "$tmp/I.log" "$i_port" "$bin" -l "127.0.0.1:$i_port" -f "127.0.0.1:$b_port" --ingress -n I
ingress=${pids[3]}

echo "\$ redis-benchmark -p $i_port -t ping,set,get -n $requests -c 1 -q   # through I → B → E → redis"
redis-benchmark -p "$i_port" -t ping,set,get -n "$requests" -c 1 -q | tr '\r' '\n' | grep 'requests per second'
echo "\$ redis-benchmark -p $redis_port -t ping,set,get -n $requests -c 1 -q   # direct"
redis-benchmark -p "$redis_port" -t ping,set,get -n "$requests" -c 1 -q | tr '\r' '\n' | grep 'requests per second'
kill -INT "$ingress"
wait "$ingress" || true
echo "--- the ingress's report (I, on SIGINT):"
grep -v ': connection from ' "$tmp/I.log"
