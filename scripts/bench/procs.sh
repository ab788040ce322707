# shellcheck shell=bash
# Processes of the side-by-side benches (scripts/bench-app.sh, scripts/bench-loaded.sh), sourced:
# each started in its own process group and remembered in `pids`, so a variant's processes stop
# together and nothing outlives the script. The caller sets `me` (its name, for messages).

: "${me:=bench}"
pids=()

# start LOG CMD...: starts CMD in the background, its own process group, output to LOG.
start() {
    local log=$1
    shift
    setsid "$@" >"$log" 2>&1 &
    pids+=($!)
}

# stop_from INDEX: stops the processes started from that index of `pids` on.
stop_from() {
    local pid
    for pid in "${pids[@]:$1}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${pids[@]:$1}"; do wait "$pid" 2>/dev/null || true; done
    pids=("${pids[@]:0:$1}")
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT (10 s at most, then exit 1).
wait_port() {
    local _
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "$me: nothing listens on $1" >&2
    exit 1
}
