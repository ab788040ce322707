#!/usr/bin/env python3
"""Helpers for scripts/bench.sh (standard library only).

bench.sh runs the processes; this file reads what they leave behind and does the arithmetic:

  free-ports N                  N free TCP ports on 127.0.0.1, one a line
  wait-listen PORT SECONDS      wait until something listens on 127.0.0.1:PORT (from /proc)
  cputime PGID...               CPU seconds (user+system, reaped children included) of every
                                process in the given process groups
  cpu-busy SECONDS              how busy each CPU is over SECONDS (other work on the machine)
  others SELF_PID PGID...       "seconds cpu_seconds": a clock, and the CPU time so far of every user
                                process outside this script's own process group and the given
                                groups (other work on the machine; two readings give its share)
  memory PID                    "VmRSS VmHWM VmSize" of one process, in kB
  sockets PID                   how many sockets the process holds
  parse-latency JSON            end-to-end stats of a source report (its --json file):
                                "count p50 p99 p99.9 max mean" in µs
  parse-throughput JSON         "bytes seconds MB/s" from a source report's throughput (--json)
                                Both fail unless every frame was answered, none is missing or
                                corrupted, and the report lists no bug (negative samples).
  parse-perf FILE FRAMES        perf stat -x, output -> "name<TAB>count<TAB>per-frame" lines
  parse-strace FILE FRAMES      strace -c output -> the same
  idle-connections ADDR N READY HOLD
                                open N plain TCP connections that send nothing, write READY when
                                all are up, keep them for HOLD seconds (or until killed)
  scrape PORT EVERY_S OUT       GET /metrics from 127.0.0.1:PORT every EVERY_S seconds (on an
                                absolute schedule; connection refused is retried at the next
                                tick) until SIGTERM, then write "answered failed bytes" to OUT
  summarize OUTDIR              read OUTDIR/raw/*.tsv, print the table, write results.json/.tsv

Units: every latency is in microseconds (the _us suffix), every CPU time in seconds.
"""

import json
import os
import re
import socket
import statistics
import sys
import time


def fail(message):
    print(f"benchlib: {message}", file=sys.stderr)
    sys.exit(1)


# --- processes and sockets --------------------------------------------------------------------


def free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        for sock in sockets:
            print(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()


def listening(port):
    """Whether /proc/net/tcp has a socket in LISTEN state (0A) on 127.0.0.1:port or *:port."""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] in wanted and fields[3] == "0A":
                return True
    return False


def wait_listen(port, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if listening(port):
            return
        time.sleep(0.005)
    fail(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cputime(pgids):
    ticks = os.sysconf("SC_CLK_TCK")
    wanted = {int(pgid) for pgid in pgids}
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = stat_fields(entry)
        # fields[0] is the state (field 3), fields[2] the process group (field 5); utime, stime,
        # cutime and cstime are fields 14-17.
        if fields is None or int(fields[2]) not in wanted:
            continue
        total += sum(int(value) for value in fields[11:15])
    print(f"{total / ticks:.3f}")


def others(self_pid, pgids):
    ticks = os.sysconf("SC_CLK_TCK")
    own = stat_fields(self_pid)
    exclude = {int(pgid) for pgid in pgids} | ({int(own[2])} if own else set())
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = stat_fields(entry)
        # fields[6] is the flags (field 9): kernel threads (PF_KTHREAD) are left out, since
        # softirq work for our own loopback traffic can run in them.
        if fields is None or int(fields[2]) in exclude or int(fields[6]) & 0x00200000:
            continue
        total += sum(int(value) for value in fields[11:15])
    print(f"{time.monotonic():.4f} {total / ticks:.2f}")


def cpu_times():
    """Per CPU: (busy, steal, total) jiffies from /proc/stat."""
    times = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if not re.fullmatch(r"cpu\d+", name):
                continue
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
            busy = user + nice + system + irq + softirq + steal
            times[name] = (busy, steal, busy + idle + iowait)
    return times


def cpu_busy(seconds):
    before = cpu_times()
    time.sleep(seconds)
    after = cpu_times()
    parts = []
    for name in sorted(after, key=lambda cpu: int(cpu[3:])):
        busy, steal, total = (a - b for a, b in zip(after[name], before.get(name, (0, 0, 0))))
        total = max(total, 1)
        parts.append(f"{name} {busy / total * 100:.0f}% busy ({steal / total * 100:.0f}% steal)")
    print(", ".join(parts))


def memory(pid):
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                values[key] = int(rest.split()[0])
    print(values.get("VmRSS", 0), values.get("VmHWM", 0), values.get("VmSize", 0))


def sockets(pid):
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    print(count)


def idle_connections(addr, count, ready_path, hold_s):
    host, _, port = addr.rpartition(":")
    held = []
    for index in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect((host, int(port)))
        except OSError as error:
            fail(f"idle connection {index + 1} of {count} to {addr}: {error}")
        held.append(sock)
    with open(ready_path, "w") as ready:
        ready.write(f"{len(held)}\n")
    time.sleep(hold_s)
    for sock in held:
        sock.close()


# --- reports ------------------------------------------------------------------------------------


def scrape(port, every_s, out_path):
    """A Prometheus-like scraper, as light as one can be: one connection per scrape."""
    import signal

    counts = {"answered": 0, "failed": 0, "bytes": 0}

    def stop(_signal, _frame):
        with open(out_path, "w") as out:
            out.write(f"{counts['answered']} {counts['failed']} {counts['bytes']}\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/openmetrics-text\r\n\r\n"
    started = time.monotonic()
    tick = 0
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(request)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            if answer.startswith(b"HTTP/1.1 200"):
                counts["answered"] += 1
                counts["bytes"] += len(answer)
            else:
                counts["failed"] += 1
        except ConnectionRefusedError:
            pass  # not serving yet
        except OSError:
            counts["failed"] += 1
        tick += 1
        time.sleep(max(0.0, started + tick * every_s - time.monotonic()))


def read(path):
    with open(path, encoding="utf-8", errors="replace") as source:
        return source.read()


def read_report(path):
    """The source's report as written by --json PATH (src/report/report.schema.json)."""
    try:
        with open(path, encoding="utf-8") as source:
            report = json.load(source)
    except (OSError, ValueError) as error:
        fail(f"{path}: no JSON report ({error})")
    if not isinstance(report, dict) or report.get("schema_version") != 1:
        fail(f"{path}: not a schema_version 1 report of subsegment-tcp-speeds")
    return report


def check_complete(path, report):
    """Every frame answered, none missing or corrupted, and no negative sample (a bug)."""
    frames = report["frames"]
    sent, answered, missing = frames["sent"], frames["answered"], frames["missing"]
    corrupted = frames.get("corrupted", 0)
    if answered != sent or missing or corrupted:
        fail(f"{path}: {sent} sent, {answered} answered, {missing} missing, {corrupted} corrupted")
    if report["bugs"]:
        bugs = ", ".join(f"{bug['count']} of {bug['label']}" for bug in report["bugs"])
        fail(f"{path}: negative samples (a bug in the tool): {bugs}")


def parse_latency(path):
    report = read_report(path)
    row = report["end_to_end"]
    if row is None:
        fail(f"{path}: no end-to-end row in the report")
    check_complete(path, report)
    p50, p99, p999, top, mean = (
        row[key] / 1000.0 for key in ("p50_ns", "p99_ns", "p999_ns", "max_ns", "mean_ns")
    )
    print(f"{row['count']}\t{p50:.2f}\t{p99:.2f}\t{p999:.2f}\t{top:.2f}\t{mean:.2f}")


def parse_throughput(path):
    report = read_report(path)
    throughput = report["throughput"]
    if throughput is None or throughput["bytes_per_second"] is None:
        fail(f"{path}: no throughput in the report (nothing answered, or a run too short to rate)")
    check_complete(path, report)
    seconds = throughput["duration_ns"] / 1e9
    mb_per_s = throughput["bytes_per_second"] / 1e6
    print(f"{throughput['payload_bytes']}\t{seconds:.3f}\t{mb_per_s:.2f}")


def parse_perf(path, frames):
    counts = {}
    for line in read(path).splitlines():
        fields = line.split(",")
        if len(fields) < 3 or line.startswith("#"):
            continue
        event = fields[2]
        name = event.split(":", 1)[-1].removeprefix("sys_enter_")
        if event == "raw_syscalls:sys_enter":
            name = "total"
        try:
            counts[name] = int(fields[0])
        except ValueError:
            fail(f"{path}: perf could not count {event}: {fields[0]}")
    if "total" in counts:
        named = sum(count for name, count in counts.items() if name != "total")
        counts["other"] = max(0, counts["total"] - named)
    emit_counts(counts, frames)


def parse_strace(path, frames):
    counts = {}
    for line in read(path).splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    counts["total"] = sum(counts.values())
    emit_counts(counts, frames)


def emit_counts(counts, frames):
    for name, count in sorted(counts.items(), key=lambda item: (item[0] == "total", -item[1])):
        if count:
            print(f"{name}\t{count}\t{count / frames:.4f}")


# --- summary ------------------------------------------------------------------------------------

ANCHORS = ("socat", "haproxy", "nginx")
# Above this median share of the CPUs taken by other processes, the table says the run is noisy.
NOISY_PCT = 10
PLACEMENT_LABELS = {"one": "all on one CPU", "split": "hop on the other CPU"}
VARIANT_ORDER = (
    "direct", "ours-nokernel", "ours", "ours-sample", "ours-stamps", "ours-quickack", "ours-rt", "ours-mlock", "ours-bp", "ours-bp-rt", "floor",
    "floor-bp", "socat", "haproxy", "nginx",
)
# The copy-only relay measured beside each of ours: its ratio is the least a relay reaches here.
FLOOR_OF = {"ours": "floor", "ours-bp": "floor-bp"}
# Targets from issue 4: ours / lowest anchor, added latency per hop.
TARGETS = {
    ("one", "ours"): {"p50": 0.9, "p99": 0.85},
    ("split", "ours-bp"): {"p50": 0.33, "p99": 0.45},
}


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path) as table:
        lines = [line.rstrip("\n").split("\t") for line in table if line.strip()]
    if not lines:
        return []
    header, rows = lines[0], lines[1:]
    return [dict(zip(header, row)) for row in rows]


def median(values):
    return statistics.median(values) if values else None


def fmt(value, digits=1, signed=False):
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def order(variant):
    return VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)


def summarize_latency(rows):
    """Medians across repetitions, and added latency per hop (variant minus the same
    repetition's direct run, divided by the hops), also as medians across repetitions."""
    ok = [row for row in rows if row["status"] == "ok"]
    direct = {
        (row["placement"], row["size"], row["rep"]): row for row in ok if row["variant"] == "direct"
    }
    groups = {}
    for row in ok:
        key = (row["placement"], int(row["size"]), row["variant"], int(row["hops"]))
        groups.setdefault(key, []).append(row)
    summary = []
    for (placement, size, variant, hops), runs in sorted(
        groups.items(), key=lambda item: (item[0][0] != "one", item[0][1], item[0][3], order(item[0][2]))
    ):
        entry = {
            "placement": placement,
            "size": size,
            "variant": variant,
            "hops": hops,
            "reps": len(runs),
            "frames_per_rep": int(runs[0]["count"]),
        }
        for stat in ("p50", "p99", "p99.9", "max", "mean"):
            entry[f"{stat}_us"] = median([float(run[stat]) for run in runs])
        entry["max_of_reps_us"] = max(float(run["max"]) for run in runs)
        entry["others_pct"] = median([float(run.get("others_pct") or 0) for run in runs])
        for stat in ("p50", "p99"):
            entry[f"{stat}_of_each_rep_us"] = [float(run[stat]) for run in runs]
        if hops:
            for stat in ("p50", "p99", "p99.9", "max"):
                added = []
                for run in runs:
                    base = direct.get((placement, run["size"], run["rep"]))
                    if base:
                        added.append((float(run[stat]) - float(base[stat])) / hops)
                entry[f"added_{stat}_per_hop_us"] = median(added)
        summary.append(entry)
    # Ratios against the lowest anchor of the same placement, size and hop count.
    for entry in summary:
        if not entry["hops"]:
            continue
        for stat in ("p50", "p99"):
            anchors = [
                other[f"added_{stat}_per_hop_us"]
                for other in summary
                if other["variant"] in ANCHORS
                and (other["placement"], other["size"], other["hops"])
                == (entry["placement"], entry["size"], entry["hops"])
                and other.get(f"added_{stat}_per_hop_us") is not None
            ]
            ours = entry.get(f"added_{stat}_per_hop_us")
            lowest = min(anchors) if anchors else None
            entry[f"lowest_anchor_added_{stat}_us"] = lowest
            entry[f"ratio_{stat}_vs_lowest_anchor"] = (
                ours / lowest if ours is not None and lowest and lowest > 0 else None
            )
            if anchors:
                entry[f"lowest_anchor_{stat}"] = next(
                    other["variant"]
                    for other in summary
                    if other["variant"] in ANCHORS
                    and (other["placement"], other["size"], other["hops"])
                    == (entry["placement"], entry["size"], entry["hops"])
                    and other.get(f"added_{stat}_per_hop_us") == lowest
                )
    failed = [row for row in rows if row["status"] != "ok"]
    return summary, failed


def target_checks(latency, throughput):
    checks = []
    by_variant = {
        (entry["placement"], entry["size"], entry["variant"], entry["hops"]): entry for entry in latency
    }
    for entry in latency:
        goal = TARGETS.get((entry["placement"], entry["variant"]))
        if not goal or not entry["hops"]:
            continue
        floor = by_variant.get(
            (entry["placement"], entry["size"], FLOOR_OF.get(entry["variant"]), entry["hops"]), {}
        )
        for stat, limit in goal.items():
            ratio = entry.get(f"ratio_{stat}_vs_lowest_anchor")
            floor_ratio = floor.get(f"ratio_{stat}_vs_lowest_anchor")
            checks.append(
                {
                    "what": f"{PLACEMENT_LABELS[entry['placement']]}, {entry['size']} B, "
                    f"{entry['hops']} hop{'s' if entry['hops'] > 1 else ''}: "
                    f"added {stat} per hop, {entry['variant']} / lowest anchor",
                    "ours_us": entry.get(f"added_{stat}_per_hop_us"),
                    "anchor": entry.get(f"lowest_anchor_{stat}"),
                    "anchor_us": entry.get(f"lowest_anchor_added_{stat}_us"),
                    "ratio": ratio,
                    "limit": limit,
                    "pass": ratio is not None and ratio <= limit,
                    "floor": floor.get("variant"),
                    "floor_us": floor.get(f"added_{stat}_per_hop_us"),
                    "floor_ratio": floor_ratio,
                    "floor_passes": floor_ratio is not None and round(floor_ratio, 2) <= limit,
                }
            )
    by_key = {(entry["placement"], entry["variant"]): entry for entry in throughput}
    for placement in sorted({entry["placement"] for entry in throughput}):
        ours = by_key.get((placement, "ours"))
        haproxy = by_key.get((placement, "haproxy"))
        if ours and haproxy and haproxy["mb_per_s"]:
            ratio = ours["mb_per_s"] / haproxy["mb_per_s"]
            checks.append(
                {
                    "what": f"{PLACEMENT_LABELS[placement]}: throughput through 2 hops, ours / haproxy",
                    "ours_us": None,
                    "ours_mb_per_s": ours["mb_per_s"],
                    "anchor": "haproxy",
                    "anchor_mb_per_s": haproxy["mb_per_s"],
                    "ratio": ratio,
                    "limit": 1.0,
                    "at_least": True,
                    "pass": ratio >= 1.0,
                }
            )
    return checks


def summarize_throughput(rows):
    ok = [row for row in rows if row["status"] == "ok"]
    groups = {}
    for row in ok:
        groups.setdefault((row["placement"], row["variant"], int(row["hops"])), []).append(row)
    summary = []
    for (placement, variant, hops), runs in sorted(
        groups.items(), key=lambda item: (item[0][0] != "one", order(item[0][1]))
    ):
        mb_per_s = median([float(run["mb_per_s"]) for run in runs])
        hop_cpu_s = median([float(run["hop_cpu_s"]) for run in runs])
        others_pct = median([float(run.get("others_pct") or 0) for run in runs])
        gigabytes = median([float(run["bytes"]) for run in runs]) / 1e9
        summary.append(
            {
                "placement": placement,
                "variant": variant,
                "hops": hops,
                "reps": len(runs),
                "bytes": int(float(runs[0]["bytes"])),
                "block": int(runs[0]["block"]),
                "mb_per_s": mb_per_s,
                "mb_per_s_all": [float(run["mb_per_s"]) for run in runs],
                "hop_cpu_s": hop_cpu_s,
                "hop_cpu_s_per_gb": hop_cpu_s / gigabytes if hops and gigabytes else None,
                "others_pct": others_pct,
            }
        )
    return summary, [row for row in rows if row["status"] != "ok"]


def placement_text(meta):
    return {
        "one": "all on one CPU: source, echo and every hop pinned to CPU 0 (taskset -c 0)",
        "split": f"hop on the other CPU: source and echo on CPU 0, every hop on CPU {meta.get('hop_cpu', '1')}",
    }


def knob_options(variant, meta):
    busy = meta.get("busy_poll_args", "--busy-poll --cpu {cpu}").replace("{cpu}", meta.get("hop_cpu", "1"))
    return {
        "ours": "(none)",
        "ours-rt": "--realtime",
        "ours-mlock": "--mlock",
        "ours-bp": busy,
        "ours-bp-rt": f"{busy} --realtime --mlock",
        "nginx": "nginx stream, one worker",
        "floor": "copy-only relay in C",
        "floor-bp": "copy-only relay in C, spinning",
    }.get(variant, "")


def say_knobs(say, knobs, failed, meta):
    say(
        f"knobs: one hop on CPU {meta.get('hop_cpu', '1')}, 64 B frames, {meta.get('knob_frames', '?')} round trips "
        f"per run, median of {meta.get('knob_reps', '?')} repetitions (µs; +: added per hop, as above; max: of all runs)"
    )
    say(f"  quiet: CPU {meta.get('hop_cpu', '1')} is the hop's alone; hog: it shares it with a CPU-bound process at normal priority")
    columns = f"{'+p50':>8} {'+p99':>8} {'+p99.9':>8} {'max':>8}"
    say(f"  {'':<11} {'':<44}   {'quiet':<35}   {'hog':<35}")
    say(f"  {'variant':<11} {'options':<44}   {columns}   {columns}")
    by_key = {(entry["placement"], entry["variant"]): entry for entry in knobs}
    for variant in sorted({entry["variant"] for entry in knobs if entry["hops"]}, key=order):
        cells = []
        for condition in ("quiet", "hog"):
            entry = by_key.get((condition, variant), {})
            cells.append(
                f"{fmt(entry.get('added_p50_per_hop_us'), signed=True):>8} "
                f"{fmt(entry.get('added_p99_per_hop_us'), signed=True):>8} "
                f"{fmt(entry.get('added_p99.9_per_hop_us'), signed=True):>8} {fmt(entry.get('max_of_reps_us')):>8}"
            )
        say(f"  {variant:<11} {knob_options(variant, meta):<44}   {cells[0]}   {cells[1]}")
    if failed:
        say(f"  failed runs (left out): {len(failed)}")
        for row in failed[:10]:
            say(f"    {row['placement']} {row['variant']} rep {row['rep']}: {row['status']}")
    say("")


EVIDENCE_OPTIONS = {
    "ours-nokernel": "--kernel-info off (no evidence)",
    "ours": "(default) TCP_INFO on the hops' 100 ms timer",
    "ours-sample": "--kernel-stamps sample",
    "ours-stamps": "--kernel-stamps all",
    "ours-quickack": "--quickack (TCP_QUICKACK after every read)",
}


def say_evidence(say, evidence, rows, meta):
    """The probe figures through one hop with the kernel evidence off and on, side by side,
    with each variant's ratio to the evidence-off run of the same repetition (median)."""
    say(
        f"kernel evidence: end-to-end round trip through one hop of ours, 64 B frames, --window 1 --interval 0, "
        f"{meta.get('evidence_frames', '?')} round trips per run, median of {meta.get('evidence_reps', '?')} "
        "repetitions, variants alternated (µs)"
    )
    say(
        f"  where: source and echo on CPU {meta.get('client_cpu', '0')} (taskset -c {meta.get('client_cpu', '0')}), "
        f"the hop on CPU {meta.get('hop_cpu', '1')} (taskset -c {meta.get('hop_cpu', '1')})"
    )
    say("  vs off: this variant's p50 (p99) / the --kernel-info off run's of the same repetition, median")
    ok = [row for row in rows if row["status"] == "ok"]
    off = {row["rep"]: row for row in ok if row["variant"] == "ours-nokernel"}
    say(
        f"  {'variant':<13} {'options':<46} {'p50':>7} {'p99':>7} {'+p50/hop':>9} {'+p99/hop':>9} "
        f"{'p50 vs off':>10} {'p99 vs off':>10}"
    )
    for entry in evidence:
        if not entry["hops"]:
            say(f"  {'direct':<13} {'(no hop)':<46} {fmt(entry['p50_us']):>7} {fmt(entry['p99_us']):>7}")
            continue
        ratios = {}
        for stat in ("p50", "p99"):
            values = [
                float(row[stat]) / float(off[row["rep"]][stat])
                for row in ok
                if row["variant"] == entry["variant"] and row["rep"] in off and float(off[row["rep"]][stat]) > 0
            ]
            ratios[stat] = median(values)
            entry[f"{stat}_vs_evidence_off"] = ratios[stat]
        say(
            f"  {entry['variant']:<13} {EVIDENCE_OPTIONS.get(entry['variant'], ''):<46} {fmt(entry['p50_us']):>7} "
            f"{fmt(entry['p99_us']):>7} {fmt(entry.get('added_p50_per_hop_us'), signed=True):>9} "
            f"{fmt(entry.get('added_p99_per_hop_us'), signed=True):>9} {fmt(ratios['p50'], 3):>10} {fmt(ratios['p99'], 3):>10}"
        )
    say("")


WATCH_VARIANTS = ("view-off", "view-on", "metrics", "scraped")
# (watched, baseline): each difference is taken within one repetition, then summarized.
WATCH_PAIRS = (("view-on", "view-off"), ("scraped", "metrics"))


def summarize_watch(rows):
    """Per variant the medians over the repetitions; per pair the differences by repetition."""
    good = [row for row in rows if row["status"] == "ok"]
    failed = [row for row in rows if row["status"] != "ok"]
    stats = ("p50", "p99", "p99.9", "max")
    entries = []
    for variant in WATCH_VARIANTS:
        runs = [row for row in good if row["variant"] == variant]
        if not runs:
            continue
        entry = {"variant": variant, "reps": len(runs)}
        for stat in stats:
            values = [float(row[stat]) for row in runs]
            entry[f"{stat}_us"] = median(values)
            entry[f"{stat}_runs_us"] = values
        entry["others_pct"] = median([float(row["others_pct"] or 0) for row in runs])
        entry["checks"] = [row["check"] for row in runs]
        entries.append(entry)
    differences = []
    for watched, baseline in WATCH_PAIRS:
        by_rep = {}
        for row in good:
            if row["variant"] in (watched, baseline):
                by_rep.setdefault(row["rep"], {})[row["variant"]] = row
        pairs = [both for both in by_rep.values() if len(both) == 2]
        if not pairs:
            continue
        entry = {"watched": watched, "baseline": baseline, "pairs": len(pairs)}
        for stat in ("p50", "p99"):
            deltas = [float(both[watched][stat]) - float(both[baseline][stat]) for both in pairs]
            own = [float(both[baseline][stat]) for both in pairs]
            entry[f"{stat}_delta_us"] = median(deltas)
            entry[f"{stat}_delta_runs_us"] = deltas
            # The baseline's own spread over the repetitions: the noise the delta is judged by.
            entry[f"{stat}_baseline_spread_us"] = max(own) - min(own)
        differences.append(entry)
    return entries, differences, failed


def say_watch(say, entries, differences, failed, meta):
    say(
        f"watch: what watching a run costs it; one hop of ours, 64 B probes every 250 µs, --window 1, "
        f"{meta.get('watch_frames', '?')} per run after {meta.get('warmup', '?')} warm-up frames; median of "
        f"{meta.get('watch_reps', '?')} repetitions, variants alternated (µs, the end-to-end round trip)"
    )
    if meta.get("watch_realtime") == "true":
        say("  --realtime on the source, the relay and the echo (SCHED_FIFO 10; the view and metrics threads at normal priority)")
    say(
        f"  CPU {meta.get('client_cpu', '0')}: the source's loop (--cpu {meta.get('client_cpu', '0')}) and the echo; "
        f"CPU {meta.get('hop_cpu', '1')}: the relay, script(1), the source's helper threads (view, metrics server) "
        "and the scraper"
    )
    say("  view-off: under script with --no-live; view-on: the live view drawn; metrics: --metrics not scraped;")
    say("  scraped: --metrics with GET /metrics every 100 ms")
    say(f"  {'variant':<9} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>8} {'other':>6}   runs p50 | p99")
    for entry in entries:
        say(
            f"  {entry['variant']:<9} {fmt(entry['p50_us']):>7} {fmt(entry['p99_us']):>7} "
            f"{fmt(entry['p99.9_us']):>7} {fmt(entry['max_us']):>8} {fmt(entry['others_pct'], 0):>5}%   "
            + " ".join(fmt(value) for value in entry["p50_runs_us"])
            + " | "
            + " ".join(fmt(value) for value in entry["p99_runs_us"])
        )
    for entry in entries:
        say(f"  {entry['variant']:<9} checks: " + "; ".join(sorted(set(entry["checks"]))))
    for entry in differences:
        say(
            f"  {entry['watched']} - {entry['baseline']}, by repetition ({entry['pairs']}): "
            f"p50 {fmt(entry['p50_delta_us'], signed=True)} (runs "
            + " ".join(fmt(value, signed=True) for value in entry["p50_delta_runs_us"])
            + f"; {entry['baseline']}'s own p50 spread {fmt(entry['p50_baseline_spread_us'])}), "
            f"p99 {fmt(entry['p99_delta_us'], signed=True)} (runs "
            + " ".join(fmt(value, signed=True) for value in entry["p99_delta_runs_us"])
            + f"; {entry['baseline']}'s own p99 spread {fmt(entry['p99_baseline_spread_us'])})"
        )
    if failed:
        say(f"  failed runs (left out): {len(failed)}")
        for row in failed[:10]:
            say(f"    {row['variant']} rep {row['rep']}: {row['status']}")
    say("")


def summarize(outdir):
    raw = os.path.join(outdir, "raw")
    meta = {row["key"]: row["value"] for row in read_tsv(os.path.join(raw, "meta.tsv"))}
    latency, latency_failed = summarize_latency(read_tsv(os.path.join(raw, "latency.tsv")))
    throughput, throughput_failed = summarize_throughput(read_tsv(os.path.join(raw, "throughput.tsv")))
    integrity = read_tsv(os.path.join(raw, "integrity.tsv"))
    syscalls_rows = read_tsv(os.path.join(raw, "syscalls.tsv"))
    rss = read_tsv(os.path.join(raw, "rss.tsv"))
    notes = [row["note"] for row in read_tsv(os.path.join(raw, "notes.tsv"))]
    checks = target_checks(latency, throughput)
    knobs, knobs_failed = summarize_latency(read_tsv(os.path.join(raw, "knobs.tsv")))
    evidence_rows = read_tsv(os.path.join(raw, "evidence.tsv"))
    evidence, evidence_failed = summarize_latency(evidence_rows)
    watch, watch_differences, watch_failed = summarize_watch(read_tsv(os.path.join(raw, "watch.tsv")))

    syscalls = {}
    for row in syscalls_rows:
        hop = syscalls.setdefault(
            row["variant"], {"frames": int(row["frames"]), "tool": row["tool"], "per_round_trip": {}}
        )
        hop["per_round_trip"][row["syscall"]] = float(row["per_frame"])

    out = []
    say = out.append
    say(f"subsegment-tcp-speeds bench ({meta.get('mode', '?')} mode), {meta.get('date', '')}")
    say(
        f"binary: {meta.get('binary', '?')}, tree {meta.get('commit', '?')}, {meta.get('cpus', '?')} CPUs, Linux {meta.get('kernel', '?')}; "
        f"{meta.get('socat', 'socat ?')}, {meta.get('haproxy', 'haproxy ?')}, {meta.get('nginx', 'nginx ?')}"
    )
    say(f"load average before {meta.get('loadavg_start', '?')}, after {meta.get('loadavg_end', '?')}")
    say(
        f"other work on the machine (1 s, before anything of ours ran): {meta.get('background_start', '?')}; "
        f"at the end: {meta.get('background_end', '?')}"
    )
    texts = placement_text(meta)
    for name in ("one", "split"):
        say(f"  placement {name:<5} = {texts[name]}")
    say("")
    if latency:
        say(
            f"latency: end-to-end round trip, --window 1 --interval 0, {meta.get('frames', '?')} frames per run "
            f"after {meta.get('warmup', '?')} warm-up frames; median of {meta.get('reps', '?')} repetitions, "
            "variants alternated (µs)"
        )
        say("  p50 .. max: the median over the repetitions of each run's value (every run is in results.json)")
        say("  +p50/hop, +p99/hop: added per hop = (variant - direct of the same repetition) / hops, median")
        say("  ratio: added per hop / the lowest anchor's (socat, haproxy, nginx) in the same placement, size and hops")
        say("  floor: a relay in C that only copies bytes (scripts/bench/floor-relay.c): about what any hop must add here")
        say("  other: CPU share (of both CPUs) used by processes not started by this bench during the run, median")
        shares = [float(row.get("others_pct") or 0) for row in read_tsv(os.path.join(raw, "latency.tsv"))]
        if shares:
            shares.sort()
            say(
                f"  other work during the latency runs: median {statistics.median(shares):.0f}%, "
                f"90th percentile {shares[int(0.9 * (len(shares) - 1))]:.0f}%, max {shares[-1]:.0f}% of the CPUs"
            )
            if statistics.median(shares) > NOISY_PCT:
                say(
                    f"  WARNING: other processes took more than {NOISY_PCT}% of the CPUs during most runs: the tails "
                    "(p99 and up) and the split placement measure them more than the hops; rerun on an idle machine"
                )
        header = (
            f"  {'place':<5} {'size':>5} {'variant':<8} {'hops':>4} {'p50':>7} {'p99':>7} {'p99.9':>7} "
            f"{'max':>8} {'+p50/hop':>9} {'+p99/hop':>9} {'+p99.9/h':>9} {'p50 ratio':>9} {'p99 ratio':>9} {'other':>5}"
        )
        say(header)
        last = None
        for entry in latency:
            group = (entry["placement"], entry["size"], entry["hops"] > 0 and entry["hops"])
            if last is not None and group != last:
                say("")
            last = group
            ratio50 = entry.get("ratio_p50_vs_lowest_anchor")
            ratio99 = entry.get("ratio_p99_vs_lowest_anchor")
            say(
                f"  {entry['placement']:<5} {entry['size']:>5} {entry['variant']:<8} {entry['hops']:>4} "
                f"{fmt(entry['p50_us']):>7} {fmt(entry['p99_us']):>7} {fmt(entry['p99.9_us']):>7} "
                f"{fmt(entry['max_us']):>8} "
                f"{fmt(entry.get('added_p50_per_hop_us'), signed=True):>9} "
                f"{fmt(entry.get('added_p99_per_hop_us'), signed=True):>9} "
                f"{fmt(entry.get('added_p99.9_per_hop_us'), signed=True):>9} "
                f"{fmt(ratio50, 2):>9} {fmt(ratio99, 2):>9} {fmt(entry['others_pct'], 0):>4}%"
            )
        if latency_failed:
            say(f"  failed runs (left out): {len(latency_failed)}")
            for row in latency_failed[:10]:
                say(f"    {row['placement']} {row['size']} B {row['variant']} x{row['hops']} rep {row['rep']}: {row['status']}")
        say("")
    if knobs:
        say_knobs(say, knobs, knobs_failed, meta)
    if evidence:
        say_evidence(say, evidence, evidence_rows, meta)
        for row in evidence_failed[:10]:
            say(f"  failed: {row['variant']} rep {row['rep']}: {row['status']}")
    if throughput:
        first = throughput[0]
        say(
            f"throughput: {first['bytes']} B of stdin through the hops and back to stdout (/dev/null), "
            f"-s {first['block']}; median of {meta.get('throughput_reps', '?')} repetitions"
        )
        say("  hop CPU: user+system seconds of all hop processes (from /proc/PID/stat, read before they exit)")
        say(f"  {'place':<5} {'variant':<8} {'hops':>4} {'MB/s':>8} {'hop CPU s':>10} {'CPU s/GB':>9} {'other':>6}   runs (MB/s)")
        for entry in throughput:
            say(
                f"  {entry['placement']:<5} {entry['variant']:<8} {entry['hops']:>4} {fmt(entry['mb_per_s']):>8} "
                f"{fmt(entry['hop_cpu_s'], 2):>10} {fmt(entry['hop_cpu_s_per_gb'], 2):>9} {fmt(entry['others_pct'], 0):>5}%   "
                + " ".join(fmt(value, 0) for value in entry["mb_per_s_all"])
            )
        for row in throughput_failed:
            say(f"  failed: {row['placement']} {row['variant']} rep {row['rep']}: {row['status']}")
        say("")
    if integrity:
        say(
            "integrity: "
            + ", ".join(f"{row['variant']} x{row['hops']} {row['status']}" for row in integrity)
            + f" ({integrity[0]['bytes']} random bytes, sha256 of stdout vs stdin)"
        )
        say("")
    if syscalls:
        say(
            "syscalls per round trip (one frame down and its answer up) of one hop in steady state, "
            f"hop on CPU {meta.get('hop_cpu', '1')}, 64 B frames"
        )
        for variant in sorted(syscalls, key=order):
            hop = syscalls[variant]
            calls = hop["per_round_trip"]
            total = calls.get("total")
            shown = ", ".join(
                f"{name} {value:.2f}"
                for name, value in sorted(calls.items(), key=lambda item: -item[1])
                if name != "total" and value >= 0.01
            )
            say(f"  {variant:<13} total {fmt(total, 2):>6}: {shown}   ({hop['frames']} frames, {hop['tool']})")
        say("")
    if rss:
        say("memory of one relay (ours; relay -> echo), from /proc/PID/status; \"served 1 conn\": the relay first")
        say("carried one short connection, as a long-running relay has (malloc may then place big buffers differently)")
        for row in rss:
            say(
                f"  {row['case']:<42} VmRSS {int(row['rss_kb']) / 1024:7.1f} MiB  VmHWM {int(row['hwm_kb']) / 1024:7.1f} MiB"
                f"  VmSize {int(row['size_kb']) / 1024:8.1f} MiB  sockets {row['sockets']:>5}  {row['note']}"
            )
        say("")
    if watch:
        say_watch(say, watch, watch_differences, watch_failed, meta)
    if checks:
        say("targets (issue 4):")
        for check in checks:
            verdict = "PASS" if check["pass"] else "FAIL"
            if check.get("at_least"):
                detail = (
                    f"{fmt(check['ours_mb_per_s'])} vs {fmt(check['anchor_mb_per_s'])} MB/s = "
                    f"{fmt(check['ratio'], 2)} (target >= 1.00)"
                )
            else:
                detail = (
                    f"{fmt(check['ours_us'])} vs {check['anchor'] or '-'} {fmt(check['anchor_us'])} µs = "
                    f"{fmt(check['ratio'], 2)} (target <= {check['limit']:.2f})"
                )
                if check.get("floor_ratio") is not None:
                    reach = "" if check["floor_passes"] else ": even the copy-only relay misses it"
                    detail += (
                        f"; {check['floor']} {fmt(check['floor_us'])} µs = {fmt(check['floor_ratio'], 2)}{reach}"
                    )
            say(f"  {verdict}  {check['what']}: {detail}")
        say("")
    for note in notes:
        say(f"note: {note}")
    if notes:
        say("")
    say(f"results: {os.path.join(outdir, 'results.json')} and results.tsv")
    say(f"command: {meta.get('command', '?')}")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    with open(os.path.join(outdir, "table.txt"), "w") as table:
        table.write(text)

    results = {
        "meta": meta,
        "notes": notes,
        "latency": latency,
        "latency_runs": read_tsv(os.path.join(raw, "latency.tsv")),
        "throughput": throughput,
        "throughput_runs": read_tsv(os.path.join(raw, "throughput.tsv")),
        "integrity": integrity,
        "syscalls_per_round_trip": syscalls,
        "rss": rss,
        "targets": checks,
        "knobs": knobs,
        "knob_runs": read_tsv(os.path.join(raw, "knobs.tsv")),
        "evidence": evidence,
        "evidence_runs": evidence_rows,
        "watch": watch,
        "watch_differences": watch_differences,
        "watch_runs": read_tsv(os.path.join(raw, "watch.tsv")),
    }
    with open(os.path.join(outdir, "results.json"), "w") as target:
        json.dump(results, target, indent=2, ensure_ascii=False)
        target.write("\n")
    with open(os.path.join(outdir, "results.tsv"), "w") as target:

        def row(*fields):
            target.write("\t".join(str(field) for field in fields) + "\n")

        row("section", "placement", "size", "variant", "hops", "metric", "value", "verdict")
        for entry in latency:
            for key, value in entry.items():
                if isinstance(value, list):
                    continue
                if key.endswith("_us") or key.startswith("ratio_"):
                    where = (entry["placement"], entry["size"], entry["variant"], entry["hops"])
                    row("latency", *where, key, fmt(value, 3), "")
        for entry in throughput:
            for key in ("mb_per_s", "hop_cpu_s", "hop_cpu_s_per_gb"):
                where = (entry["placement"], entry["block"], entry["variant"], entry["hops"])
                row("throughput", *where, key, fmt(entry[key], 3), "")
        for variant, hop in syscalls.items():
            for name, value in hop["per_round_trip"].items():
                row("syscalls", "split", 64, variant, 1, f"{name}_per_round_trip", f"{value:.4f}", "")
        for entry in rss:
            row("rss", "split", "-", "ours", 1, f"{entry['case']}: VmRSS kB", entry["rss_kb"], "")
            row("rss", "split", "-", "ours", 1, f"{entry['case']}: VmHWM kB", entry["hwm_kb"], "")
            row("rss", "split", "-", "ours", 1, f"{entry['case']}: VmSize kB", entry["size_kb"], "")
        for entry in watch:
            for stat in ("p50", "p99", "p99.9", "max"):
                row("watch", "split", 64, entry["variant"], 1, f"{stat}_us", fmt(entry[f"{stat}_us"], 3), "")
        for entry in watch_differences:
            for stat in ("p50", "p99"):
                name = f"{entry['watched']} - {entry['baseline']}"
                row("watch", "split", 64, name, 1, f"{stat}_delta_us", fmt(entry[f"{stat}_delta_us"], 3), "")
        for check in checks:
            verdict = "pass" if check["pass"] else "fail"
            row("target", "-", "-", "-", "-", check["what"], fmt(check["ratio"], 3), verdict)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    command, args = argv[1], argv[2:]
    if command == "free-ports":
        free_ports(int(args[0]))
    elif command == "wait-listen":
        wait_listen(int(args[0]), float(args[1]))
    elif command == "cputime":
        cputime(args)
    elif command == "others":
        others(args[0], args[1:])
    elif command == "cpu-busy":
        cpu_busy(float(args[0]))
    elif command == "memory":
        memory(args[0])
    elif command == "sockets":
        sockets(args[0])
    elif command == "parse-latency":
        parse_latency(args[0])
    elif command == "parse-throughput":
        parse_throughput(args[0])
    elif command == "parse-perf":
        parse_perf(args[0], int(args[1]))
    elif command == "parse-strace":
        parse_strace(args[0], int(args[1]))
    elif command == "idle-connections":
        idle_connections(args[0], int(args[1]), args[2], float(args[3]))
    elif command == "scrape":
        scrape(int(args[0]), float(args[1]), args[2])
    elif command == "summarize":
        summarize(args[0])
    else:
        fail(f"unknown command '{command}'")


if __name__ == "__main__":
    main(sys.argv)
