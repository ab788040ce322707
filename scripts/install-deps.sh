#!/usr/bin/env bash
# Installs, from Debian's packages, what the tests need beyond the Rust toolchain:
# iproute2 (network namespaces for the multi-host lab), openssh (the lab's sshd and ssh
# client, used by deploy-chain.sh), procps. Skips what is already installed; needs root to
# install (without root it only reports what is missing, and the root-only tests skip).
set -euo pipefail

packages=(iproute2 openssh-server openssh-client procps)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: not root; missing Debian packages: ${missing[*]}" >&2
  echo "install-deps.sh: the tests that need them will say they were skipped" >&2
  exit 0
fi
echo "install-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
