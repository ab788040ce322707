#!/usr/bin/env bash
# Installs, from Debian's packages, what scripts/lab.sh, scripts/deploy-chain.sh and tests/lab.rs
# need: ip/tc/ss/nstat (iproute2), sshd (openssh-server), ssh (openssh-client), the impairments'
# nft (nftables: loss), iptables (its NFQUEUE target: the nfq-delay element) and ethtool (offloads
# off on an impaired link), shellcheck to lint the scripts, prometheus (tests/metrics.rs and
# scripts/monitor-demo.sh run its server binary against --metrics), and the unmodified clients
# and servers tests/ingress.rs puts a chain between: nginx and curl, redis-server and
# redis-tools (redis-cli, redis-benchmark), iperf3 and sockperf. Idempotent: installs only what is missing, runs `apt-get update` at most once.
#
# openssh-server's, prometheus's, nginx's and redis-server's installs would normally start
# system-wide services; the lab runs its own sshd per namespace, and the metrics test its own
# Prometheus with its own config, so a temporary policy-rc.d forbids starting services while this
# script installs.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/lab-deps.sh [--no-shellcheck]

Installs (apt-get, as root) whichever of iproute2, openssh-server, openssh-client, nftables,
iptables, ethtool, prometheus, nginx, curl, redis-server, redis-tools, iperf3, sockperf and
shellcheck is missing. Does nothing when all are present. Never starts a system-wide service.
EOF
}

packages=(iproute2 openssh-server openssh-client nftables iptables ethtool prometheus
    nginx curl redis-server redis-tools iperf3 sockperf shellcheck)
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --no-shellcheck) packages=("${packages[@]/shellcheck/}") ;;
        *) echo "lab-deps: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

missing=()
for package in "${packages[@]}"; do
    [[ -n $package ]] || continue
    installed "$package" || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
    echo "lab-deps: all present: ${packages[*]}" >&2
    exit 0
fi
if ((EUID != 0)); then
    echo "lab-deps: missing ${missing[*]}; run as root to install them" >&2
    exit 1
fi

echo "lab-deps: installing ${missing[*]}" >&2
policy=/usr/sbin/policy-rc.d
remove_policy=false
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# written by subsegment-tcp-speeds scripts/lab-deps.sh while it installs\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    remove_policy=true
fi
cleanup() {
    if $remove_policy; then rm -f "$policy"; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "lab-deps: installed ${missing[*]}" >&2
