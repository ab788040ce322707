#!/usr/bin/env bash
# Installs, from Debian's packages, what the tests need beyond the Rust toolchain: the
# multi-host lab's iproute2, openssh-server, openssh-client, nftables, iptables and ethtool,
# and the linter of the scripts, shellcheck (scripts/lab-deps.sh does the work). Without root it
# only says what is missing; the tests that need root or those packages then say they were
# skipped.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" -ne 0 ]; then
  "$here/lab-deps.sh" || echo "install-deps.sh: not root; the lab tests will be skipped" >&2
  exit 0
fi
exec "$here/lab-deps.sh"
