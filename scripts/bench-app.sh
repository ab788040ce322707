#!/usr/bin/env bash
# What the chain adds to an application's own traffic (issue 12): redis-benchmark against
# redis-server and sockperf's TCP ping-pong, each run direct, through HAProxy (tcp mode; one
# hop, and two chained, since our chain is at least an ingress and an egress), and through our
# ingress → egress, with its probes (every 10 ms per connection) and without
# (--probe-interval 0). Variants alternate (round robin, repeated), so drift on a noisy VM hits
# all alike; the table gives medians over the repetitions and what each variant adds over
# direct.
#
# Placement: client and server on CPU 0, the hops on CPU 1 (taskset), as scripts/bench.sh's
# "split". Installs what it needs from Debian when missing (redis, sockperf through
# scripts/lab-deps.sh; haproxy), builds in release mode unless --bin is given, and writes
# the raw figures to target/bench/app/.
#
# usage: scripts/bench-app.sh [--quick] [--reps R] [--requests N] [--seconds S] [--bin PATH]
set -Eeuo pipefail
trap 'echo "bench-app.sh: line $LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR

reps=5 requests=20000 seconds=3 given_bin='' outdir=target/bench/app
command_line="scripts/bench-app.sh${*:+ $*}"
while (($#)); do
    case $1 in
        --quick) reps=2 requests=5000 seconds=2 ;;
        --reps) reps=${2:?--reps needs a value}; shift ;;
        --requests) requests=${2:?--requests needs a value}; shift ;;
        --seconds) seconds=${2:?--seconds needs a value}; shift ;;
        --bin) given_bin=${2:?--bin needs a path}; shift ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-app.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
(($(nproc) >= 2)) || { echo "bench-app.sh: needs 2 CPUs" >&2; exit 1; }
readonly app_cpu=0 hop_cpu=1

if ! command -v redis-benchmark >/dev/null || ! command -v sockperf >/dev/null; then
    scripts/lab-deps.sh --no-shellcheck
fi
if ! command -v haproxy >/dev/null; then
    ((EUID == 0)) || { echo "bench-app.sh: haproxy missing; run as root to install it" >&2; exit 1; }
    policy=/usr/sbin/policy-rc.d made_policy=false
    if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 0755 "$policy"; made_policy=true; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null
    if $made_policy; then rm -f "$policy"; fi
fi
if [[ -z $given_bin ]]; then
    cargo build --release -q
    given_bin=target/release/subsegment-tcp-speeds
fi
mkdir -p "$outdir"
rm -f "$outdir"/*.tsv "$outdir"/*.log
bin=$outdir/subsegment-tcp-speeds
cp "$given_bin" "$bin"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-app.XXXXXX")

me=bench-app.sh
# shellcheck source=scripts/bench/procs.sh
. scripts/bench/procs.sh
cleanup() { stop_from 0; rm -rf "$tmp"; }
trap cleanup EXIT
haproxy_hop() { # haproxy_hop LISTEN NEXT
    sed -e "s/@LISTEN_PORT@/$1/" -e "s/@NEXT_PORT@/$2/" scripts/bench/haproxy.cfg.in >"$tmp/haproxy-$1.cfg"
    start "$outdir/haproxy-$1.log" taskset -c "$hop_cpu" haproxy -db -q -f "$tmp/haproxy-$1.cfg"
    wait_port "$1"
}
our_hop() { # our_hop LISTEN NEXT ARGS...
    local listen=$1 next=$2; shift 2
    start "$outdir/ours-$listen.log" taskset -c "$hop_cpu" "$bin" -l "127.0.0.1:$listen" -f "127.0.0.1:$next" "$@"
    wait_port "$listen"
}
# front VARIANT SERVER_PORT: starts the variant's hops in front of the server and sets
# client_port to the port the client uses.
front() {
    local variant=$1 server=$2 a b
    a=$(free_port) b=$(free_port)
    client_port=$a
    case $variant in
        direct) client_port=$server ;;
        haproxy1) haproxy_hop "$a" "$server" ;;
        haproxy2) haproxy_hop "$b" "$server"; haproxy_hop "$a" "$b" ;;
        ours) our_hop "$b" "$server" -r -n E; our_hop "$a" "$b" --ingress -n I ;;
        ours-noprobe) our_hop "$b" "$server" -r -n E; our_hop "$a" "$b" --ingress -n I --probe-interval 0 ;;
    esac
}
# Stops the hops a front started; the servers keep running.
stop_hops() { stop_from "${#servers[@]}"; }

variants=(direct haproxy1 haproxy2 ours ours-noprobe)
redis_port=$(free_port)
start "$outdir/redis.log" taskset -c "$app_cpu" redis-server --port "$redis_port" --bind 127.0.0.1 \
    --save '' --appendonly no
wait_port "$redis_port"
sockperf_port=$(free_port)
start "$outdir/sockperf-server.log" taskset -c "$app_cpu" sockperf server --tcp -i 127.0.0.1 -p "$sockperf_port"
wait_port "$sockperf_port"
servers=("${pids[@]}")

echo "bench-app.sh: $reps repetitions of ${variants[*]}; client and server on CPU $app_cpu, hops on CPU $hop_cpu" >&2
for rep in $(seq "$reps"); do
    for variant in "${variants[@]}"; do
        front "$variant" "$redis_port"
        # One client: each request waits for the answer before the next (latency); fifty: load.
        for clients in 1 50; do
            taskset -c "$app_cpu" redis-benchmark -p "$client_port" -t ping,set,get -n "$requests" -c "$clients" --csv 2>/dev/null |
                awk -F, -v v="$variant" -v c="$clients" -v r="$rep" 'NR > 1 { gsub(/"/, ""); print v "\t" r "\tredis-c" c "-" $1 "\t" $2 "\t" $5 "\t" $7 }' \
                >>"$outdir/redis.tsv"
        done
        stop_hops
        front "$variant" "$sockperf_port"
        taskset -c "$app_cpu" sockperf ping-pong --tcp -i 127.0.0.1 -p "$client_port" -t "$seconds" --msg-size 64 \
            >"$tmp/sockperf.out" 2>&1 || { cat "$tmp/sockperf.out" >&2; exit 1; }
        awk -v v="$variant" -v r="$rep" '/percentile 50.000 =/ { p50 = $NF } /percentile 99.000 =/ { p99 = $NF }
            END { print v "\t" r "\tsockperf-64B\t-\t" p50 "\t" p99 }' "$tmp/sockperf.out" >>"$outdir/sockperf.tsv"
        stop_hops
        echo "bench-app.sh: rep $rep $variant done" >&2
    done
done

python3 - "$outdir" "$command_line" "${variants[@]}" <<'EOF' | tee "$outdir/table.txt"
import statistics, sys
outdir, command, variants = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = {}
for name in ("redis.tsv", "sockperf.tsv"):
    for line in open(f"{outdir}/{name}"):
        variant, _rep, test, rps, p50, p99 = line.rstrip("\n").split("\t")
        rows.setdefault((test, variant), []).append((rps, p50, p99))
tests = sorted({test for test, _ in rows}, key=lambda t: (t.startswith("sockperf"), t))
def med(values):
    values = [float(v) for v in values if v not in ("-", "")]
    return statistics.median(values) if values else float("nan")
print(f"# {command}; medians of {len(next(iter(rows.values())))} alternated repetitions; "
      "redis-benchmark latencies in ms as it prints them, sockperf's in µs; client and server on CPU 0, hops on CPU 1")
print(f"{'test':<24}{'variant':<14}{'rps':>11}{'p50':>9}{'p99':>9}{'p50 added':>11}{'p99 added':>11}")
for test in tests:
    direct = rows.get((test, "direct"))
    base50, base99 = (med([r[1] for r in direct]), med([r[2] for r in direct])) if direct else (0, 0)
    for variant in variants:
        runs = rows.get((test, variant))
        if not runs:
            continue
        rps, p50, p99 = med([r[0] for r in runs]), med([r[1] for r in runs]), med([r[2] for r in runs])
        added = "" if variant == "direct" else f"{p50 - base50:>11.3f}{p99 - base99:>11.3f}"
        rps_text = "-" if rps != rps else f"{rps:.0f}"
        print(f"{test:<24}{variant:<14}{rps_text:>11}{p50:>9.3f}{p99:>9.3f}{added}")
EOF
