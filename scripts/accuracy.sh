#!/usr/bin/env bash
# Shows how well the tool attributes delay: builds a lab (scripts/lab.sh) of N hosts, deploys
# the chain over the lab's sshd with scripts/deploy-chain.sh (source on h0, hops h1..h(N-1)),
# injects each delay on each link in turn, and prints a markdown table: injected, estimated p50,
# error, and whether the verdict named the right link. Needs root. The lab is torn down on exit,
# Ctrl-C or failure.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly script_dir

usage() {
    cat <<'EOF'
usage: scripts/accuracy.sh [--hosts N] [--delays "0.1 1 10"] [--count 300] [--size 64]
                           [--interval 2ms] [--bulk BYTES] [--mechanism auto|netem|nfqueue|tcp-delay]
                           [--kernel-stamps all|sample|off] [--keep-reports DIR] [--bin PATH]

For every link hI⇄hI+1 of an N-host lab (default 4) and every delay D (ms, one way, default
"0.1 1 10"), delays that link by D each way (so its round trip gains 2·D), measures with probes
(--count, --size, one in flight, --interval apart), and prints a markdown table on stdout:
the injected round trip, the link's estimated p50 and its error, the link's p50 with nothing
injected (bare) and with the delay element in place at 0 ms, how long the element really held
the frames (its own log: p50 arrival → written, down plus up; with netem, the injected delay),
the expected link round trip (bare + held), the tool's error (estimate − expected), whether it is
within max(2%, 50 µs), and whether the verdict named that link. With --bulk BYTES the source sends BYTES as fast as the chain takes
them (the default mode) instead of probes. Progress goes to stderr.

The last columns come from the kernel split (the report's `kernel` object per link): the
link's p50 less the time its bytes waited unsent in the send buffers at its two ends (the near
end's for frames going down, the far end's for answers coming up; measured by the transmit
stamps, else by Little's law on the TCP_INFO readings), the same for the bare link, and the
split's error: (p50 − queues) − (bare − its queues) − held. In bulk mode every buffer in front
of a link fills, so the p50 itself is far from the injected truth; the split's error is how far
it stays once the queues are taken out. --kernel-stamps (default all with --bulk: a short bulk
run has too few ticks for `sample` to measure the queues well; else off) is passed to the
source. --keep-reports DIR keeps every run's JSON report there.
Binaries: --bin (default: the newer of target/release and target/debug), and tcp-delay and
nfq-delay beside it (or $TCP_DELAY_BIN, $NFQ_DELAY_BIN).
EOF
}

hosts=4
delays="0.1 1 10"
count=300
size=64
interval=2ms
mechanism=auto
bulk=''
bin=''
kernel_stamps=''
keep_reports=''
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --hosts) hosts=${2:?}; shift 2 ;;
        --delays) delays=${2:?}; shift 2 ;;
        --count) count=${2:?}; shift 2 ;;
        --size) size=${2:?}; shift 2 ;;
        --interval) interval=${2:?}; shift 2 ;;
        --mechanism) mechanism=${2:?}; shift 2 ;;
        --bulk) bulk=${2:?}; shift 2 ;;
        --bin) bin=${2:?}; shift 2 ;;
        --kernel-stamps) kernel_stamps=${2:?}; shift 2 ;;
        --keep-reports) keep_reports=${2:?}; shift 2 ;;
        *) echo "accuracy: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
done
((EUID == 0)) || { echo "accuracy: needs root (network namespaces)" >&2; exit 1; }
if [[ -z $kernel_stamps ]]; then if [[ -n $bulk ]]; then kernel_stamps=all; else kernel_stamps=off; fi; fi
[[ -z $keep_reports ]] || mkdir -p "$keep_reports"
if [[ -z $bin ]]; then
    release=$script_dir/../target/release/subsegment-tcp-speeds
    debug=$script_dir/../target/debug/subsegment-tcp-speeds
    if [[ -x $release && (! -x $debug || $release -nt $debug) ]]; then bin=$release; else bin=$debug; fi
fi
[[ -x $bin ]] || { echo "accuracy: no binary at $bin (cargo build --release)" >&2; exit 1; }
bin=$(realpath "$bin")
export TCP_DELAY_BIN=${TCP_DELAY_BIN:-$(dirname "$bin")/tcp-delay}
[[ -x $TCP_DELAY_BIN ]] || { echo "accuracy: no tcp-delay at $TCP_DELAY_BIN" >&2; exit 1; }
export NFQ_DELAY_BIN=${NFQ_DELAY_BIN:-$(dirname "$bin")/nfq-delay}

lab_dir=$(mktemp -d /tmp/ssts-accuracy.XXXXXX)
rmdir "$lab_dir" # lab.sh up creates it, and marks it as a lab directory it may remove
prefix=ssts-acc$$-
lab() { "$script_dir/lab.sh" --dir "$lab_dir" "$@"; }
work=$(mktemp -d /tmp/ssts-accuracy-work.XXXXXX)
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    lab down --prefix "$prefix" >/dev/null 2>&1 || true
    rm -rf -- "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# What the tables need from the source's JSON report (--json, src/report/report.schema.json):
#   p50 FILE LABEL  the p50 in µs of the subsegment labelled LABEL (as in the text table, e.g.
#                   "h1 ⇄ h2"); nothing when there is no such row
#   verdict FILE    the label of the subsegment the verdict names; nothing when it names none
#   queues FILE LABEL  µs the kernel split says bytes of that link waited unsent in the send
#                   buffers of its two ends: the near end's (the split's sender_queue_ns) plus
#                   the far end's, whose answers go up (its transmit stamps' mean wait, else
#                   Little's law: mean unsent bytes over the delivery rate); 0 when nothing
#                   waited, nothing when the link has no kernel readings
# (The verdict names a subsegment by its id; the document's subsegments[] give its label.)
readonly report_py='
import json, sys
what, path = sys.argv[1], sys.argv[2]
try:
    with open(path, encoding="utf-8") as source:
        report = json.load(source)
except (OSError, ValueError) as error:
    sys.exit(f"accuracy: no JSON report in {path}: {error}")
labels = {row["id"]: row["label"] for row in report["subsegments"]}
if what == "p50":
    for row in report["subsegments"]:
        if row["label"] == sys.argv[3]:
            print("%.1f" % (row["p50_ns"] / 1000))
            break
elif what == "queues":
    for row in report["subsegments"]:
        kernel = row.get("kernel")
        if row["label"] != sys.argv[3] or not kernel or not kernel.get("split"):
            continue
        near = kernel["split"].get("sender_queue_ns") or 0
        far_end = kernel.get("far") or {}
        far = far_end.get("tx_queue_mean_ns")
        if far is None:
            unsent, rate = far_end.get("notsent_bytes_mean"), far_end.get("delivery_rate_bytes_per_second")
            far = unsent * 1e9 / rate if unsent and rate else 0
        # What the split can take out is at most what the row holds above the wire.
        room = row["p50_ns"] - kernel["split"]["wire_ns"]
        print("%.1f" % (min(near + far, room) / 1000))
        break
elif what == "verdict":
    named = (report["verdict"] or {}).get("subsegment")
    if named is not None:
        print(labels.get(named, named))
'
row_p50_us() { python3 -c "$report_py" p50 "$1" "$2"; }
verdict_of() { python3 -c "$report_py" verdict "$1"; }
queues_us() { python3 -c "$report_py" queues "$1" "$2"; }
# keep NAME FILE: a copy of a run's JSON report under --keep-reports.
keep() { [[ -z $keep_reports ]] || cp "$2" "$keep_reports/$1.json"; }

# Runs the chain once; the source's and hops' stderr go to file $1, the source's JSON report to
# $1.json. Extra deploy options follow.
run_chain() {
    local out=$1
    shift
    local hops=()
    for ((k = 1; k < hosts; k++)); do hops+=("h$k"); done
    local load=()
    [[ -z $bulk ]] || load=(--bytes "$bulk")
    local source_args=(--json "$out.json" --kernel-stamps "$kernel_stamps")
    [[ -n $bulk ]] || source_args+=(--count "$count" --size "$size" --window 1 --interval "$interval")
    rm -f "$out.json"
    lab exec h0 "$script_dir/deploy-chain.sh" -F "$lab_dir/ssh_config" --bin "$bin" --source-name h0 "$@" \
        "${load[@]}" "${hops[@]}" -- "${source_args[@]}" 2>"$out" >/dev/null ||
        { cat "$out" >&2; echo "accuracy: the chain failed" >&2; exit 1; }
}

lab up "$hosts" --prefix "$prefix"

# Injects $2 ms each way on link $1 and runs the chain into file $3; the element's log (how
# long it held the frames) goes to $3.element.
run_impaired() {
    local link=$1 delay=$2 out=$3 target log
    log=$lab_dir/elements/h$link-h$((link + 1)).log
    target=$(lab impair "h$link-h$((link + 1))" --delay "$delay" --mechanism "$mechanism" 2>"$work/impair")
    run_chain "$out" --forward "$link=$target"
    lab clear "h$link-h$((link + 1))"
    if [[ -f $log ]]; then cp "$log" "$out.element"; else : >"$out.element"; fi
}

# How long the element held frames, p50 down plus p50 up, in µs; with netem, the injected
# round trip ($2 ms each way).
held_us() {
    if [[ $mechanism == netem ]]; then
        awk -v d="$2" 'BEGIN { printf "%.1f\n", 2 * d * 1000 }'
        return
    fi
    awk '/ held p50 / { for (i = 1; i <= NF; i++) if ($i == "p50") sum += $(i + 1) }
         END { printf "%.1f\n", sum }' "$1"
}

echo "accuracy: bare links (nothing injected)" >&2
run_chain "$work/bare"
keep bare "$work/bare.json"
declare -a bare bare_queues
for ((link = 0; link + 1 < hosts; link++)); do
    bare[link]=$(row_p50_us "$work/bare.json" "h$link ⇄ h$((link + 1))")
    bare_queues[link]=$(queues_us "$work/bare.json" "h$link ⇄ h$((link + 1))")
done

# The 0 ms runs need the same element as the delayed ones, so the mechanism is settled first.
if [[ $mechanism == auto ]]; then
    lab impair h0-h1 --delay 1 >/dev/null 2>"$work/impair"
    lab clear h0-h1
    if grep -q 'user-space delay element' "$work/impair"; then mechanism=tcp-delay
    elif grep -q 'nfq-delay' "$work/impair"; then mechanism=nfqueue
    else mechanism=netem; fi
fi
case $mechanism in
    netem) used=netem ;;
    nfqueue) used="nfq-delay, the NFQUEUE packet delay element (no netem in this kernel)" ;;
    *) used="tcp-delay, the user-space delay element (no netem in this kernel)" ;;
esac

rows=()
for ((link = 0; link + 1 < hosts; link++)); do
    label="h$link ⇄ h$((link + 1))"
    echo "accuracy: $label with the delay element at 0 ms" >&2
    run_impaired "$link" 0 "$work/zero"
    zero=$(row_p50_us "$work/zero.json" "$label")
    for delay in $delays; do
        echo "accuracy: $label, $delay ms each way" >&2
        run_impaired "$link" "$delay" "$work/run"
        estimated=$(row_p50_us "$work/run.json" "$label")
        queues=$(queues_us "$work/run.json" "$label")
        held=$(held_us "$work/run.element" "$delay")
        verdict=$(verdict_of "$work/run.json")
        keep "h$link-h$((link + 1))-$delay" "$work/run.json"
        rows+=("$(awk -v label="$label" -v d="$delay" -v est="$estimated" -v zero="$zero" \
            -v bare="${bare[link]}" -v held="$held" -v verdict="$verdict" -v queues="$queues" \
            -v bare_queues="${bare_queues[link]}" 'BEGIN {
                injected = 2 * d * 1000; expected = bare + held; tool = est - expected
                bound = (0.02 * injected > 50) ? 0.02 * injected : 50
                if (queues == "" || bare_queues == "") {
                    cols = "| - | - | -"
                } else {
                    unqueued = est - queues; queue_error = unqueued - (bare - bare_queues) - held
                    cols = sprintf("| %.1f | %.1f | %+.1f (%+.2f%%)", queues, unqueued, queue_error,
                        100 * queue_error / injected)
                }
                printf "| %s | %g | %g | %.1f | %+.1f | %.1f | %.1f | %.1f | %.1f | %+.1f (%+.2f%%) | %s | %s %s |",
                    label, d, injected, est, est - injected, bare, zero, held, expected, tool,
                    100 * tool / injected, (tool <= bound && tool >= -bound) ? "yes" : "NO",
                    (verdict == label) ? "correct" : "WRONG: " (verdict == "" ? "none named" : verdict), cols
            }')")
    done
done

if [[ -n $bulk ]]; then measured_by="bulk: --bytes $bulk"; else
    measured_by="probes: --count $count --size $size --window 1 --interval $interval"; fi
measured_by+=", --kernel-stamps $kernel_stamps"
echo "lab: $hosts hosts, source on h0, chain h1..h$((hosts - 1)); delay by $used; $measured_by;" \
    "kernel $(uname -r), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| link | one way (ms) | injected round trip (µs) | estimated p50 (µs) | error (µs) | bare link p50 (µs) | element at 0 ms, p50 (µs) | element held, p50 down + up (µs) | expected (µs) | tool's error (µs) | within max(2%, 50 µs) | verdict | send queues, kernel split (µs) | p50 − queues (µs) | split's error (µs) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
