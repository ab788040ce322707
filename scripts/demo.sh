#!/usr/bin/env bash
# A local demo chain on loopback: source A -> relays B, C, D -> echoing end Z, with the link
# C <-> D slowed by a user-space delay element (tcp-delay; this kernel has no netem).
# Builds in release mode, sends random data through the chain, checks that every byte came
# back, and shows the source's report.
#
# usage: scripts/demo.sh [--delay-ms MS] [--bytes N] [--window FRAMES]
set -euo pipefail

delay_ms=1
bytes=$((1 << 20))
window=4
while [ $# -gt 0 ]; do
  case "$1" in
    --delay-ms) delay_ms=$2; shift 2 ;;
    --bytes) bytes=$2; shift 2 ;;
    --window) window=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done

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

# Starts a process with stderr in a log, waits for its "listening on" line and sets $addr.
start() {
  local log=$work/$1.log
  shift
  "$@" >/dev/null 2>"$log" &
  pids+=("$!")
  local deadline=$((SECONDS + 10))
  until grep -q 'listening on ' "$log"; do
    if ! kill -0 "${pids[-1]}" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo.sh: $* did not start:" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 0.05
  done
  addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$log" | head -n 1)
}

addr=
start Z "$bin" --listen 127.0.0.1:0 --name Z
z=$addr
start D "$bin" --listen 127.0.0.1:0 --forward-to "$z" --name D
d=$addr
start delay "$delay_bin" --listen 127.0.0.1:0 --forward-to "$d" --delay-ms "$delay_ms"
slow=$addr
start C "$bin" --listen 127.0.0.1:0 --forward-to "$slow" --name C
c=$addr
start B "$bin" --listen 127.0.0.1:0 --forward-to "$c" --name B
b=$addr

echo "chain: A -> B $b -> C $c -> (+${delay_ms} ms each way) -> D $d -> Z $z"
echo "sending $bytes random bytes, $window frames in flight at most"
echo
head -c "$bytes" /dev/urandom >"$work/in.bin"
status=0
"$bin" --forward-to "$b" --name A --window "$window" <"$work/in.bin" >"$work/out.bin" || status=$?
echo
if cmp -s "$work/in.bin" "$work/out.bin"; then
  echo "all $bytes bytes came back unchanged (cmp)"
else
  echo "demo.sh: the answer differs from the input" >&2
  status=1
fi
exit "$status"
