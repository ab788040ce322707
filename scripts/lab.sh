#!/usr/bin/env bash
# A local multi-host lab for subsegment-tcp-speeds: N network namespaces h0..h(N-1) in a line,
# joined by veth pairs, each with its own address and its own sshd, and a way to impair one link.
#
# Everything lives inside namespaces this script creates: the veth pairs are created directly in
# them (no interface, address or route is ever added to the root namespace), so lab traffic can
# only reach lab hosts. Run the source and the ssh client inside a lab namespace too
# (`lab.sh exec h0 ...`). Needs root, iproute2 and openssh-server; impairments use nftables,
# iptables and ethtool as well (scripts/lab-deps.sh installs them all).
set -euo pipefail

readonly NET=10.213 # host hK is 10.213.0.(K+1); link hI⇄hI+1 is 10.213.(I+1).0/24
readonly NET6=fd53:7373 # where the machine has IPv6: hK is also fd53:7373::(K+1), link fd53:7373:(I+1)::/64
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly script_dir

usage() {
    cat <<'EOF'
usage: scripts/lab.sh [--dir DIR] COMMAND ...

  up N [--prefix P]        build hosts h0..h(N-1) (namespaces P h0.., default prefix 'ssts-'),
                           in a line: h0 - h1 - ... , each with an sshd on port 22; where
                           the machine has IPv6, every host and sshd has an IPv6 address too
                           (ssh_config names it hK.v6)
  down [--prefix P]        stop every process in the lab's namespaces, delete them and the lab
                           directory; idempotent, fine to run when nothing is up
  impair LINK [--delay MS] [--jitter MS] [--rate MBIT] [--loss PCT] [--port P]
                [--element-port Q] [--mechanism auto|netem|nfqueue|tcp-delay]
                           delay LINK (hI-hJ, adjacent hosts) by MS one way in each direction
                           (a round trip gains 2*MS), ± jitter; limit it to MBIT Mbit/s; drop
                           PCT % of its packets in each direction (fractions down to 0.01).
                           Mechanisms (auto: the first this machine has): netem (delay, loss;
                           tbf for the rate); nfqueue: iptables NFQUEUE where packets arrive
                           at each end, held by nfq-delay (packets keep their TCP connection;
                           loss by nft numgen in hJ); tcp-delay: a TCP relay in hJ on hJ's
                           address, port Q (default P+1), in front of port P (default 9000).
                           TSO/GSO/GRO go off on the link's veth ends. Says on stderr which
                           mechanism was used, and prints on stdout the ADDR:PORT the left end
                           must send to, so that traffic to hJ's port P crosses the impairment.
                           A mechanism asked for by name places its element even at --delay 0
                           (its own cost).
  clear LINK               remove everything impair added to LINK (qdiscs, nft and iptables
                           rules, elements; offloads as they were)
  exec HOST CMD...         run CMD inside HOST's namespace
  addr HOST [-6]           print HOST's address (-6: its IPv6 address; fails without IPv6)
  env                      print LAB_DIR, PREFIX, HOSTS, SSH_CONFIG as shell assignments

  --dir DIR                the lab's directory (default: $LAB_DIR, else /tmp/ssts-lab)

From inside the lab, every host reaches every other one by ssh:
  scripts/lab.sh exec h0 ssh -F /tmp/ssts-lab/ssh_config h2 hostname -I
The delay elements are $TCP_DELAY_BIN and $NFQ_DELAY_BIN, else the newer of
target/{release,debug}/tcp-delay and nfq-delay. --loss needs nft, nfqueue needs iptables, and
the offloads need ethtool (scripts/lab-deps.sh installs them).
EOF
}

die() {
    echo "lab: $*" >&2
    exit 1
}

# -- state --------------------------------------------------------------------------------------

lab_dir=${LAB_DIR:-/tmp/ssts-lab}
prefix=ssts-
hosts=0

load_state() {
    [[ -f $lab_dir/lab.env ]] || die "no lab in $lab_dir (run: lab.sh up N)"
    local key value
    while IFS='=' read -r key value; do
        case $key in
            prefix) prefix=$value ;;
            hosts) hosts=$value ;;
            ipv6) ipv6=$value ;;
        esac
    done <"$lab_dir/lab.env"
}

ns() { printf '%sh%s' "$prefix" "$1"; }
host_addr() { printf '%s.0.%s' "$NET" "$(($1 + 1))"; }
# Address of host $1 on the link it shares with its neighbour $2.
link_addr() {
    local host=$1 peer=$2
    if ((peer > host)); then printf '%s.%s.1' "$NET" "$((host + 1))"; else printf '%s.%s.2' "$NET" "$((peer + 1))"; fi
}

host_addr6() { printf '%s::%x' "$NET6" "$(($1 + 1))"; }
link_addr6() {
    local host=$1 peer=$2
    if ((peer > host)); then printf '%s:%x::1' "$NET6" "$((host + 1))"; else printf '%s:%x::2' "$NET6" "$((peer + 1))"; fi
}
# Whether the lab has IPv6 addresses: decided at `up` (the machine may have IPv6 switched off).
ipv6=false

# "h2" -> 2; dies on anything that is not a lab host.
host_index() {
    if ! [[ $1 =~ ^h([0-9]+)$ ]] || ((10#${BASH_REMATCH[1]} >= hosts)); then
        die "no host '$1' in this lab (h0..h$((hosts - 1)))"
    fi
    printf '%s' "$((10#${BASH_REMATCH[1]}))"
}

# "h1-h2", "h1:h2", "h1⇄h2" -> link_a=1 link_b=2, in line order; dies unless they are neighbours.
link_a='' link_b=''
parse_link() {
    local text=$1 first second
    [[ $text =~ ^(h[0-9]+)[-:⇄](h[0-9]+)$ ]] || die "bad link '$text' (want e.g. h1-h2)"
    first=${BASH_REMATCH[1]} second=${BASH_REMATCH[2]}
    link_a=$(host_index "$first")
    link_b=$(host_index "$second")
    if ((link_a > link_b)); then
        local swap=$link_a
        link_a=$link_b link_b=$swap
    fi
    ((link_b == link_a + 1)) || die "h$link_a and h$link_b are not neighbours; links join h(I) and h(I+1)"
}

# Polls, at most $3 seconds, until a TCP listener on port $2 exists in namespace $1.
wait_listening() {
    local namespace=$1 port=$2 deadline=$((SECONDS + $3))
    until [[ -n $(ip netns exec "$namespace" ss -Hltn "sport = :$port") ]]; do
        ((SECONDS < deadline)) || return 1
        sleep 0.02
    done
}

# Polls, at most $3 seconds, until file $1 has a line matching $2 (or process $4 has died).
wait_for_line() {
    local file=$1 pattern=$2 deadline=$((SECONDS + $3)) pid=${4:-}
    until grep -q -- "$pattern" "$file" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.02
    done
}

# The binary $1 (tcp-delay or nfq-delay): $2 if set, else the newer of target/{release,debug}/$1.
element_bin() {
    local name=$1 given=$2
    local release=$script_dir/../target/release/$name debug=$script_dir/../target/debug/$name
    if [[ -n $given ]]; then
        printf '%s' "$given"
    elif [[ -x $release && (! -x $debug || $release -nt $debug) ]]; then
        printf '%s' "$release"
    elif [[ -x $debug ]]; then
        printf '%s' "$debug"
    else
        local variable=${name^^}_BIN
        die "no $name binary: build it (cargo build --release) or set ${variable//-/_}"
    fi
}
delay_bin() { element_bin tcp-delay "${TCP_DELAY_BIN:-}"; }
nfq_bin() { element_bin nfq-delay "${NFQ_DELAY_BIN:-}"; }

# -- up / down ----------------------------------------------------------------------------------

lab_namespaces() {
    ip netns list | awk '{print $1}' | grep -E "^${prefix//./\\.}h[0-9]+$" || true
}

cmd_down() {
    local namespace pid pids deadline
    local -a namespaces
    if [[ -f $lab_dir/lab.env ]]; then load_state; fi
    mapfile -t namespaces < <(lab_namespaces)
    for namespace in "${namespaces[@]}"; do
        # Only processes inside our own namespaces: the sshds and delay elements we started, and
        # whatever was run there (lab.sh exec). TERM first, KILL what is left after 3 s.
        mapfile -t pids < <(ip netns pids "$namespace")
        if ((${#pids[@]})); then kill -TERM "${pids[@]}" 2>/dev/null || true; fi
        deadline=$((SECONDS + 3))
        while [[ -n $(ip netns pids "$namespace") ]] && ((SECONDS < deadline)); do sleep 0.02; done
        for pid in $(ip netns pids "$namespace"); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$namespace" 2>/dev/null || true
    done
    # Remove the directory only if it is a lab directory (never an arbitrary path given by mistake).
    if [[ -f $lab_dir/.ssts-lab ]]; then rm -rf -- "$lab_dir"; fi
    echo "lab: down (${#namespaces[@]} namespaces removed)" >&2
}

write_sshd_config() {
    local k=$1 dir=$lab_dir/h$1
    mkdir -p "$dir"
    cat >"$dir/sshd_config" <<EOF
# sshd of lab host h$k: listens only on this namespace's addresses; key authentication only.
ListenAddress $(host_addr "$k"):22
ListenAddress 127.0.0.1:22
$(if $ipv6; then printf 'ListenAddress [%s]:22' "$(host_addr6 "$k")"; fi)
HostKey $lab_dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $lab_dir/authorized_keys
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
# The lab directory sits under /tmp, which StrictModes would reject.
StrictModes no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 64:30:128
Subsystem sftp internal-sftp
LogLevel ERROR
EOF
}

on_up_exit() {
    local status=$?
    trap - EXIT
    if ((status)); then
        echo "lab: up failed; tearing down" >&2
        cmd_down
    fi
    exit "$status"
}

cmd_up() {
    local count=${1:-}
    shift || true
    while (($#)); do
        case $1 in
            --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
            *) die "up: unknown option '$1'" ;;
        esac
    done
    if ! [[ $count =~ ^[0-9]+$ ]] || ((count < 2 || count > 200)); then
        die "up: N must be 2..200 (got '$count')"
    fi
    [[ $prefix =~ ^[A-Za-z0-9_.-]+$ ]] || die "up: prefix may use letters, digits, _ . - only"
    ((EUID == 0)) || die "up: needs root (network namespaces)"
    local tool
    for tool in ip tc ss ssh ssh-keygen /usr/sbin/sshd; do
        command -v "$tool" >/dev/null || die "up: '$tool' is missing (run scripts/lab-deps.sh)"
    done
    [[ -z $(lab_namespaces) ]] || die "up: namespaces ${prefix}h* exist already (lab.sh down first)"
    [[ ! -e $lab_dir/lab.env ]] || die "up: $lab_dir holds a lab already (lab.sh down first)"
    hosts=$count
    # IPv6 where the machine has it: a namespace made now gets an IPv6 loopback then.
    if [[ -e /proc/sys/net/ipv6 ]] && [[ $(cat /proc/sys/net/ipv6/conf/default/disable_ipv6 2>/dev/null) == 0 ]]; then
        ipv6=true
    fi

    # From here on, any failure or interruption takes down what was built.
    trap on_up_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    mkdir -p "$lab_dir"
    chmod 0700 "$lab_dir"
    : >"$lab_dir/.ssts-lab"
    printf 'prefix=%s\nhosts=%s\nipv6=%s\n' "$prefix" "$hosts" "$ipv6" >"$lab_dir/lab.env"
    ssh-keygen -q -t ed25519 -N '' -C ssts-lab-client -f "$lab_dir/id_ed25519"
    ssh-keygen -q -t ed25519 -N '' -C ssts-lab-host -f "$lab_dir/ssh_host_ed25519_key"
    printf 'from="%s.0.0/16,127.0.0.1,%s::/32" %s\n' "$NET" "$NET6" "$(cat "$lab_dir/id_ed25519.pub")" >"$lab_dir/authorized_keys"
    {
        echo "# ssh_config of the subsegment-tcp-speeds lab (use from inside a lab namespace)"
        local k
        for ((k = 0; k < hosts; k++)); do printf 'Host h%s\n    HostName %s\n' "$k" "$(host_addr "$k")"; done
        if $ipv6; then
            for ((k = 0; k < hosts; k++)); do printf 'Host h%s.v6\n    HostName %s\n' "$k" "$(host_addr6 "$k")"; done
        fi
        cat <<EOF
Host *
    User root
    IdentityFile $lab_dir/id_ed25519
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    BatchMode yes
    ConnectTimeout 5
    LogLevel ERROR
EOF
    } >"$lab_dir/ssh_config"
    # Debian's sshd wants its privilege-separation directory.
    mkdir -p /run/sshd
    chmod 0755 /run/sshd

    local k namespace
    for ((k = 0; k < hosts; k++)); do
        namespace=$(ns "$k")
        ip netns add "$namespace"
        ip -n "$namespace" link set lo up
        ip -n "$namespace" addr add "$(host_addr "$k")/32" dev lo
        # nodad: usable at once, not after duplicate address detection's second or two.
        if $ipv6; then ip -n "$namespace" addr add "$(host_addr6 "$k")/128" dev lo nodad; fi
    done
    # Each pair is created directly inside its two namespaces: nothing appears in the root one.
    for ((k = 0; k + 1 < hosts; k++)); do
        ip link add "to-h$((k + 1))" netns "$(ns "$k")" type veth peer name "to-h$k" netns "$(ns "$((k + 1))")"
        ip -n "$(ns "$k")" addr add "$(link_addr "$k" "$((k + 1))")/24" dev "to-h$((k + 1))"
        ip -n "$(ns "$((k + 1))")" addr add "$(link_addr "$((k + 1))" "$k")/24" dev "to-h$k"
        if $ipv6; then
            ip -n "$(ns "$k")" addr add "$(link_addr6 "$k" "$((k + 1))")/64" dev "to-h$((k + 1))" nodad
            ip -n "$(ns "$((k + 1))")" addr add "$(link_addr6 "$((k + 1))" "$k")/64" dev "to-h$k" nodad
        fi
        ip -n "$(ns "$k")" link set "to-h$((k + 1))" up
        ip -n "$(ns "$((k + 1))")" link set "to-h$k" up
    done
    # Host routes along the line, with the host address as source so every hop sees its peers'
    # host addresses; the hosts in the middle forward. `quickack 1`: a host acknowledges at once
    # instead of delaying the ACK for a reply to carry it, so in ping-pong traffic the sender's
    # kernel RTT is the wire's, not the wait for the next frame (a real host needs the same on its
    # route, or TCP_QUICKACK after every read: the option is not sticky).
    local j via dev
    for ((k = 0; k < hosts; k++)); do
        namespace=$(ns "$k")
        if ((k > 0 && k + 1 < hosts)); then
            ip netns exec "$namespace" sysctl -q -w net.ipv4.ip_forward=1
            if $ipv6; then ip netns exec "$namespace" sysctl -q -w net.ipv6.conf.all.forwarding=1; fi
        fi
        for ((j = 0; j < hosts; j++)); do
            ((j != k)) || continue
            if ((j > k)); then
                via=$(link_addr "$((k + 1))" "$k") dev=to-h$((k + 1))
            else
                via=$(link_addr "$((k - 1))" "$k") dev=to-h$((k - 1))
            fi
            ip -n "$namespace" route add "$(host_addr "$j")/32" via "$via" dev "$dev" \
                src "$(host_addr "$k")" quickack 1
            if $ipv6; then
                if ((j > k)); then via=$(link_addr6 "$((k + 1))" "$k"); else via=$(link_addr6 "$((k - 1))" "$k"); fi
                ip -6 -n "$namespace" route add "$(host_addr6 "$j")/128" via "$via" dev "$dev" \
                    src "$(host_addr6 "$k")" quickack 1
            fi
        done
    done
    for ((k = 0; k < hosts; k++)); do
        write_sshd_config "$k"
        ip netns exec "$(ns "$k")" /usr/sbin/sshd -f "$lab_dir/h$k/sshd_config" -E "$lab_dir/h$k/sshd.log"
    done
    for ((k = 0; k < hosts; k++)); do
        wait_listening "$(ns "$k")" 22 10 || die "up: sshd of h$k is not listening after 10 s: $(cat "$lab_dir/h$k/sshd.log")"
    done
    # The proof that it works: from h0, ssh to every other host across the line.
    for ((k = 1; k < hosts; k++)); do
        ip netns exec "$(ns 0)" ssh -F "$lab_dir/ssh_config" "h$k" true ||
            die "up: ssh from h0 to h$k failed"
    done
    trap - EXIT INT TERM
    echo "lab: up: $hosts hosts h0..h$((hosts - 1)) (namespaces $(ns 0)..), addresses $(host_addr 0)..$(host_addr "$((hosts - 1))")$(if $ipv6; then printf ' and %s..%s' "$(host_addr6 0)" "$(host_addr6 "$((hosts - 1))")"; fi), ssh -F $lab_dir/ssh_config" >&2
}

# -- impairments --------------------------------------------------------------------------------

# 0 if this kernel offers netem (probed on a throwaway qdisc of the given namespace's loopback).
have_netem() {
    local namespace=$1
    # tc says "Specified qdisc kind is unknown" without netem; probe on a dummy-free spot: lo.
    if ip netns exec "$namespace" tc qdisc add dev lo root handle 7: netem delay 1ms 2>/dev/null; then
        ip netns exec "$namespace" tc qdisc del dev lo root 2>/dev/null || true
        return 0
    fi
    return 1
}

# tbf on one veth end; 0 if the kernel accepted it.
add_tbf() {
    local namespace=$1 dev=$2 rate=$3 parent=${4:-root} burst
    # At least 10 ms worth of bytes, and enough for a GSO super-packet.
    burst=$(awk -v r="$rate" 'BEGIN { b = r * 1e6 / 8 / 100; if (b < 65536) b = 65536; printf "%d", b }')
    local where=(root)
    [[ $parent == root ]] || where=(parent "$parent" handle 10:)
    ip netns exec "$namespace" tc qdisc add dev "$dev" "${where[@]}" tbf rate "${rate}mbit" burst "$burst" latency 200ms
}

# 0 if NFQUEUE can be used here: iptables (whose NFQUEUE target this kernel has, while nft's own
# `queue` expression may be missing) and the nfq-delay binary.
have_nfqueue() {
    command -v iptables >/dev/null && nfq_bin >/dev/null 2>&1
}

# Queue number of the element that holds packets arriving at a host from its neighbour $1:
# within one namespace the two neighbours differ, so the two queues do too.
queue_from() { printf '%s' "$((1000 + $1))"; }

# Saves (once) and turns off TSO, GSO and GRO on device $2 of host $1: with them on, one
# "packet" is a burst of up to 64 KiB of segments, so one drop would lose a burst and one
# queued packet would carry many. `clear` restores what was saved.
offloads_off() {
    local k=$1 dev=$2 saved=$lab_dir/links/h$link_a-h$link_b.offloads state
    command -v ethtool >/dev/null || {
        echo "lab: warning: no ethtool (scripts/lab-deps.sh): $dev of h$k keeps TSO/GSO/GRO" >&2
        return 0
    }
    state=$(ip netns exec "$(ns "$k")" ethtool -k "$dev" | awk '
        /^tcp-segmentation-offload:/ { tso = $2 } /^generic-segmentation-offload:/ { gso = $2 }
        /^generic-receive-offload:/ { gro = $2 } END { printf "tso %s gso %s gro %s", tso, gso, gro }')
    printf '%s %s %s\n' "$k" "$dev" "$state" >>"$saved"
    ip netns exec "$(ns "$k")" ethtool -K "$dev" tso off gso off gro off 2>/dev/null ||
        die "impair: ethtool -K $dev tso off gso off gro off failed in h$k"
}

# Drops $3 per 10000 packets on the link in both directions, in the right-hand host $2 (whose
# device to-h$1 is the link): on arrival (prerouting) and on departure (postrouting), whether
# the packet is for that host or forwarded on, so the whole link is lossy and nothing else is.
add_nft_loss() {
    local a=$1 b=$2 per_10000=$3
    command -v nft >/dev/null || die "impair: --loss needs nft (scripts/lab-deps.sh installs nftables)"
    ip netns exec "$(ns "$b")" nft -f - <<NFT || die "impair: nft refused the loss rules in h$b"
table inet ssts_loss_h${a}_h${b} {
    chain arrive {
        type filter hook prerouting priority -300; policy accept;
        iifname "to-h$a" numgen random mod 10000 < $per_10000 drop
    }
    chain leave {
        type filter hook postrouting priority 300; policy accept;
        oifname "to-h$a" numgen random mod 10000 < $per_10000 drop
    }
}
NFT
}

cmd_clear() {
    local link=${1:?clear needs a LINK}
    load_state
    parse_link "$link"
    local a=$link_a b=$link_b k rule
    local rules=$lab_dir/links/h$a-h$b.rules offloads=$lab_dir/links/h$a-h$b.offloads
    # The NFQUEUE rules go first: a queue without its element drops the link's packets.
    if [[ -f $rules ]]; then
        while read -r k rule; do
            # shellcheck disable=SC2086 # the rule is a word list we wrote ourselves
            ip netns exec "$(ns "$k")" iptables -t mangle -D PREROUTING $rule 2>/dev/null || true
        done <"$rules"
        rm -f "$rules"
    fi
    ip netns exec "$(ns "$a")" tc qdisc del dev "to-h$b" root 2>/dev/null || true
    ip netns exec "$(ns "$b")" tc qdisc del dev "to-h$a" root 2>/dev/null || true
    ip netns exec "$(ns "$b")" nft delete table inet "ssts_loss_h${a}_h${b}" 2>/dev/null || true
    local pid_file=$lab_dir/elements/h$a-h$b.pid pid host comm
    if [[ -f $pid_file ]]; then
        while read -r pid host; do
            host=${host:-$b}
            comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
            # Only our elements: the pid must still be a delay element in that host's namespace.
            if [[ $comm == tcp-delay || $comm == nfq-delay ]] && ip netns pids "$(ns "$host")" | grep -qx "$pid"; then
                kill -TERM "$pid" 2>/dev/null || true
                # Gone (its port and queue free, its summary logged) before the link is impaired
                # anew; at most 5 s.
                local deadline=$((SECONDS + 5))
                while [[ -e /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.01; done
            fi
        done <"$pid_file"
        rm -f "$pid_file"
    fi
    if [[ -f $offloads ]]; then
        local dev tso gso gro
        while read -r k dev _ tso _ gso _ gro; do
            ip netns exec "$(ns "$k")" ethtool -K "$dev" tso "$tso" gso "$gso" gro "$gro" 2>/dev/null || true
        done <"$offloads"
        rm -f "$offloads"
    fi
}

# Starts nfq-delay in host $1 on queue $2 (holding $3 ms ± $4 ms), appending to log $5, and
# queues to it what arrives at host $1 on device $6.
start_nfq_element() {
    local k=$1 queue=$2 delay=$3 jitter=$4 log=$5 dev=$6 pid rule
    ip netns exec "$(ns "$k")" setsid "$(nfq_bin)" --queue "$queue" --delay "$delay" --jitter "$jitter" \
        </dev/null >>"$log" 2>&1 &
    pid=$!
    echo "$pid $k" >>"$lab_dir/elements/h$link_a-h$link_b.pid"
    wait_for_line "$log" "listening on queue $queue " 10 "$pid" || die "impair: nfq-delay did not start in h$k: $(cat "$log")"
    # Only once the element listens: until then the queue would drop the link's packets. No
    # --queue-bypass: a dead element must blackhole the link (an outage the tool names), not
    # silently leave it undelayed.
    rule="-i $dev -j NFQUEUE --queue-num $queue"
    # shellcheck disable=SC2086 # a word list we built
    ip netns exec "$(ns "$k")" iptables -t mangle -A PREROUTING $rule || die "impair: iptables NFQUEUE refused in h$k"
    echo "$k $rule" >>"$lab_dir/links/h$link_a-h$link_b.rules"
}

cmd_impair() {
    local link=${1:?impair needs a LINK}
    shift
    local delay=0 jitter=0 rate='' loss='' port=9000 element_port='' mechanism=auto
    while (($#)); do
        case $1 in
            --delay) delay=${2:?}; shift 2 ;;
            --jitter) jitter=${2:?}; shift 2 ;;
            --rate) rate=${2:?}; shift 2 ;;
            --loss) loss=${2:?}; shift 2 ;;
            --port) port=${2:?}; shift 2 ;;
            --element-port) element_port=${2:?}; shift 2 ;;
            --mechanism) mechanism=${2:?}; shift 2 ;;
            *) die "impair: unknown option '$1'" ;;
        esac
    done
    local number='^[0-9]+([.][0-9]+)?$'
    [[ $delay =~ $number && $jitter =~ $number ]] || die "impair: --delay and --jitter take milliseconds, e.g. 1 or 0.1"
    [[ -z $rate || $rate =~ $number ]] || die "impair: --rate takes Mbit/s, e.g. 100"
    [[ -z $loss || ($loss =~ $number && $(awk -v p="$loss" 'BEGIN { print (p <= 100) }') == 1) ]] ||
        die "impair: --loss takes a percentage 0..100, e.g. 3 or 0.05"
    [[ $port =~ ^[0-9]+$ ]] || die "impair: bad --port '$port'"
    element_port=${element_port:-$((port + 1))}
    [[ $mechanism =~ ^(auto|netem|nfqueue|tcp-delay)$ ]] || die "impair: --mechanism is auto, netem, nfqueue or tcp-delay"
    load_state
    parse_link "$link"
    local a=$link_a b=$link_b
    cmd_clear "h$a-h$b"
    mkdir -p "$lab_dir/elements" "$lab_dir/links"

    local left right target
    left=$(ns "$a") right=$(ns "$b")
    target=$(host_addr "$b"):$port
    local delayed=false
    awk -v d="$delay" -v j="$jitter" 'BEGIN { exit !(d > 0 || j > 0) }' && delayed=true
    # Drops per 10000 packets: nft's numgen counts in integers, so 0.01% is the finest step.
    local per_10000=''
    [[ -z $loss ]] || per_10000=$(awk -v p="$loss" 'BEGIN { printf "%d", p * 100 + 0.5 }')
    local loss_text=${loss:+, loss $loss % both ways}

    # Asked for by name, an element is placed even at 0 ms: what it costs by itself.
    [[ $mechanism == tcp-delay || $mechanism == nfqueue ]] && delayed=true
    if [[ $mechanism == auto ]]; then
        if have_netem "$left"; then
            mechanism=netem
        elif have_nfqueue; then
            mechanism=nfqueue
        else
            mechanism=tcp-delay
        fi
    fi
    offloads_off "$a" "to-h$b"
    offloads_off "$b" "to-h$a"
    if [[ $mechanism == netem ]]; then
        local end dev namespace
        for end in "$a $b" "$b $a"; do
            read -r namespace dev <<<"$(ns "${end% *}") to-h${end#* }"
            ip netns exec "$namespace" tc qdisc add dev "$dev" root handle 1: netem delay "${delay}ms" "${jitter}ms" \
                ${loss:+loss "${loss}%"} || die "impair: netem refused on $dev of $namespace"
            if [[ -n $rate ]]; then add_tbf "$namespace" "$dev" "$rate" 1:1 || die "impair: tbf refused"; fi
        done
        echo "lab: link h$a⇄h$b: netem delay ${delay} ms ± ${jitter} ms each way${rate:+, tbf rate $rate Mbit/s}${loss_text}" >&2
        printf '%s\n' "$target"
        return
    fi

    # No netem: loss is nft in hB, the rate limit is tbf on both veth ends if the kernel has it,
    # the delay a user-space element (tcp-delay also paces when tbf is missing).
    [[ -z $per_10000 ]] || add_nft_loss "$a" "$b" "$per_10000"
    local rate_by='' element_rate=()
    if [[ -n $rate ]]; then
        if add_tbf "$left" "to-h$b" "$rate" 2>/dev/null && add_tbf "$right" "to-h$a" "$rate" 2>/dev/null; then
            rate_by="tbf rate $rate Mbit/s"
        elif [[ $mechanism == nfqueue ]]; then
            die "impair: --rate needs tbf, which this kernel refused (--mechanism tcp-delay paces by itself)"
        else
            ip netns exec "$left" tc qdisc del dev "to-h$b" root 2>/dev/null || true
            element_rate=(--rate-mbit "$rate") rate_by="tcp-delay --rate-mbit $rate" delayed=true
        fi
    fi
    if ! $delayed; then
        local what=${rate_by:+, $rate_by}${loss_text}
        echo "lab: link h$a⇄h$b: ${what#, } (no delay)" >&2
        printf '%s\n' "$target"
        return
    fi
    local log=$lab_dir/elements/h$a-h$b.log
    : >"$log"
    if [[ $mechanism == nfqueue ]]; then
        have_nfqueue || die "impair: --mechanism nfqueue needs iptables and the nfq-delay binary (cargo build --release)"
        # One element at each end, holding what arrives there: both directions are delayed, and
        # the link's own TCP connection stays end to end.
        start_nfq_element "$b" "$(queue_from "$a")" "$delay" "$jitter" "$log" "to-h$a"
        start_nfq_element "$a" "$(queue_from "$b")" "$delay" "$jitter" "$log" "to-h$b"
        echo "lab: link h$a⇄h$b: packet delay element nfq-delay (NFQUEUE; this kernel has no netem qdisc):" \
            "${delay} ms ± ${jitter} ms each way${rate_by:+, $rate_by}${loss_text}; queues $(queue_from "$a") in h$b" \
            "and $(queue_from "$b") in h$a, so h$a sends to $target as usual" >&2
        printf '%s\n' "$target"
        return
    fi
    local bin pid element
    bin=$(delay_bin)
    element=$(host_addr "$b"):$element_port
    ip netns exec "$right" setsid "$bin" --listen "$element" --forward-to "$target" \
        --delay-ms "$delay" --jitter-ms "$jitter" "${element_rate[@]}" </dev/null >"$log" 2>&1 &
    pid=$!
    echo "$pid $b" >"$lab_dir/elements/h$a-h$b.pid"
    wait_for_line "$log" 'listening on' 10 "$pid" || die "impair: tcp-delay did not start: $(cat "$log")"
    echo "lab: link h$a⇄h$b: user-space delay element tcp-delay (this kernel has no netem qdisc):" \
        "${delay} ms ± ${jitter} ms each way${rate_by:+, $rate_by}${loss_text}; in h$b on $element in front of $target," \
        "so h$a must send to $element" >&2
    printf '%s\n' "$element"
}

# -- main ---------------------------------------------------------------------------------------

while (($#)); do
    case $1 in
        --dir) lab_dir=${2:?--dir needs a value}; shift 2 ;;
        -h | --help | help) usage; exit 0 ;;
        *) break ;;
    esac
done
lab_dir=$(realpath -m -- "$lab_dir")
command=${1:-}
shift || true
case $command in
    up) cmd_up "$@" ;;
    down)
        while (($#)); do
            case $1 in
                --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
                *) die "down: unknown option '$1'" ;;
            esac
        done
        cmd_down
        ;;
    impair) cmd_impair "$@" ;;
    clear) cmd_clear "$@" ;;
    exec)
        load_state
        host=${1:?exec needs a HOST}
        shift
        (($#)) || die "exec: no command"
        index=$(host_index "$host")
        exec ip netns exec "$(ns "$index")" "$@"
        ;;
    addr)
        load_state
        index=$(host_index "${1:?addr needs a HOST}")
        if [[ ${2:-} == -6 ]]; then
            $ipv6 || die "addr: this lab has no IPv6 (the machine has it switched off)"
            host_addr6 "$index"
        else
            host_addr "$index"
        fi
        echo
        ;;
    env)
        load_state
        printf 'LAB_DIR=%q\nPREFIX=%q\nHOSTS=%q\nSSH_CONFIG=%q\n' "$lab_dir" "$prefix" "$hosts" "$lab_dir/ssh_config"
        ;;
    '') usage >&2; exit 2 ;;
    *) die "unknown command '$command' (try --help)" ;;
esac
