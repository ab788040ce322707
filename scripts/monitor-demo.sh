#!/usr/bin/env bash
# Watching a chain with Prometheus, on loopback: source A -> relay B -> (tcp-delay) -> echoing
# end Z, the link B <-> Z slowed; a continuous source with --metrics, a Prometheus server of its
# own (config and data in a temporary directory, scraping the source and B every second), then,
# after a wait, the PromQL query for link 1-2's median and p99 (and relay B's own residence p99)
# and Prometheus's answers. Cleans up (every process it started, the directory) on exit.
#
# usage: scripts/monitor-demo.sh [--delay-ms MS] [--wait SECONDS] [--port PORT]
#        (PORT: Prometheus's web port, default 9090; needs /usr/bin/prometheus)
set -euo pipefail

delay_ms=4
wait_s=15
port=9090
while [ $# -gt 0 ]; do
  case "$1" in
    --delay-ms) delay_ms=$2; shift 2 ;;
    --wait) wait_s=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "monitor-demo.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done
prometheus=/usr/bin/prometheus
if [ ! -x "$prometheus" ]; then
  echo "monitor-demo.sh: needs $prometheus (Debian's prometheus; scripts/lab-deps.sh installs it)" >&2
  exit 1
fi

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet
bin=target/release/subsegment-tcp-speeds
delay_bin=target/release/tcp-delay

work=$(mktemp -d)
pids=()
# shellcheck disable=SC2317 # run by the trap below
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Starts a process with stderr in a log and waits for a line matching $2 (a sed pattern with
# one group); sets $found to the group.
start() {
  local log=$work/$1.log pattern=$2
  shift 2
  : >"$log"
  "$@" >/dev/null 2>"$log" &
  pids+=("$!")
  local deadline=$((SECONDS + 15))
  until found=$(sed -n "s/$pattern/\\1/p" "$log" | head -n 1) && [ -n "$found" ]; do
    if ! kill -0 "${pids[-1]}" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "monitor-demo.sh: $* did not start:" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 0.05
  done
}
listening='.*listening on \([^ ]*\).*'
serving='.*serving metrics at http:\/\/\([^/]*\)\/metrics.*'

found=
start Z "$listening" "$bin" --listen 127.0.0.1:0 --name Z
z=$found
start delay "$listening" "$delay_bin" --listen 127.0.0.1:0 --forward-to "$z" --delay-ms "$delay_ms"
slow=$found
start B "$listening" "$bin" --listen 127.0.0.1:0 --forward-to "$slow" --name B --metrics 127.0.0.1:0
b=$found
b_metrics=$(sed -n "s/$serving/\\1/p" "$work/B.log" | head -n 1)
start A "$serving" "$bin" -f "$b" -n A -c 0 -i 5ms --report-interval 5s --metrics 127.0.0.1:0
a_metrics=$found

cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: subsegment-tcp-speeds-source
    static_configs:
      - targets: ['$a_metrics']
  - job_name: subsegment-tcp-speeds-relay
    static_configs:
      - targets: ['$b_metrics']
EOF
start prometheus '.*\(Server is ready\).*' "$prometheus" \
  --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$port"

echo "chain: A -> B $b -> (+${delay_ms} ms each way) -> Z $z"
echo "metrics: source http://$a_metrics/metrics, relay B http://$b_metrics/metrics"
echo "Prometheus: http://127.0.0.1:$port (config $work/prometheus.yml)"
echo "waiting ${wait_s} s for scrapes..."
sleep "$wait_s"

# A URL-encoded instant query, answered as "value (s)".
ask() {
  local encoded
  encoded=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1")
  curl -fsS "http://127.0.0.1:$port/api/v1/query?query=$encoded" |
    python3 -c '
import json, sys
results = json.load(sys.stdin)["data"]["result"]
print(", ".join(" ".join(f"{k}={v}" for k, v in r["metric"].items()) + (" " if r["metric"] else "")
                + r["value"][1] for r in results) or "no answer yet")'
}
bucket='subsegment_tcp_speeds_subsegment_delay_seconds_bucket{subsegment="1-2"}'
for quantile in 0.5 0.99; do
  query="histogram_quantile($quantile, rate(${bucket}[10s]))"
  echo
  echo "PromQL: $query"
  echo "answer: $(ask "$query") s (round trip injected: $((2 * delay_ms)) ms)"
done
query='sum by (direction) (rate(subsegment_tcp_speeds_hop_frames_total{hop="B"}[10s]))'
echo
echo "PromQL: $query"
echo "answer: $(ask "$query") frames/s"
# The relay's own view: its residence p99 each way, from B's /metrics alone.
bucket='subsegment_tcp_speeds_hop_residence_seconds_bucket{hop="B"}'
query="histogram_quantile(0.99, sum by (direction, le) (rate(${bucket}[10s])))"
echo
echo "PromQL: $query"
echo "answer: $(ask "$query") s (B's residence p99, arrival -> hand-over on)"
