#!/usr/bin/env bash
# Measures our relay as one hop (and two) of a loopback chain against socat, HAProxy and nginx's
# stream module (issue 4): round-trip latency, throughput with the hops' CPU time, the relay's
# system calls per frame, and its memory with many connections.
#
# A relay in C that only copies bytes (scripts/bench/floor-relay.c) is measured beside them: the
# floor any hop pays on this machine.
#
# Our source (probe mode) and our echoing end are the measuring client and server of every
# variant, so only the hop differs. Frames pass through socat, HAProxy and nginx unchanged; the
# source then sees only its link to the echo, and the bench uses the report's end-to-end row.
# Variants are alternated (round robin, repeated), so drift on a noisy VM hits all of them
# alike. Every process is pinned: "one" = everything on CPU 0; "split" = source and echo on
# CPU 0, the hop(s) on CPU 1.
#
# Installs what it needs from Debian when missing (socat, haproxy, nginx + libnginx-mod-stream,
# linux-perf or strace), builds in release mode, prints one table and writes
# target/bench/results.json, results.tsv and table.txt (raw runs and every report under
# target/bench/raw and target/bench/logs).
#
# usage: scripts/bench.sh [--quick] [options]   (--help for the options)
set -Eeuo pipefail
# Say which command stopped the script (set -e alone exits silently).
trap 'echo "bench.sh: line $LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR

usage() {
    cat <<'EOF'
usage: scripts/bench.sh [--quick] [options]

  --quick               a ~2 minute run: fewer repetitions, frames and bytes
  --reps R              latency repetitions, variants alternated (full 7, quick 2)
  --frames N            measured round trips per latency run (full 10000, quick 3000)
  --warmup N            unrecorded round trips before each latency run (full 500, quick 300)
  --sizes "64 512"      probe payload sizes in bytes
  --bytes N             throughput bytes through two hops, K/M/G suffixes (full 1G, quick 256M)
  --throughput-reps R   throughput repetitions (full 3, quick 1)
  --block BYTES         the source's -s in the throughput runs (65536; 512, the default block,
                        shows what each frame costs)
  --check-bytes N       random bytes for the once-per-variant integrity check (full 64M, quick 16M)
  --syscall-frames N    round trips counted for syscalls per frame (full 20000, quick 5000)
  --idle N              idle connections for the memory measure (1000)
  --busy N              busy connections (our sources at 2 ms intervals) (100)
  --busy-seconds S      how long the busy sources run (full 6, quick 3)
  --placements LIST     one,split (default both)
  --only LIST           any of latency,knobs,evidence,integrity,throughput,syscalls,rss,watch
                        (default all)
  --knob-frames N       round trips per knobs run (full 25000, quick 3000): a run must last
                        over a second to meet the kernel's real-time throttle next to the hog
  --knob-reps R         knobs repetitions (full 3, quick 1)
  --evidence-frames N   round trips per run of the evidence section (full 10000, quick 3000)
  --evidence-reps R     evidence repetitions, variants alternated (full 5, quick 3)
  --watch-frames N      probes per watch run, one every 250 µs (full 20000 = 5 s, quick 6000):
                        a run must last some seconds for the view to redraw and to be scraped
  --watch-reps R        watch repetitions, the four variants alternated (full 5, quick 2)
  --watch-realtime      the watch section with --realtime on the source, the relay and an echo
                        of its own (SCHED_FIFO: other work at normal priority cannot delay
                        them; the view and metrics threads still run at normal priority)
  --busy-poll-args ARGS relay options for the busy-poll variant; "{cpu}" is replaced by the
                        hop's CPU (default "--busy-poll --cpu {cpu}", or "--busy-poll" when
                        the relay has no --cpu); e.g. add --realtime --mlock
  --out DIR             where results go (default target/bench)
  --bin PATH            measure this subsegment-tcp-speeds instead of building target/release
                        (e.g. an older build, to compare; latency, knobs, integrity and
                        throughput need one with --json, whose report they read)
  --no-install          do not apt-get anything; fail if a tool is missing
  -h, --help            this text

Besides ours and the anchors, the latency runs measure "floor": scripts/bench/floor-relay.c,
built with cc, a relay that only copies bytes; what it adds is about what any hop must add
here (within the run-to-run noise), so a target the floor itself misses is out of reach on this
machine. floor-bp is it spinning.

The busy-poll variant (ours-bp) runs only when `subsegment-tcp-speeds --help` mentions
--busy-poll, and only as one hop on the other CPU: a spinning hop needs a CPU of its own, and
this bench has one to give (CPU 0 is the source's and the echo's).

The watch section (issue 13) measures what watching a run costs it: probe p50 and p99 through
one hop of ours with the live view on and off (the source runs under script(1), so its stderr
and stdin are a terminal), and with --metrics scraped every 100 ms and not scraped.
EOF
}

# --- options --------------------------------------------------------------------------------------

command_line="scripts/bench.sh${*:+ $*}"
mode=full
for arg in "$@"; do
    if [[ $arg == --quick ]]; then mode=quick; fi
done
if [[ $mode == quick ]]; then
    reps=2 frames=3000 warmup=300 bytes=256M throughput_reps=1 check_bytes=16M
    syscall_frames=5000 busy_seconds=3 knob_frames=3000 knob_reps=1
    evidence_frames=3000 evidence_reps=3 watch_frames=6000 watch_reps=2
else
    reps=7 frames=10000 warmup=500 bytes=1G throughput_reps=3 check_bytes=64M
    syscall_frames=20000 busy_seconds=6 knob_frames=25000 knob_reps=3
    evidence_frames=10000 evidence_reps=5 watch_frames=20000 watch_reps=5
fi
sizes="64 512"
idle_conns=1000
busy_conns=100
placements=one,split
sections=latency,knobs,evidence,integrity,throughput,syscalls,rss,watch
throughput_block=65536
busy_poll_args=''
outdir=target/bench
install=true
given_bin=''
watch_realtime=false
readonly client_cpu=0 hop_cpu=1

need_value() {
    if (($# < 2)) || [[ -z $2 ]]; then
        echo "bench.sh: $1 needs a value (try --help)" >&2
        exit 2
    fi
}
while (($#)); do
    case $1 in
        --quick) ;;
        --reps) need_value "$@"; reps=$2; shift ;;
        --frames) need_value "$@"; frames=$2; shift ;;
        --warmup) need_value "$@"; warmup=$2; shift ;;
        --sizes) need_value "$@"; sizes=$2; shift ;;
        --bytes) need_value "$@"; bytes=$2; shift ;;
        --throughput-reps) need_value "$@"; throughput_reps=$2; shift ;;
        --block) need_value "$@"; throughput_block=$2; shift ;;
        --check-bytes) need_value "$@"; check_bytes=$2; shift ;;
        --syscall-frames) need_value "$@"; syscall_frames=$2; shift ;;
        --knob-frames) need_value "$@"; knob_frames=$2; shift ;;
        --knob-reps) need_value "$@"; knob_reps=$2; shift ;;
        --evidence-frames) need_value "$@"; evidence_frames=$2; shift ;;
        --evidence-reps) need_value "$@"; evidence_reps=$2; shift ;;
        --watch-frames) need_value "$@"; watch_frames=$2; shift ;;
        --watch-reps) need_value "$@"; watch_reps=$2; shift ;;
        --watch-realtime) watch_realtime=true ;;
        --idle) need_value "$@"; idle_conns=$2; shift ;;
        --busy) need_value "$@"; busy_conns=$2; shift ;;
        --busy-seconds) need_value "$@"; busy_seconds=$2; shift ;;
        --placements) need_value "$@"; placements=$2; shift ;;
        --only) need_value "$@"; sections=$2; shift ;;
        --busy-poll-args) need_value "$@"; busy_poll_args=$2; shift ;;
        --out) need_value "$@"; outdir=$2; shift ;;
        --bin) need_value "$@"; given_bin=$2; shift ;;
        --no-install) install=false ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

bytes=$(numfmt --from=iec "$bytes")
check_bytes=$(numfmt --from=iec "$check_bytes")
for number in "$reps" "$frames" "$warmup" "$bytes" "$throughput_reps" "$check_bytes" \
    "$syscall_frames" "$knob_frames" "$knob_reps" "$evidence_frames" "$evidence_reps" "$idle_conns" "$busy_conns" "$busy_seconds" \
    "$throughput_block" "$watch_frames" "$watch_reps"; do
    [[ $number =~ ^[0-9]+$ ]] || { echo "bench.sh: '$number' is not a whole number" >&2; exit 2; }
done
read -r -a size_list <<<"$sizes"
IFS=, read -r -a placement_list <<<"$placements"
for placement in "${placement_list[@]}"; do
    [[ $placement == one || $placement == split ]] ||
        { echo "bench.sh: unknown placement '$placement' (one, split)" >&2; exit 2; }
done
wants() { [[ ,$sections, == *,$1,* ]]; }

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if (($(nproc) < 2)); then
    echo "bench.sh: needs 2 CPUs (one for the source and echo, one for the hop); this machine has $(nproc)" >&2
    exit 1
fi

# --- tools ----------------------------------------------------------------------------------------

# command-or-file:package pairs; perf and strace are alternatives (perf preferred).
needed=(socat:socat haproxy:haproxy nginx:nginx /usr/lib/nginx/modules/ngx_stream_module.so:libnginx-mod-stream
    taskset:util-linux setsid:util-linux pgrep:procps numfmt:coreutils python3:python3)
missing=()
for pair in "${needed[@]}"; do
    thing=${pair%%:*} package=${pair#*:}
    if [[ $thing == /* ]]; then [[ -e $thing ]] && continue; else command -v "$thing" >/dev/null && continue; fi
    [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
done
if ! command -v perf >/dev/null && ! command -v strace >/dev/null; then missing+=(linux-perf strace); fi
if ((${#missing[@]})); then
    if ! $install || ((EUID != 0)); then
        echo "bench.sh: missing ${missing[*]}; run as root without --no-install to apt-get them" >&2
        exit 1
    fi
    echo "bench.sh: installing ${missing[*]} (apt-get)" >&2
    # The packages' install scripts would start system-wide haproxy and nginx services; a
    # temporary policy-rc.d forbids that (unless the machine already has one).
    policy=/usr/sbin/policy-rc.d
    made_policy=false
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# written by subsegment-tcp-speeds scripts/bench.sh while it installs\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        made_policy=true
    fi
    export DEBIAN_FRONTEND=noninteractive
    install_status=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
        install_status=$?
    if $made_policy; then rm -f "$policy"; fi
    ((install_status == 0)) || { echo "bench.sh: apt-get failed" >&2; exit 1; }
fi

# Debian's python3 rather than a version-manager shim, which can take 0.2 s to start; -S: the
# helper needs nothing from site-packages.
python=/usr/bin/python3
[[ -x $python ]] || python=$(command -v python3 || echo python3)
lib=("$python" -S "$root/scripts/bench/benchlib.py")

if [[ -z $given_bin ]]; then
    echo "bench.sh: building (cargo build --release)" >&2
    mkdir -p "$outdir"
    if ! cargo build --release >"$outdir/build.log" 2>&1; then
        cat "$outdir/build.log" >&2
        echo "bench.sh: cargo build --release failed" >&2
        exit 1
    fi
    given_bin=target/release/subsegment-tcp-speeds
fi
[[ -x $given_bin ]] || { echo "bench.sh: $given_bin is not an executable" >&2; exit 1; }

# --- work area, processes, clean-up ----------------------------------------------------------------

raw=$outdir/raw
logs=$outdir/logs
rm -rf "$raw" "$logs"
mkdir -p "$raw" "$logs/latency" "$logs/throughput" "$logs/hops" "$outdir/bin"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench.XXXXXX")
# A copy of the binary: the bench keeps measuring the same build even if target/ is rebuilt
# while it runs.
bin=$outdir/bin/subsegment-tcp-speeds
cp "$given_bin" "$bin"
# The floor: a relay that only copies bytes, in C (scripts/bench/floor-relay.c). What it adds is
# about what any hop must pay on this machine; the targets' ratios are read against it.
floor_bin=$outdir/bin/floor-relay
floor=false
if command -v cc >/dev/null && cc -O2 -Wall -o "$floor_bin" scripts/bench/floor-relay.c 2>"$outdir/floor-build.log"; then
    floor=true
else
    floor_note="no C compiler (cc), or the floor relay did not build (see $outdir/floor-build.log): floor variants skipped"
fi

# Every server-like process is started with setsid, so it leads its own process group (socat's
# forked children and anything else it spawns included) and the group is killed by its id.
groups=()
# group_alive PGID: whether a process of the group still runs (zombies do not count).
group_alive() {
    local pid stat
    for pid in $(pgrep -g "$1" || true); do
        # read, not $(<file): bash 5.2 exits under set -e when $(<file) cannot open the file,
        # even on the left of ||, and a process may vanish between pgrep and here.
        read -r stat 2>/dev/null <"/proc/$pid/stat" || continue
        stat=${stat##*) }
        [[ ${stat:0:1} == Z ]] || return 0
    done
    return 1
}
stop_group() {
    local pgid=$1 tries
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for ((tries = 0; tries < 400; tries++)); do
        group_alive "$pgid" || break
        sleep 0.005
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    wait "$pgid" 2>/dev/null || true
    local kept=() group
    for group in "${groups[@]}"; do [[ $group == "$pgid" ]] || kept+=("$group"); done
    groups=("${kept[@]}")
}
cleanup() {
    trap - EXIT INT TERM
    local group
    for group in "${groups[@]}"; do kill -TERM -- "-$group" 2>/dev/null || true; done
    sleep 0.2
    for group in "${groups[@]}"; do kill -KILL -- "-$group" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "bench.sh: interrupted" >&2; exit 130' INT TERM

# start_group LOG COMMAND...: runs COMMAND in a new session with stderr to LOG; sets $started.
started=''
start_group() {
    local log=$1
    shift
    # Emptied here, not by the child's redirection: that one happens after the fork, and a
    # reader could meanwhile see the previous run's lines in a reused log.
    : >"$log"
    setsid "$@" </dev/null >/dev/null 2>>"$log" &
    started=$!
    groups+=("$started")
}

# wait_line LOG PID PATTERN: waits for PATTERN in LOG while PID lives.
wait_line() {
    local log=$1 pid=$2 pattern=$3 deadline=$((SECONDS + 10))
    until grep -q "$pattern" "$log" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            echo "bench.sh: process $pid did not start; its log ($log):" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.005
    done
}

note() {
    echo "note: $*" >&2
    printf '%s\n' "$*" >>"$raw/notes.tsv"
}
printf 'note\n' >"$raw/notes.tsv"
if [[ -n ${floor_note:-} ]]; then note "$floor_note"; fi

# The memory measure holds 2 sockets per connection in the relay (and one in the echo, which is
# started long before): raise the descriptor limit for everything this script starts.
needed_fds=$((2 * idle_conns + 2 * busy_conns + 64))
if (($(ulimit -n) < needed_fds)); then ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; fi
if (($(ulimit -n) < needed_fds)); then
    note "ulimit -n is $(ulimit -n), below the $needed_fds descriptors the memory measure needs"
fi

# --- the chain -----------------------------------------------------------------------------------

# "quiet" and "hog" are the knobs section's: the split placement, with CPU 1 to the hop alone
# or shared with a CPU-bound process.
cpu_of() { if [[ $1 == one ]]; then echo "$client_cpu"; else echo "$hop_cpu"; fi; }

help_text=$("$bin" --help)
# The latency and throughput figures are read from the source's JSON report (--json), not from
# its text on stderr; a build from before that option cannot be measured by these sections.
if { wants latency || wants knobs || wants integrity || wants throughput; } && ! grep -q -- '--json PATH' <<<"$help_text"; then
    echo "bench.sh: $given_bin has no --json (a build older than the JSON report); the latency, knobs," \
        "integrity and throughput sections read it (--only syscalls,rss work without it)" >&2
    exit 1
fi
busy_poll=false
if grep -q -- '--busy-poll' <<<"$help_text"; then
    busy_poll=true
    bp_line=$(grep -m 1 -- '--busy-poll' <<<"$help_text")
    if [[ -z $busy_poll_args ]]; then
        busy_poll_args=--busy-poll
        if grep -q -- '--cpu N' <<<"$help_text"; then busy_poll_args+=' --cpu {cpu}'; fi
        if [[ $bp_line =~ --busy-poll[=\ ]([A-Z][A-Z_]*) ]]; then
            note "the relay's --busy-poll takes a value (${BASH_REMATCH[1]}); pass --busy-poll-args; busy-poll variant skipped"
            busy_poll=false
        fi
    fi
else
    note "the relay has no --busy-poll yet (not in --help): busy-poll variant skipped"
fi

# knob_args KIND CPU: the relay options of one of our variants.
knob_args() {
    case $1 in
        ours) ;;
        ours-bp) echo "${busy_poll_args//\{cpu\}/$2}" ;;
        ours-rt) echo --realtime ;;
        ours-mlock) echo --mlock ;;
        ours-bp-rt) echo "${busy_poll_args//\{cpu\}/$2} --realtime --mlock" ;;
        # The kernel-evidence variants: the source asks the hops (evidence_args), not the relay's
        # own options.
        ours-nokernel | ours-sample | ours-stamps | ours-quickack) ;;
        *) echo "bench.sh: unknown variant $1" >&2; return 1 ;;
    esac
}

socat_fork=,fork
# start_hop KIND CPU NEXT NAME: starts one hop forwarding to NEXT; sets $hop_addr and $hop_pgid.
hop_addr='' hop_pgid=''
start_hop() {
    local kind=$1 cpu=$2 next=$3 name=$4 port
    local log=$logs/hops/$name.log
    case $kind in
        ours | ours-*)
            local extra=()
            read -r -a extra <<<"$(knob_args "$kind" "$cpu")"
            start_group "$log" taskset -c "$cpu" "$bin" --listen 127.0.0.1:0 --forward-to "$next" \
                --name "$name" "${extra[@]}"
            wait_line "$log" "$started" 'listening on ' || return 1
            # A knob the host refused (SCHED_FIFO, mlock) would leave its row mislabelled.
            local refused
            refused=$(grep -m 1 'warning: cannot' "$log" || true)
            if [[ -n $refused ]] && ! grep -qF -- "$kind: $refused" "$raw/notes.tsv"; then
                note "$kind: $refused"
            fi
            hop_addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$log" | head -n 1)
            ;;
        floor | floor-bp)
            port=$("${lib[@]}" free-ports 1)
            local spin=()
            if [[ $kind == floor-bp ]]; then spin=(--busy-poll); fi
            start_group "$log" taskset -c "$cpu" "$floor_bin" "$port" "${next##*:}" "${spin[@]}"
            ;;
        socat)
            port=$("${lib[@]}" free-ports 1)
            # -t 5: after one side's end of stream, wait up to 5 s for the other side's answers.
            start_group "$log" taskset -c "$cpu" socat -t 5 \
                "TCP4-LISTEN:$port,bind=127.0.0.1,reuseaddr,nodelay$socat_fork" "TCP4:$next,nodelay"
            ;;
        haproxy)
            port=$("${lib[@]}" free-ports 1)
            sed -e "s/@LISTEN_PORT@/$port/" -e "s/@NEXT_PORT@/${next##*:}/" \
                scripts/bench/haproxy.cfg.in >"$tmp/$name.cfg"
            start_group "$log" taskset -c "$cpu" haproxy -db -q -f "$tmp/$name.cfg"
            ;;
        nginx)
            port=$("${lib[@]}" free-ports 1)
            mkdir -p "$tmp/$name"
            sed -e "s/@LISTEN_PORT@/$port/" -e "s/@NEXT_PORT@/${next##*:}/" \
                -e "s|@PIDFILE@|$tmp/$name/nginx.pid|" scripts/bench/nginx.conf.in >"$tmp/$name/nginx.conf"
            start_group "$log" taskset -c "$cpu" nginx -e stderr -p "$tmp/$name" -c "$tmp/$name/nginx.conf"
            ;;
        *) echo "bench.sh: unknown hop kind $kind" >&2; return 1 ;;
    esac
    hop_pgid=$started
    if [[ $kind != ours* ]]; then
        "${lib[@]}" wait-listen "$port" 10 || { cat "$log" >&2; return 1; }
        kill -0 "$hop_pgid" 2>/dev/null || { echo "bench.sh: $name exited:" >&2; cat "$log" >&2; return 1; }
        hop_addr=127.0.0.1:$port
    fi
}

# build_chain KIND HOPS CPU: hop 1 -> ... -> hop HOPS -> echo; sets $entry and $chain_pgids.
entry='' chain_pgids=()
build_chain() {
    local kind=$1 hops=$2 cpu=$3 index next=$echo_addr
    chain_pgids=()
    if ! kill -0 "$echo_pgid" 2>/dev/null; then
        echo "bench.sh: the echoing end has exited; its log ($logs/hops/echo.log):" >&2
        tail -n 5 "$logs/hops/echo.log" >&2
        exit 1
    fi
    for ((index = hops; index >= 1; index--)); do
        start_hop "$kind" "$cpu" "$next" "$kind-$index" || return 1
        chain_pgids+=("$hop_pgid")
        next=$hop_addr
    done
    entry=$next
}
stop_chain() {
    local pgid
    for pgid in "${chain_pgids[@]}"; do stop_group "$pgid"; done
    chain_pgids=()
}

# probe ADDR COUNT SIZE LOG [JSON]: one ping-pong run of our source, pinned to the client CPU;
# its text report goes to LOG, and with JSON its report as a JSON document (--json) to JSON,
# which is what benchlib reads.
probe() {
    local timeout_s=$(($2 / 500 + 30)) json_args=()
    if (($# > 4)); then
        rm -f "$5"
        json_args=(--json "$5")
    fi
    timeout --foreground -k 5 "$timeout_s" taskset -c "$client_cpu" "$bin" --forward-to "$1" --name source \
        --count "$2" --size "$3" --interval 0 --window 1 "${json_args[@]}" "${probe_args[@]}" \
        </dev/null >/dev/null 2>"$4"
}
# Extra source options for the next probes (the kernel-evidence variants).
probe_args=()
# evidence_args KIND: the source options of one of the kernel-evidence variants (ours: the
# default, TCP_INFO readings on; the hops learn the rest from the source's path announcement).
evidence_args() {
    case $1 in
        ours-nokernel) echo --kernel-info off ;;
        ours-sample) echo --kernel-stamps sample ;;
        ours-stamps) echo --kernel-stamps all ;;
        ours-quickack) echo --quickack ;;
    esac
}

# others_mark, then others_share: the share (percent of all CPUs) that processes other than
# ours used in between, so a run disturbed by other work on the machine can be told apart.
ncpus=$(nproc)
others_reading=''
others_mark() { others_reading=$("${lib[@]}" others $$ "${groups[@]}"); }
others_share() {
    local now
    now=$("${lib[@]}" others $$ "${groups[@]}")
    awk -v a="$others_reading" -v b="$now" -v n="$ncpus" 'BEGIN {
        split(a, x, " "); split(b, y, " "); d = y[1] - x[1]
        share = d > 0 ? (y[2] - x[2]) / d / n * 100 : 0
        printf "%.0f", share }'
}

start_group "$logs/hops/echo.log" taskset -c "$client_cpu" "$bin" --listen 127.0.0.1:0 --name echo
echo_pgid=$started
wait_line "$logs/hops/echo.log" "$echo_pgid" 'listening on '
echo_addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$logs/hops/echo.log" | head -n 1)

meta() { printf '%s\t%s\n' "$1" "$2" >>"$raw/meta.tsv"; }
# section NAME: starts timing a section; the previous one's duration goes to the meta data.
section_name='' section_start=$SECONDS
section() {
    if [[ -n $section_name ]]; then
        meta "seconds_$section_name" $((SECONDS - section_start))
        echo "bench.sh: $section_name took $((SECONDS - section_start)) s" >&2
    fi
    section_name=$1 section_start=$SECONDS
}
printf 'key\tvalue\n' >"$raw/meta.tsv"
meta command "$command_line"
meta mode "$mode"
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta commit "$(git describe --always --dirty 2>/dev/null || echo unknown)"
meta binary "$given_bin ($("$bin" --version 2>/dev/null || echo '?'))"
meta kernel "$(uname -r)"
meta cpus "$(nproc)"
meta cpu_model "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
meta socat "$(socat -V 2>/dev/null | sed -n 's/^socat version \([^ ]*\).*/socat \1/p' | head -n 1)"
meta haproxy "$(haproxy -v 2>/dev/null | sed -n 's/^HAProxy version \([^ ]*\).*/haproxy \1/p' | head -n 1)"
meta nginx "$(nginx -v 2>&1 | sed -n 's|.*nginx/\([^ ]*\).*|nginx \1|p')"
meta loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
# Other work on the machine shows in every tail: measure how busy the CPUs are without us.
meta background_start "$("${lib[@]}" cpu-busy 1)"
meta reps "$reps"
meta frames "$frames"
meta warmup "$warmup"
meta knob_frames "$knob_frames"
meta knob_reps "$knob_reps"
meta evidence_frames "$evidence_frames"
meta evidence_reps "$evidence_reps"
meta watch_frames "$watch_frames"
meta watch_reps "$watch_reps"
meta watch_realtime "$watch_realtime"
meta throughput_reps "$throughput_reps"
meta client_cpu "$client_cpu"
meta hop_cpu "$hop_cpu"
meta busy_poll "$busy_poll"
meta busy_poll_args "$busy_poll_args"

# Variants per placement: "KIND HOPS" pairs, direct first.
variants_for() {
    local placement=$1 kind hops
    echo "direct 0"
    for hops in 1 2; do
        for kind in ours socat haproxy nginx; do echo "$kind $hops"; done
        if $floor; then echo "floor $hops"; fi
        if [[ $placement == split && $hops == 1 ]]; then
            if $busy_poll; then echo "ours-bp $hops"; fi
            if $floor; then echo "floor-bp $hops"; fi
        fi
    done
}
if $floor; then
    note "floor = scripts/bench/floor-relay.c, a relay in C that only copies bytes (one read, one write, epoll, TCP_NODELAY): about what any hop must pay on this machine; floor-bp spins on its poll like ours-bp"
fi
if $busy_poll; then
    note "ours-bp = our relay with '$busy_poll_args', run only as one hop on CPU $hop_cpu: a spinning hop needs a CPU of its own (two would share CPU $hop_cpu, and spinning next to the source and echo on CPU $client_cpu would starve them)"
fi

# --- latency ------------------------------------------------------------------------------------

# run_latency PLACEMENT SIZE KIND HOPS REP: one measured run, appended to $latency_table.
latency_table='' run_frames=''
run_latency() {
    local placement=$1 size=$2 kind=$3 hops=$4 rep=$5 status=ok rc=0 numbers="" p50 p99 others_pct=0
    local log=$logs/latency/$placement-$size-$kind-x$hops-r$rep.txt
    local json=${log%.txt}.json
    if ((hops > 0)); then
        build_chain "$kind" "$hops" "$(cpu_of "$placement")" || status="hop did not start"
    else
        entry=$echo_addr
    fi
    read -r -a probe_args <<<"$(evidence_args "$kind")"
    if [[ $status == ok ]]; then
        probe "$entry" "$warmup" "$size" "$log.warmup" || rc=$?
        if ((rc)); then
            status="warm-up failed (exit $rc), see $log.warmup"
        else
            others_mark
            probe "$entry" "$run_frames" "$size" "$log" "$json" || rc=$?
            others_pct=$(others_share)
            if ((rc)); then
                status="source failed (exit $rc), see $log"
            elif ! numbers=$("${lib[@]}" parse-latency "$json" 2>&1); then
                status=$numbers numbers=""
            fi
        fi
    fi
    probe_args=()
    stop_chain
    if [[ -z $numbers ]]; then numbers=$'0\t0\t0\t0\t0\t0'; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$placement" "$size" "$kind" "$hops" "$rep" "$numbers" \
        "$others_pct" "$status" >>"$latency_table"
    if [[ $status == ok ]]; then
        IFS=$'\t' read -r _ p50 p99 _ <<<"$numbers"
        status="p50 $p50  p99 $p99 µs  (other work: $others_pct% of the CPUs)"
    fi
    printf '  %-5s %4s B  %-8s x%s  rep %s  %s\n' "$placement" "$size" "$kind" "$hops" "$rep" "$status" >&2
}

latency_header() {
    printf 'placement\tsize\tvariant\thops\trep\tcount\tp50\tp99\tp99.9\tmax\tmean\tothers_pct\tstatus\n'
}

# run_rotated PLACEMENT SIZE REP "KIND HOPS"...: one run of each variant, the order rotated by
# the repetition so that no variant always runs right after another.
run_rotated() {
    local placement=$1 size=$2 rep=$3 index kind hops
    shift 3
    for ((index = 0; index < $#; index++)); do
        read -r kind hops <<<"${@:(index + rep - 1) % $# + 1:1}"
        run_latency "$placement" "$size" "$kind" "$hops" "$rep"
    done
}

if wants latency; then
    section latency
    latency_table=$raw/latency.tsv run_frames=$frames
    latency_header >"$latency_table"
    echo "bench.sh: latency, $reps repetitions of every variant, $frames round trips each" >&2
    for ((rep = 1; rep <= reps; rep++)); do
        for placement in "${placement_list[@]}"; do
            for size in "${size_list[@]}"; do
                mapfile -t variants < <(variants_for "$placement")
                run_rotated "$placement" "$size" "$rep" "${variants[@]}"
            done
        done
    done
fi

# --- knobs --------------------------------------------------------------------------------------

# What each of our low-latency options changes, one hop on CPU 1, 64 B frames: with CPU 1 the
# hop's alone ("quiet"), and shared with a CPU-bound process at normal priority ("hog"), the
# host the options are for. nginx and the floor are measured alike, for reference.
knob_variants() {
    echo "direct 0"
    local kind
    for kind in ours ours-rt ours-mlock nginx; do echo "$kind 1"; done
    if $busy_poll; then echo "ours-bp 1"; echo "ours-bp-rt 1"; fi
    if $floor; then echo "floor 1"; echo "floor-bp 1"; fi
}
if wants knobs; then
    section knobs
    latency_table=$raw/knobs.tsv run_frames=$knob_frames
    latency_header >"$latency_table"
    echo "bench.sh: knobs, $knob_reps repetitions, $knob_frames round trips each, quiet and next to a CPU hog" >&2
    mapfile -t variants < <(knob_variants)
    for ((rep = 1; rep <= knob_reps; rep++)); do
        for condition in quiet hog; do
            hog=''
            if [[ $condition == hog ]]; then
                start_group "$logs/hops/hog.log" taskset -c "$hop_cpu" bash -c 'while :; do :; done'
                hog=$started
            fi
            run_rotated "$condition" 64 "$rep" "${variants[@]}"
            if [[ -n $hog ]]; then stop_group "$hog"; fi
        done
    done
fi

# --- kernel evidence ------------------------------------------------------------------------------

# What the kernel evidence costs a probe: one hop of ours, 64 B frames, with the evidence off
# (--kernel-info off), on (the default: TCP_INFO on the hops' 100 ms timer), with transmit
# stamps sampled and on every write, and with --quickack. Source and echo on CPU 0, the hop on CPU 1 (taskset -c),
# variants alternated.
if wants evidence; then
    section evidence
    latency_table=$raw/evidence.tsv run_frames=$evidence_frames
    latency_header >"$latency_table"
    echo "bench.sh: kernel evidence, $evidence_reps repetitions, $evidence_frames round trips each, one hop on CPU $hop_cpu" >&2
    for ((rep = 1; rep <= evidence_reps; rep++)); do
        run_rotated split 64 "$rep" "direct 0" "ours-nokernel 1" "ours 1" "ours-sample 1" "ours-stamps 1" \
            "ours-quickack 1"
    done
fi

# --- integrity and throughput ----------------------------------------------------------------------

# run_stream PLACEMENT KIND HOPS INPUT OUTPUT LOG: stdin through the chain, the source's text
# report in LOG and its JSON report (--json, what benchlib reads) beside it. Sets $stream_result
# to "bytes seconds MB/s hop_cpu_s others_pct" (tab-separated), or returns 1 with the reason in
# $stream_error. (Not meant for $(...): the hops must be started by this shell, so that the
# clean-up on Ctrl-C knows them.)
stream_result='' stream_error=''
run_stream() {
    local placement=$1 kind=$2 hops=$3 input=$4 output=$5 log=$6 before=0 after=0 rc=0 numbers
    local json=${6%.txt}.json
    stream_result='' stream_error=''
    if ((hops > 0)); then
        if ! build_chain "$kind" "$hops" "$(cpu_of "$placement")"; then
            stop_chain
            stream_error="hop did not start"
            return 1
        fi
        before=$("${lib[@]}" cputime "${chain_pgids[@]}")
    else
        entry=$echo_addr
    fi
    others_mark
    rm -f "$json"
    timeout --foreground -k 5 600 taskset -c "$client_cpu" "$bin" --forward-to "$entry" --name source -s "$throughput_block" \
        --json "$json" <"$input" >"$output" 2>"$log" || rc=$?
    local others_pct
    others_pct=$(others_share)
    # Read the hops' CPU time while they still run (socat's per-connection child is counted
    # directly while it lives, through its parent's cutime once reaped).
    if ((hops > 0)); then after=$("${lib[@]}" cputime "${chain_pgids[@]}"); fi
    stop_chain
    if ((rc)); then
        stream_error="source exit $rc, see $log"
        return 1
    fi
    if ! numbers=$("${lib[@]}" parse-throughput "$json" 2>&1); then
        stream_error=$numbers
        return 1
    fi
    stream_result=$(printf '%s\t%s\t%s' "$numbers" "$(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.3f", a - b }')" \
        "$others_pct")
}

stream_variants() {
    local placement=$1
    echo "direct 0"
    local kind
    for kind in ours socat haproxy nginx; do echo "$kind 2"; done
}

if wants integrity; then
    section integrity
    printf 'placement\tvariant\thops\tbytes\tstatus\n' >"$raw/integrity.tsv"
    head -c "$check_bytes" /dev/urandom >"$tmp/random.bin"
    expected=$(sha256sum <"$tmp/random.bin" | cut -d' ' -f1)
    placement=${placement_list[-1]}
    echo "bench.sh: integrity, $check_bytes random bytes through each variant ($placement placement)" >&2
    mapfile -t variants < <(stream_variants "$placement")
    for variant in "${variants[@]}"; do
        read -r kind hops <<<"$variant"
        log=$logs/throughput/integrity-$kind-x$hops.txt
        if run_stream "$placement" "$kind" "$hops" "$tmp/random.bin" "$tmp/answer.bin" "$log"; then
            got=$(sha256sum <"$tmp/answer.bin" | cut -d' ' -f1)
            if [[ $got == "$expected" ]]; then status=ok; else status="MISMATCH (sha256 $got)"; fi
        else
            status=$stream_error
        fi
        rm -f "$tmp/answer.bin"
        printf '%s\t%s\t%s\t%s\t%s\n' "$placement" "$kind" "$hops" "$check_bytes" "$status" >>"$raw/integrity.tsv"
        printf '  %-8s x%s  %s\n' "$kind" "$hops" "$status" >&2
    done
    rm -f "$tmp/random.bin"
fi

if wants throughput; then
    section throughput
    printf 'placement\tvariant\thops\trep\tblock\tbytes\tseconds\tmb_per_s\thop_cpu_s\tothers_pct\tstatus\n' \
        >"$raw/throughput.tsv"
    # A sparse file: reading it costs no disk and no extra process in the pipeline.
    truncate -s "$bytes" "$tmp/zero.bin"
    echo "bench.sh: throughput, $bytes bytes, -s $throughput_block, $throughput_reps repetitions" >&2
    for ((rep = 1; rep <= throughput_reps; rep++)); do
        for placement in "${placement_list[@]}"; do
            mapfile -t variants < <(stream_variants "$placement")
            count=${#variants[@]}
            for ((index = 0; index < count; index++)); do
                read -r kind hops <<<"${variants[(index + rep - 1) % count]}"
                log=$logs/throughput/$placement-$kind-x$hops-r$rep.txt
                if run_stream "$placement" "$kind" "$hops" "$tmp/zero.bin" /dev/null "$log"; then
                    IFS=$'\t' read -r got seconds mb_per_s cpu_s others_pct <<<"$stream_result"
                    status=ok
                else
                    got=0 seconds=0 mb_per_s=0 cpu_s=0 others_pct=0 status=$stream_error
                fi
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$placement" "$kind" "$hops" "$rep" "$throughput_block" \
                    "$got" "$seconds" "$mb_per_s" "$cpu_s" "$others_pct" "$status" >>"$raw/throughput.tsv"
                printf '  %-5s %-8s x%s  rep %s  %s MB/s, hop CPU %s s, other work %s%%  %s\n' "$placement" "$kind" \
                    "$hops" "$rep" "$mb_per_s" "$cpu_s" "$others_pct" "$([[ $status == ok ]] || echo "$status")" >&2
            done
        done
    done
    rm -f "$tmp/zero.bin"
fi

# --- system calls per frame ----------------------------------------------------------------------

if wants syscalls; then
    section syscalls
    printf 'variant\tframes\ttool\tsyscall\tcount\tper_frame\n' >"$raw/syscalls.tsv"
    names=(read write recvfrom sendto readv writev recvmsg sendmsg recvmmsg sendmmsg splice
        epoll_wait epoll_pwait epoll_pwait2 epoll_ctl poll ppoll select pselect6 clock_gettime
        gettimeofday nanosleep clock_nanosleep sched_yield futex getpid getsockopt setsockopt
        ioctl fcntl accept4 connect shutdown close mmap munmap mremap brk madvise)
    events=raw_syscalls:sys_enter
    for name in "${names[@]}"; do events+=",syscalls:sys_enter_$name"; done
    tool=strace
    if command -v perf >/dev/null && perf stat -x, -e "$events" true >/dev/null 2>&1; then
        tool=perf
    fi
    echo "bench.sh: syscalls per round trip, one hop on CPU $hop_cpu, $syscall_frames frames of 64 B ($tool)" >&2
    # ours: the default (the hops' TCP_INFO readings on); ours-nokernel: --kernel-info off;
    # ours-sample: --kernel-stamps sample (one write per socket every 10 ms stamped);
    # ours-stamps: --kernel-stamps all (transmit timestamps read from the error queue);
    # ours-quickack: --quickack (TCP_QUICKACK after every read).
    kinds=(ours ours-nokernel ours-sample ours-stamps ours-quickack socat haproxy nginx)
    if $busy_poll; then kinds+=(ours-bp); fi
    # socat without fork: the process that accepts is the one that forwards, so it can be watched.
    socat_fork=
    for kind in "${kinds[@]}"; do
        chain_kind=$kind
        read -r -a probe_args <<<"$(evidence_args "$kind")"
        case $kind in ours-nokernel | ours-sample | ours-stamps | ours-quickack) chain_kind=ours ;; esac
        if ! build_chain "$chain_kind" 1 "$hop_cpu"; then stop_chain; continue; fi
        counts=$tmp/syscalls-$kind.txt
        if [[ $tool == perf ]]; then
            start_group "$logs/hops/perf-$kind.log" perf stat -x, -o "$counts" -e "$events" -p "${chain_pgids[0]}"
        else
            start_group "$logs/hops/strace-$kind.log" strace -c -f -o "$counts" -p "${chain_pgids[0]}"
        fi
        watcher=$started
        sleep 0.5
        probe "$entry" "$syscall_frames" 64 "$logs/latency/syscalls-$kind.txt" ||
            note "syscall run through $kind failed"
        probe_args=()
        kill -INT "$watcher" 2>/dev/null || true
        wait "$watcher" 2>/dev/null || true
        stop_group "$watcher"
        stop_chain
        if parsed=$("${lib[@]}" "parse-$tool" "$counts" "$syscall_frames"); then
            while IFS=$'\t' read -r name count per_frame; do
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$syscall_frames" "$tool" "$name" "$count" "$per_frame" \
                    >>"$raw/syscalls.tsv"
            done <<<"$parsed"
            printf '  %-8s %s per round trip\n' "$kind" "$(grep '^total' <<<"$parsed" | cut -f3)" >&2
        else
            note "could not count the syscalls of $kind ($tool)"
        fi
    done
    socat_fork=,fork
fi

# --- memory --------------------------------------------------------------------------------------

# rss_row CASE PID NOTE
rss_row() {
    local memory sockets rss_kb hwm_kb size_kb
    if ! memory=$("${lib[@]}" memory "$2") || ! sockets=$("${lib[@]}" sockets "$2"); then
        note "memory: could not read /proc/$2 for '$1' (the relay exited?)"
        return 0
    fi
    read -r rss_kb hwm_kb size_kb <<<"$memory"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$rss_kb" "$hwm_kb" "$size_kb" "$sockets" "$3" >>"$raw/rss.tsv"
    printf '  %-42s VmRSS %s kB, VmHWM %s kB, VmSize %s kB, %s sockets\n' "$1" "$rss_kb" "$hwm_kb" "$size_kb" \
        "$sockets" >&2
}

# wait_sockets PID N SECONDS: until PID holds at least N sockets and their number has stopped
# changing (a relay may open its downstream connections at once or only on the first frame).
wait_sockets() {
    local deadline=$((SECONDS + $3)) count last=-1 steady=0
    while ((SECONDS < deadline)); do
        count=$("${lib[@]}" sockets "$1")
        if ((count >= $2 && count == last)); then
            steady=$((steady + 1))
            ((steady < 5)) || return 0
        else
            steady=0
        fi
        last=$count
        sleep 0.1
    done
    return 1
}

# A relay that has already served (and closed) a connection can use memory differently from a
# fresh one: after freeing its first large buffers, glibc raises its mmap threshold and later
# buffers come from the heap, where calloc must zero reused memory. So each case is measured
# on a fresh relay and on one that has first carried one short connection.
memory_relay() {
    local served=$1
    build_chain ours 1 "$hop_cpu" || { stop_chain; echo "bench.sh: the relay did not start" >&2; exit 1; }
    relay=${chain_pgids[0]}
    if [[ $served == served ]]; then
        probe "$entry" 10 512 "$logs/busy/served-first.txt" || note "memory: the first connection through the relay failed"
    fi
}

if wants rss; then
    section rss
    printf 'case\trss_kb\thwm_kb\tsize_kb\tsockets\tnote\n' >"$raw/rss.tsv"
    mkdir -p "$logs/busy"
    echo "bench.sh: memory of one relay with $idle_conns idle and with $busy_conns busy connections" >&2
    busy_frames=$((busy_seconds * 1000 / 2))
    for state in fresh served; do
        if [[ $state == fresh ]]; then when="fresh relay"; else when="relay that served 1 conn"; fi

        memory_relay "$state"
        rss_row "$when, no connection" "$relay" ""
        start_group "$logs/hops/idle-connections.log" "${lib[@]}" idle-connections "$entry" "$idle_conns" \
            "$tmp/idle.ready" 300
        idler=$started
        if wait_sockets "$relay" $((1 + idle_conns)) 60; then
            rss_row "$when, $idle_conns idle" "$relay" "plain TCP connects that send nothing"
        else
            note "the relay did not reach $idle_conns idle connections; see $logs/hops/idle-connections.log"
        fi
        stop_group "$idler"
        stop_chain

        memory_relay "$state"
        busy_pgids=()
        for ((index = 1; index <= busy_conns; index++)); do
            start_group "$logs/busy/busy-$index.log" taskset -c "$client_cpu" "$bin" --forward-to "$entry" \
                --name "busy-$index" --count "$busy_frames" --size 512 --interval 2ms --window 1
            busy_pgids+=("$started")
        done
        if wait_sockets "$relay" $((1 + 2 * busy_conns)) 30; then
            rss_row "$when, $busy_conns busy" "$relay" \
                "our sources, 512 B frames every 2 ms, --window 1, for ${busy_seconds} s"
        else
            note "the relay did not reach $busy_conns busy connections"
        fi
        failed=0
        for pgid in "${busy_pgids[@]}"; do
            wait "$pgid" || failed=$((failed + 1))
            stop_group "$pgid"
        done
        if ((failed)); then note "$failed of the $busy_conns busy sources failed (logs in $logs/busy)"; fi
        rss_row "$when, busy ones ended" "$relay" "VmHWM = the peak while busy"
        stop_chain
    done
fi

# --- watching: the live view and --metrics ---------------------------------------------------------

# What watching a run costs it (issue 13): probe p50 and p99 through one hop of ours, 64 B probes
# every 250 µs, --window 1, in four variants alternated:
#   view-off  the source under script(1) with --no-live
#   view-on   the same without --no-live: the live view is drawn (TERM=xterm, stderr a terminal)
#   metrics   --no-live --metrics 127.0.0.1:PORT, not scraped
#   scraped   the same, GET /metrics every 100 ms (benchlib scrape)
# All four run under script, so only the view or the scrapes differ. Where each process runs:
# the source's loop on CPU 0 (--cpu 0) with the echoing end (taskset); the relay on CPU 1
# (taskset); script, and with it the source's helper threads (the view, the metrics server, the
# output writer), which the source moves off its --cpu, on CPU 1; the scraper on CPU 1.
watch_variants=(view-off view-on metrics scraped)

# run_watch VARIANT REP: one measured run, appended to $raw/watch.tsv.
run_watch() {
    local variant=$1 rep=$2 status=ok rc=0 numbers='' check='' port='' scraper='' others_pct=0
    local log=$logs/watch/$variant-r$rep.typescript json=$logs/watch/$variant-r$rep.json
    local args=(--no-live) relay=ours rt=()
    if $watch_realtime; then relay=ours-rt rt=(--realtime); fi
    build_chain "$relay" 1 "$hop_cpu" || status="hop did not start"
    if [[ $status == ok ]]; then
        probe "$entry" "$warmup" 64 "$logs/watch/$variant-r$rep.warmup" || status="warm-up failed"
    fi
    if [[ $status == ok ]]; then
        case $variant in
            view-on) args=() ;;
            metrics | scraped)
                port=$("${lib[@]}" free-ports 1)
                args=(--no-live --metrics "127.0.0.1:$port")
                ;;
        esac
        if [[ $variant == scraped ]]; then
            rm -f "$tmp/scrapes"
            start_group "$logs/watch/scraper-r$rep.log" taskset -c "$hop_cpu" "${lib[@]}" scrape "$port" 0.1 \
                "$tmp/scrapes"
            scraper=$started
        fi
        local command
        printf -v command '%q ' env TERM=xterm "$bin" --forward-to "$entry" --name source --count "$watch_frames" \
            --size 64 --interval 250us --window 1 --cpu "$client_cpu" --json "$json" "${rt[@]}" "${args[@]}"
        rm -f "$json"
        others_mark
        timeout --foreground -k 5 $((watch_frames / 2000 + 60)) taskset -c "$hop_cpu" \
            script -q -e -c "$command" "$log" </dev/null >/dev/null 2>&1 || rc=$?
        others_pct=$(others_share)
        if [[ -n $scraper ]]; then
            stop_group "$scraper"
            local answered failed _
            read -r answered failed _ <"$tmp/scrapes" 2>/dev/null || answered=0 failed=0
            check="$answered scrapes answered, $failed failed"
            if ((answered == 0)); then status="no scrape answered"; fi
        fi
        # The view's header line, once per redraw: none without the view.
        local redraws
        redraws=$(grep -ao 'source: live view, ' "$log" | wc -l || true)
        if [[ $variant != scraped ]]; then check="view drawn $redraws times"; fi
        if [[ $variant == view-on ]] && ((redraws == 0)); then status="the view was not drawn"; fi
        if [[ $variant != view-on ]] && ((redraws > 0)); then status="a view was drawn with --no-live"; fi
        if ((rc)); then
            status="source failed (exit $rc), see $log"
        elif [[ $status == ok ]] && ! numbers=$("${lib[@]}" parse-latency "$json" 2>&1); then
            status=$numbers numbers=''
        fi
    fi
    stop_chain
    if [[ -z $numbers ]]; then numbers=$'0\t0\t0\t0\t0\t0'; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$variant" "$rep" "$numbers" "$others_pct" "$check" "$status" >>"$raw/watch.tsv"
    local p50 p99
    IFS=$'\t' read -r _ p50 p99 _ <<<"$numbers"
    printf '  %-8s rep %s  p50 %s  p99 %s µs  (%s; other work %s%%)  %s\n' "$variant" "$rep" "$p50" "$p99" "$check" \
        "$others_pct" "$([[ $status == ok ]] || echo "$status")" >&2
}

if wants watch; then
    section watch
    mkdir -p "$logs/watch"
    printf 'variant\trep\tcount\tp50\tp99\tp99.9\tmax\tmean\tothers_pct\tcheck\tstatus\n' >"$raw/watch.tsv"
    if ! command -v script >/dev/null; then
        note "no script(1) (util-linux): the watch section needs it for a terminal; skipped"
    else
        echo "bench.sh: watch, $watch_reps repetitions, $watch_frames probes every 250 µs each: the live view on and off, --metrics scraped and not" >&2
        if $watch_realtime; then
            # An echoing end of its own with --realtime, on the source's CPU as the other one.
            start_group "$logs/hops/echo-rt.log" taskset -c "$client_cpu" "$bin" --listen 127.0.0.1:0 --name echo \
                --realtime
            wait_line "$logs/hops/echo-rt.log" "$started" 'listening on '
            plain_echo_addr=$echo_addr plain_echo_pgid=$echo_pgid
            echo_pgid=$started
            echo_addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$logs/hops/echo-rt.log" | head -n 1)
            if grep -q 'warning: cannot' "$logs/hops/echo-rt.log"; then
                note "watch: $(grep -m 1 'warning: cannot' "$logs/hops/echo-rt.log")"
            fi
        fi
        for ((rep = 1; rep <= watch_reps; rep++)); do
            count=${#watch_variants[@]}
            for ((index = 0; index < count; index++)); do
                run_watch "${watch_variants[(index + rep - 1) % count]}" "$rep"
            done
        done
        if $watch_realtime; then
            stop_group "$echo_pgid"
            echo_addr=$plain_echo_addr echo_pgid=$plain_echo_pgid
        fi
    fi
fi

# --- summary ------------------------------------------------------------------------------------

section ""
meta seconds_total "$SECONDS"
meta loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"
meta background_end "$("${lib[@]}" cpu-busy 1)"
echo >&2
"${lib[@]}" summarize "$outdir"
