#!/usr/bin/env bash
# Install what Ferry needs on a fresh Debian 12 machine (idempotent): QEMU 7.2 (system
# emulator and qemu-img from the same release), iproute2, busybox and cpio for the test guest,
# Chromium for the portal's browser tests, libfaketime for the soak's wrong-clock fault,
# promtool (prometheus) and systemd-analyze for the monitoring and packaging tests, cargo-deb
# for the packages, and build the test guest into target/test-guest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=0
for c in qemu-system-x86_64 qemu-img ip busybox cpio rsync chromium faketime promtool systemd-analyze dpkg-deb; do
    command -v "$c" >/dev/null 2>&1 || need_apt=1
done
# qemu-img and qemu-system must come from the same QEMU release.
if [ $need_apt -eq 0 ]; then
    sys=$(qemu-system-x86_64 --version | awk 'NR==1{print $4}')
    img=$(qemu-img --version | awk 'NR==1{print $3}')
    [ "$sys" = "$img" ] || need_apt=1
fi
if [ $need_apt -eq 1 ]; then
    echo "setup: installing system packages" >&2
    $SUDO apt-get update -qq
    V=$(apt-cache policy qemu-system-x86 | awk '/Candidate/{print $2}')
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --allow-downgrades \
        "qemu-system-x86=$V" "qemu-utils=$V" "qemu-block-extra=$V" \
        iproute2 busybox-static cpio kmod rsync chromium fonts-dejavu-core faketime \
        prometheus systemd dpkg >/dev/null
fi
if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "setup: installing cargo-deb" >&2
    cargo install cargo-deb --version 3.8.0 --locked --quiet
fi
scripts/build-test-guest.sh target/test-guest >&2
