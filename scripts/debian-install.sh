#!/usr/bin/env bash
# Install Debian packages a test needs, unless they are there already (idempotent).
#   scripts/debian-install.sh 'CHECK' 'WHAT TO INSTALL WITHOUT APT' PACKAGE...
# CHECK is a shell command that succeeds when nothing is missing. apt-get update runs
# only when the package lists do not know the last PACKAGE yet.
set -euo pipefail
check=$1 without_apt=$2
shift 2
bash -c "$check" >/dev/null 2>&1 && exit 0
command -v apt-get >/dev/null || { echo "$without_apt" >&2; exit 1; }
sudo=
[ "$(id -u)" = 0 ] || sudo=sudo
apt-cache policy "${!#}" 2>/dev/null | grep -q 'Candidate: [0-9]' || $sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
