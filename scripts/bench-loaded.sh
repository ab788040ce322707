#!/usr/bin/env bash
# Low jitter under load (issue 15): a probe through one hop while N bulk streams share it. The
# probe is our source (--window 1 --interval 1ms, 64 B) and our echoing end; the bulk streams
# are N more of our sources (stdin from /dev/zero, -w 64, 64 KiB blocks) through the same hop
# for the probe's whole run. The hop is ours, nginx stream (one worker), HAProxy (tcp mode, one
# thread) or the copy-only floor relay (scripts/bench/floor-relay.c); variants alternate within
# each repetition, so drift hits all alike. Placement "split": the hop on CPU 1, everything
# else on CPU 0; "one": everything on CPU 0 (taskset).
#
# Prints, per placement, N and hop, the medians over the repetitions of the probe's p50, p99
# and p99.9 (its end-to-end round trip, from its --json report) and of the bulk streams' total
# throughput; and each hop's ratios to the better anchor (nginx or HAProxy, whichever has the
# lower figure) in the same repetitions; for ours (and each --variant), the p99 of the probe's
# residence in the hop each way, from its stamps: how much of the round trip the hop itself
# holds it (the anchors stamp nothing). Then the idle-connections row: ours holding --idle
# idle connections (path announced, then silent) plus the probe, against ours without them,
# with the hop's resident memory. Raw figures in target/bench/loaded/.
#
# --variant NAME=PATH (repeatable) adds another build of ours as a hop of its own, alternated
# with the others in every repetition: how an alternative rule is measured side by side. The
# probe, the bulk streams and the echoing end stay the --bin build.
#
# --realtime runs the instrument, the probe's source and the echoing end, at SCHED_FIFO
# (--realtime; needs CAP_SYS_NICE), the hops and the bulk sources at normal priority. Without
# it, the probe's round trip on a CPU shared with N busy sources is mostly the echo end waiting
# for that CPU (its receive queue p99 is most of the probe's), whichever hop is measured.
#
# usage: scripts/bench-loaded.sh [--quick] [--reps R] [--streams "1 8 32"] [--placements "split one"]
#                                [--probes N] [--idle N] [--bin PATH] [--variant NAME=PATH]...
#                                [--realtime]
set -Eeuo pipefail
trap 'echo "bench-loaded.sh: line $LINENO: \"$BASH_COMMAND\" failed (status $?)" >&2' ERR

reps=7 streams="1 8 32" placements="split one" probes=3000 idle=10000 given_bin='' outdir=target/bench/loaded
variants=() instrument=()
command_line="scripts/bench-loaded.sh${*:+ $*}"
while (($#)); do
    case $1 in
        --quick) reps=2 streams="1 8" placements=split probes=1000 idle=2000 ;;
        --reps) reps=${2:?}; shift ;;
        --streams) streams=${2:?}; shift ;;
        --placements) placements=${2:?}; shift ;;
        --probes) probes=${2:?}; shift ;;
        --idle) idle=${2:?}; shift ;;
        --realtime) instrument=(--realtime) ;;
        --bin) given_bin=${2:?}; shift ;;
        --variant)
            [[ ${2:?} =~ ^[a-z][a-z0-9_-]{0,7}=.+ ]] || { echo "bench-loaded.sh: --variant wants NAME=PATH (NAME: up to 8 of a-z, 0-9, _ and -), not '$2'" >&2; exit 2; }
            case ${2%%=*} in ours | nginx | haproxy | floor) echo "bench-loaded.sh: --variant name '${2%%=*}' is taken" >&2; exit 2 ;; esac
            [[ -x ${2#*=} ]] || { echo "bench-loaded.sh: --variant ${2%%=*}: '${2#*=}' is not an executable" >&2; exit 2; }
            variants+=("$2"); shift ;;
        -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-loaded.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
(($(nproc) >= 2)) || { echo "bench-loaded.sh: needs 2 CPUs" >&2; exit 1; }
missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nginx >/dev/null || missing+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || missing+=(libnginx-mod-stream)
command -v cc >/dev/null || missing+=(gcc)
if ((${#missing[@]})); then
    ((EUID == 0)) || { echo "bench-loaded.sh: missing ${missing[*]}; run as root to install" >&2; exit 1; }
    policy=/usr/sbin/policy-rc.d made_policy=false
    if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 0755 "$policy"; made_policy=true; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if $made_policy; then rm -f "$policy"; fi
fi
if [[ -z $given_bin ]]; then
    cargo build --release -q
    given_bin=target/release/subsegment-tcp-speeds
fi
mkdir -p "$outdir"
rm -f "$outdir"/*.tsv
bin=$outdir/subsegment-tcp-speeds
cp "$given_bin" "$bin"
floor=$outdir/floor-relay
cc -O2 -Wall -o "$floor" scripts/bench/floor-relay.c
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-loaded.XXXXXX")
# Idle connections need a descriptor each in the hop, and one more each once they announce a
# path (its connection to the echo end): as many as the hard limit allows announce theirs.
ulimit -n "$(ulimit -Hn)"
fd_limit=$(ulimit -n)
announced=$(( (fd_limit - 200) / 2 ))
((announced > idle)) && announced=$idle
((idle + 200 <= fd_limit)) || { echo "bench-loaded.sh: --idle $idle needs a descriptor limit above $((idle + 200)) (ulimit -Hn: $fd_limit)" >&2; exit 1; }

me=bench-loaded.sh
# shellcheck source=scripts/bench/procs.sh
. scripts/bench/procs.sh
cleanup() { stop_from 0; rm -rf "$tmp"; }
trap cleanup EXIT
# hop KIND CPU NEXT_PORT: starts the hop, sets hop_port and hop_pid.
hop() {
    local kind=$1 cpu=$2 next=$3
    hop_port=$(free_port)
    case $kind in # ours, an anchor, the floor or a --variant
        ours) start "$tmp/hop.log" taskset -c "$cpu" "$bin" -l "127.0.0.1:$hop_port" -f "127.0.0.1:$next" -n B ;;
        floor) start "$tmp/hop.log" taskset -c "$cpu" "$floor" "$hop_port" "$next" ;;
        haproxy)
            sed -e "s/@LISTEN_PORT@/$hop_port/" -e "s/@NEXT_PORT@/$next/" scripts/bench/haproxy.cfg.in >"$tmp/haproxy.cfg"
            start "$tmp/hop.log" taskset -c "$cpu" haproxy -db -q -f "$tmp/haproxy.cfg" ;;
        nginx)
            mkdir -p "$tmp/nginx"
            sed -e "s/@LISTEN_PORT@/$hop_port/" -e "s/@NEXT_PORT@/$next/" -e "s|@PIDFILE@|$tmp/nginx/nginx.pid|" \
                scripts/bench/nginx.conf.in >"$tmp/nginx/nginx.conf"
            start "$tmp/hop.log" taskset -c "$cpu" nginx -e stderr -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" ;;
        *) start "$tmp/hop.log" taskset -c "$cpu" "${variant_bin[$kind]}" -l "127.0.0.1:$hop_port" -f "127.0.0.1:$next" -n B ;;
    esac
    hop_pid=${pids[-1]}
    wait_port "$hop_port"
}
# probe CPU PORT JSON [KERNEL EVIDENCE OPTIONS]: the probe run (kernel evidence off unless
# given); its report goes to JSON.
probe() {
    local evidence=("${@:4}")
    ((${#evidence[@]})) || evidence=(--kernel-info off)
    taskset -c "$1" "$bin" -f "127.0.0.1:$2" -n A --count "$probes" --size 64 --window 1 \
        --interval 1ms "${evidence[@]}" ${instrument[@]+"${instrument[@]}"} --json "$3" 2>"$tmp/probe.log" ||
        { cat "$tmp/probe.log" >&2; exit 1; }
}
# bulk CPU PORT SECONDS INDEX: one bulk stream for SECONDS, its report in $tmp/bulk-INDEX.json.
bulk() {
    start "$tmp/bulk-$4.log" sh -c "taskset -c $1 $bin -f 127.0.0.1:$2 -n bulk$4 -w 64 -s 65536 \
        --duration $3 --kernel-info off --json $tmp/bulk-$4.json </dev/zero >/dev/null"
}

echo_port=$(free_port)
start "$tmp/echo.log" taskset -c 0 "$bin" -l "127.0.0.1:$echo_port" -n Z --max-conns 100000 ${instrument[@]+"${instrument[@]}"}
wait_port "$echo_port"
base=${#pids[@]}
declare -A variant_bin=()
hops=(ours)
for variant in "${variants[@]}"; do
    variant_bin[${variant%%=*}]=$(realpath "${variant#*=}")
    hops+=("${variant%%=*}")
done
hops+=(nginx haproxy floor)
probe_seconds=$(python3 -c "print(round($probes / 1000 * 1.5 + 2))")
for rep in $(seq "$reps"); do
    for placement in $placements; do
        hop_cpu=1
        [[ $placement == one ]] && hop_cpu=0
        for n in $streams; do
            for kind in "${hops[@]}"; do
                hop "$kind" "$hop_cpu" "$echo_port"
                for i in $(seq "$n"); do bulk 0 "$hop_port" "$probe_seconds" "$i"; done
                sleep 0.5 # the bulk streams under way before the first probe
                probe 0 "$hop_port" "$tmp/probe.json"
                for pid in "${pids[@]:$((base + 1))}"; do wait "$pid" 2>/dev/null || true; done
                python3 - "$tmp" "$n" "$placement" "$kind" "$rep" >>"$outdir/runs.tsv" <<'EOF'
import json, sys
tmp, n, placement, kind, rep = sys.argv[1:]
report = json.load(open(f"{tmp}/probe.json"))
probe = report["end_to_end"]
# Our hop's own part of the probe's round trip (its residence down and up, from its stamps);
# an anchor stamps nothing, so it has none.
residence = {s["direction"]: s.get("p99_ns") for s in report["subsegments"] if s["kind"] == "relay"}
rate = 0.0
for i in range(1, int(n) + 1):
    report = json.load(open(f"{tmp}/bulk-{i}.json"))
    rate += (report.get("throughput") or {}).get("bytes_per_second") or 0.0
print(f"{placement}\t{n}\t{kind}\t{rep}\t{probe['p50_ns']}\t{probe['p99_ns']}\t{probe['p999_ns']}\t{rate}"
      f"\t{residence.get('down') or ''}\t{residence.get('up') or ''}")
EOF
                stop_from "$base"
                echo "bench-loaded.sh: rep $rep $placement N=$n $kind done" >&2
            done
        done
    done
done

# Idle connections: ours with --idle silent connections (each announced its path, as a
# monitoring fleet's would, asking for the kernel's evidence: TCP_INFO and sampled transmit
# stamps), the probe through it (asking for the same), against the same hop without them.
for rep in $(seq "$reps"); do
    for held in 0 "$idle"; do
        hop ours 1 "$echo_port"
        if ((held > 0)); then
            start "$tmp/idle.log" taskset -c 0 python3 -c '
import socket, struct, sys, time
port, count, announced = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
name = b"idle"
entry = bytes([1, len(name)]) + name + bytes([0, 0, 0])
kernel_evidence = 1 | 2 | 4  # wire::PATH_ASKS_KERNEL_INFO | PATH_ASKS_TX_STAMPS | PATH_SAMPLES_TX_STAMPS
path = b"SSTS" + bytes([4, 2, 0, kernel_evidence]) + struct.pack(">QI", 0, len(entry)) + entry
held = []
for index in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    if index < announced:
        s.sendall(path)
    held.append(s)
print("held", len(held), flush=True)
time.sleep(3600)
' "$hop_port" "$held" "$announced"
            for _ in $(seq 600); do grep -q '^held' "$tmp/idle.log" && break; sleep 0.1; done
            grep -q '^held' "$tmp/idle.log" || { cat "$tmp/idle.log" >&2; exit 1; }
        fi
        probe 0 "$hop_port" "$tmp/probe.json" --kernel-info on --kernel-stamps sample
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$hop_pid/status")
        python3 - "$tmp" "$held" "$rep" "$rss" "$((held > 0 ? announced : 0))" >>"$outdir/idle.tsv" <<'EOF'
import json, sys
tmp, held, rep, rss, announced = sys.argv[1:]
probe = json.load(open(f"{tmp}/probe.json"))["end_to_end"]
print(f"{held}\t{rep}\t{probe['p50_ns']}\t{probe['p99_ns']}\t{probe['p999_ns']}\t{rss}\t{announced}")
EOF
        stop_from "$base"
    done
done

python3 - "$outdir" "$command_line" "$reps" "${hops[@]}" <<'EOF' | tee "$outdir/table.txt"
import os, statistics, sys
outdir, command, reps, hops = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
# --placements ' ' measures only the idle-connections rows.
runs = [line.rstrip("\n").split("\t") for line in open(f"{outdir}/runs.tsv")] if os.path.exists(f"{outdir}/runs.tsv") else []
med = lambda values: statistics.median(values) if values else float("nan")
print(f"# {command}; medians of {reps} alternated repetitions; probe: 64 B, --window 1, --interval 1ms;")
print("# bulk: N sources of 64 KiB blocks, -w 64; split: hop on CPU 1, the rest on CPU 0; one: all on CPU 0")
print(f"{'place':<6}{'N':>3} {'hop':<8}{'p50 µs':>9}{'p99 µs':>10}{'p99.9 µs':>10}{'bulk MB/s':>11}"
      f"{'p99/best':>10}{'p99.9/best':>12}{'bulk/best':>11}{'hop p99 down/up µs':>20}")
keys = sorted({(r[0], int(r[1])) for r in runs}, key=lambda k: (k[0] != "split", k[1]))
for placement, n in keys:
    rows = [r for r in runs if r[0] == placement and int(r[1]) == n]
    by = {}
    for r in rows:
        hop_p99 = [int(x) if x else None for x in (r[8:10] if len(r) >= 10 else ("", ""))]
        by.setdefault(r[2], []).append((int(r[3]), int(r[4]), int(r[5]), int(r[6]), float(r[7]), *hop_p99))
    def stat(kind, i):
        return med([v[i] for v in by.get(kind, []) if v[i] is not None])
    def ratio(kind, i, best_of):
        # per repetition: kind's figure over the better anchor's in the same repetition
        anchors = {rep: best_of([v[i] for k in ("nginx", "haproxy") for v in by.get(k, []) if v[0] == rep])
                   for rep, *_ in by.get(kind, [])}
        return med([v[i] / anchors[v[0]] for v in by.get(kind, []) if anchors.get(v[0])])
    for kind in hops:
        if kind not in by:
            continue
        print(f"{placement:<6}{n:>3} {kind:<8}{stat(kind,1)/1e3:>9.1f}{stat(kind,2)/1e3:>10.1f}{stat(kind,3)/1e3:>10.1f}"
              f"{stat(kind,4)/1e6:>11.1f}{ratio(kind,2,min):>10.2f}{ratio(kind,3,min):>12.2f}{ratio(kind,4,max):>11.2f}"
              + (f"{stat(kind,5)/1e3:>12.1f} / {stat(kind,6)/1e3:<6.1f}" if by[kind][0][5] is not None else ""))
idle = [line.rstrip("\n").split("\t") for line in open(f"{outdir}/idle.tsv")]
print()
print(f"{'ours, idle connections held (kernel evidence on)':<48}{'p50 µs':>9}{'p99 µs':>10}{'p99.9 µs':>10}{'RSS MiB':>9}")
for held in sorted({int(r[0]) for r in idle}):
    rows = [r for r in idle if int(r[0]) == held]
    label = f"{held} ({rows[0][6]} past path discovery)"
    print(f"{label:<48}{med([int(r[2]) for r in rows])/1e3:>9.1f}{med([int(r[3]) for r in rows])/1e3:>10.1f}"
          f"{med([int(r[4]) for r in rows])/1e3:>10.1f}{med([int(r[5]) for r in rows])/1024:>9.1f}")
EOF
