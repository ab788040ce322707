#!/usr/bin/env bash
# Measures what TCP_QUICKACK after every read changes, against routes with and without
# `quickack 1` (issue 11): a 4-host lab (scripts/lab.sh), the chain h0 (source) -> h1 -> h2 ->
# h3 (echo) started straight in the namespaces, probes one at a time, and three conditions,
# alternated and repeated:
#
#   route      the lab's routes have `quickack 1` (what lab.sh sets up)
#   none       the routes without it: the kernel's delayed ACKs
#   per-read   the routes without it, and the source's --quickack: every hop (told in the path
#              announcement) and the source set TCP_QUICKACK after each read that brought bytes
#
# Prints a markdown table on stdout (medians over the repetitions of each run's figures): per
# link the kernel's srtt at the near end (the hop sending frames down) and at the far end (the
# hop sending the answers up), the min RTT, and the link's p50; end to end p50 and p99. Needs
# root. The lab is torn down on exit, Ctrl-C or failure.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly script_dir

usage() {
    cat <<'EOF'
usage: scripts/quickack.sh [--reps R] [--count N] [--interval I] [--size B] [--bin PATH]

  --reps R       repetitions of the three conditions, their order rotated (default 3)
  --count N      probes per run (default 1000)
  --interval I   between probes, one in flight (default 2ms)
  --size B       probe payload (default 64)
  --bin PATH     the tool (default: the newer of target/release and target/debug)
EOF
}

reps=3 count=1000 interval=2ms size=64 bin=''
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --reps) reps=${2:?}; shift 2 ;;
        --count) count=${2:?}; shift 2 ;;
        --interval) interval=${2:?}; shift 2 ;;
        --size) size=${2:?}; shift 2 ;;
        --bin) bin=${2:?}; shift 2 ;;
        *) echo "quickack: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
done
((EUID == 0)) || { echo "quickack: needs root (network namespaces)" >&2; exit 1; }
if [[ -z $bin ]]; then
    release=$script_dir/../target/release/subsegment-tcp-speeds
    debug=$script_dir/../target/debug/subsegment-tcp-speeds
    if [[ -x $release && (! -x $debug || $release -nt $debug) ]]; then bin=$release; else bin=$debug; fi
fi
[[ -x $bin ]] || { echo "quickack: no binary at $bin (cargo build --release)" >&2; exit 1; }
bin=$(realpath "$bin")

work=$(mktemp -d /tmp/ssts-quickack.XXXXXX)
lab_dir=$work/lab
prefix=ssts-qa$$-
lab() { "$script_dir/lab.sh" --dir "$lab_dir" "$@"; }
# Not through the function for the background hops: $! must be the process that becomes the hop.
lab_sh=("$script_dir/lab.sh" --dir "$lab_dir")
hop_pids=()
stop_hops() {
    local pid
    for pid in "${hop_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${hop_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    hop_pids=()
}
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_hops
    lab down --prefix "$prefix" >/dev/null 2>&1 || true
    rm -rf -- "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

lab up 4 --prefix "$prefix" >&2
addr() { lab addr "h$1"; }

# routes on|off: `quickack 1` on every lab route, or on none.
routes() {
    local k namespace line
    for ((k = 0; k < 4; k++)); do
        namespace=${prefix}h$k
        while read -r line; do
            [[ $line == *" via "* ]] || continue
            line=${line% quickack 1}
            # shellcheck disable=SC2086 # the route's words, as `ip route show` printed them
            if [[ $1 == on ]]; then
                ip -n "$namespace" route replace $line quickack 1
            else
                ip -n "$namespace" route replace $line
            fi
        done < <(ip -n "$namespace" route show)
    done
}

# run CONDITION OUT: the chain once; the source's JSON report goes to OUT.json.
run() {
    local condition=$1 out=$2 k log quickack=()
    if [[ $condition == route ]]; then routes on; else routes off; fi
    if [[ $condition == per-read ]]; then quickack=(--quickack); fi
    for ((k = 3; k >= 1; k--)); do
        local forward=()
        ((k == 3)) || forward=(--forward-to "$(addr $((k + 1))):9000")
        log=$out.h$k.log
        "${lab_sh[@]}" exec "h$k" "$bin" --listen "$(addr "$k"):9000" "${forward[@]}" --name "h$k" \
            --allow 10.213.0.0/16 2>"$log" &
        hop_pids+=($!)
        local deadline=$((SECONDS + 10))
        until grep -q 'listening on' "$log" 2>/dev/null; do
            ((SECONDS < deadline)) || { cat "$log" >&2; echo "quickack: h$k did not start" >&2; exit 1; }
            sleep 0.02
        done
    done
    lab exec h0 "$bin" --forward-to "$(addr 1):9000" --name h0 --count "$count" --size "$size" \
        --interval "$interval" --window 1 "${quickack[@]}" --json "$out.json" </dev/null >/dev/null 2>"$out.source.log" ||
        { cat "$out.source.log" >&2; echo "quickack: the source failed ($condition)" >&2; exit 1; }
    stop_hops
}

conditions=(route none per-read)
for ((rep = 1; rep <= reps; rep++)); do
    for ((index = 0; index < 3; index++)); do
        condition=${conditions[(index + rep - 1) % 3]}
        echo "quickack: $(date -u +%T) rep $rep, $condition" >&2
        run "$condition" "$work/$condition-$rep"
    done
done

python3 - "$work" "$reps" <<'PY'
import json, statistics, sys
work, reps = sys.argv[1], int(sys.argv[2])
links = ("0-1", "1-2", "2-3")
rows = {}
for condition in ("route", "none", "per-read"):
    runs = [json.load(open(f"{work}/{condition}-{rep}.json")) for rep in range(1, reps + 1)]
    def median(values):
        values = [value for value in values if value is not None]
        return statistics.median(values) / 1000 if values else None
    def row_of(report, kind):
        return {row["id"]: row for row in report["subsegments"]}.get(kind)
    cells = {}
    for link in links:
        kernel = lambda report: (row_of(report, link) or {}).get("kernel") or {}
        cells[link] = (
            median([(kernel(r).get("near") or {}).get("rtt_ns") for r in runs]),
            median([(kernel(r).get("far") or {}).get("rtt_ns") for r in runs]),
            median([kernel(r).get("min_rtt_ns") for r in runs]),
            median([(row_of(r, link) or {}).get("p50_ns") for r in runs]),
        )
    end = (median([r["end_to_end"]["p50_ns"] for r in runs]), median([r["end_to_end"]["p99_ns"] for r in runs]))
    rows[condition] = (cells, end)
show = lambda value: "-" if value is None else f"{value:.1f}"
names = {
    "route": "routes with `quickack 1`",
    "none": "routes without it (delayed ACKs)",
    "per-read": "without it, `--quickack` (TCP_QUICKACK after every read)",
}
header = "| condition | " + " | ".join(
    f"{link} srtt near / far (µs) | {link} min RTT (µs) | {link} p50 (µs)" for link in links
) + " | end-to-end p50 (µs) | end-to-end p99 (µs) |"
print(header)
print("|---|" + "---:|" * (3 * len(links) + 2))
for condition, (cells, end) in rows.items():
    line = f"| {names[condition]} |"
    for link in links:
        near, far, min_rtt, p50 = cells[link]
        line += f" {show(near)} / {show(far)} | {show(min_rtt)} | {show(p50)} |"
    line += f" {show(end[0])} | {show(end[1])} |"
    print(line)
PY
echo
echo "lab: 4 hosts (scripts/lab.sh), source h0, relays h1 h2, echo h3; probes --count $count --size $size" \
    "--window 1 --interval $interval; median of $reps repetitions, conditions alternated; kernel $(uname -r)," \
    "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
