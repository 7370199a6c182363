#!/usr/bin/env bash
# Build Ferry's tiny test guest (HOST-6): a Debian 6.1 kernel plus a busybox initramfs with
# qemu-guest-agent and the record-writing workload in scripts/guest/init.
#
# Usage: scripts/build-test-guest.sh OUTDIR
# Outputs: OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/manifest.txt (exact package files used)
#
# Idempotent: OUTDIR/stamp holds a hash of the inputs (this script, scripts/guest/*, the exact
# package versions). When it matches and both outputs exist, nothing is done.
# Reproducible: the same package versions give a byte-identical initrd.img (sorted cpio with
# fixed mtimes and owners, gzip -n).
set -euo pipefail

OUT=${1:?usage: build-test-guest.sh OUTDIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST="$HERE/guest"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# Packages that go into the guest. qemu-guest-agent's shared libraries come from the Debian
# packages it depends on (resolved recursively below), never from the build host.
QGA_PKGS=(qemu-guest-agent libc6 libgcc-s1 libglib2.0-0 libnuma1 libudev1 liburing2 libffi8
          libmount1 libblkid1 libselinux1 libpcre2-8-0 zlib1g)
# Modules, in load order (dependencies first).
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
         virtio_console failover net_failover virtio_net evdev button
         crc16 mbcache jbd2 crc32c_generic ext4)

declare -A VER=()
load_versions() {
    # One apt-cache call for all packages (each call loads the whole cache).
    local name ver
    VER=()
    while read -r name ver; do
        [ "$ver" = "(none)" ] || VER[$name]=$ver
    done < <(apt-cache policy "$@" 2>/dev/null \
                 | awk '/^[^ ]/ { p = $1; sub(/:$/, "", p) } /^ +Candidate:/ { print p, $2 }')
}
pkg_version() {
    echo "${VER[$1]:-}"
}

kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-6\.1\.0-[0-9]*-amd64\)$/\1/p' | head -n1
}

KPKG=$(kernel_pkg || true)
if [ -z "$KPKG" ]; then
    echo "build-test-guest: apt lists have no kernel package; running apt-get update" >&2
    apt-get update -qq >&2
    KPKG=$(kernel_pkg)
fi
[ -n "$KPKG" ] || { echo "build-test-guest: cannot find linux-image-6.1.0-*-amd64" >&2; exit 1; }

PKGS=("$KPKG" busybox-static "${QGA_PKGS[@]}")
load_versions "${PKGS[@]}"
INPUTS=""
for p in "${PKGS[@]}"; do
    v=$(pkg_version "$p")
    [ -n "$v" ] || { echo "build-test-guest: no version for package $p" >&2; exit 1; }
    INPUTS+="$p=$v"$'\n'
done
STAMP=$( { printf '%s' "$INPUTS"; cat "${BASH_SOURCE[0]}"; find "$GUEST" -type f | LC_ALL=C sort | xargs cat; } \
         | sha256sum | cut -d' ' -f1)

if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] \
   && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ]; then
    echo "build-test-guest: up to date ($OUT)"
    exit 0
fi

WORK="$OUT/work"
rm -rf "$WORK"
mkdir -p "$WORK/debs" "$WORK/x" "$WORK/root"

# Downloaded packages are kept in OUTDIR/debs/<pkg>=<version>/ so rebuilds do not download again.
fetch_all() {
    local p v dir
    for p in "${PKGS[@]}"; do
        v=$(pkg_version "$p")
        dir="$OUT/debs/$p=$v"
        if ! ls "$dir"/*.deb >/dev/null 2>&1; then
            rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
            (cd "$dir.tmp" && apt-get download -q -o APT::Sandbox::User=root "$p=$v" >&2) || return 1
            rm -rf "$dir" && mv "$dir.tmp" "$dir"
        fi
        cp "$dir"/*.deb "$WORK/debs/"
    done
}
if ! fetch_all; then
    echo "build-test-guest: download failed; refreshing apt lists and retrying" >&2
    apt-get update -qq >&2
    load_versions "${PKGS[@]}"
    rm -f "$WORK"/debs/*.deb
    fetch_all
fi
for d in "$WORK"/debs/*.deb; do dpkg -x "$d" "$WORK/x"; done

X="$WORK/x"
R="$WORK/root"
KVER=${KPKG#linux-image-}
[ -f "$X/boot/vmlinuz-$KVER" ] || { echo "build-test-guest: kernel image missing in $KPKG" >&2; exit 1; }

# Skeleton.
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib,lib/x86_64-linux-gnu,lib64,lib/modules,etc/acpi/PWRF,proc,sys,dev,run,tmp,mnt,var/run}
cp "$X/bin/busybox" "$R/bin/busybox"
install -m 0755 "$GUEST/init" "$R/init"
install -m 0755 "$GUEST/shutdown" "$R/sbin/shutdown"
install -m 0755 "$GUEST/power-button" "$R/etc/acpi/PWRF/00000080"

# Kernel modules (flat directory, loaded by /init in order).
KCONF="$X/boot/config-$KVER"
for m in "${MODULES[@]}"; do
    f=$(find "$X/lib/modules/$KVER" -name "$m.ko" -o -name "$m.ko.xz" | head -n1 || true)
    if [ -z "$f" ]; then
        # Built into the kernel (=y): nothing to load.
        continue
    fi
    case "$f" in
        *.xz) xz -dc "$f" > "$R/lib/modules/$m.ko" ;;
        *) cp "$f" "$R/lib/modules/$m.ko" ;;
    esac
    echo "$m" >> "$R/lib/modules/order"
done

# qemu-ga and the shared libraries it needs, resolved from the extracted packages only.
cp "$X/usr/sbin/qemu-ga" "$R/usr/sbin/qemu-ga"
LIBDIRS=("$X/lib/x86_64-linux-gnu" "$X/usr/lib/x86_64-linux-gnu" "$X/lib64")
declare -A SEEN=()
resolve() {
    local elf=$1 lib dir found
    for lib in $(readelf -d "$elf" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        [ -n "${SEEN[$lib]:-}" ] && continue
        SEEN[$lib]=1
        found=""
        for dir in "${LIBDIRS[@]}"; do
            if [ -e "$dir/$lib" ]; then found="$dir/$lib"; break; fi
        done
        [ -n "$found" ] || { echo "build-test-guest: $lib (needed by $elf) not in packages" >&2; exit 1; }
        cp -L "$found" "$R/lib/x86_64-linux-gnu/$lib"
        resolve "$R/lib/x86_64-linux-gnu/$lib"
    done
}
resolve "$R/usr/sbin/qemu-ga"
# The loader (absolute symlink in /lib64 inside the package: take the real file).
cp -L "$X/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$R/lib64/ld-linux-x86-64.so.2"

# Archive: sorted, fixed mtimes and owners, no gzip timestamp.
find "$R" -exec touch -h -d @0 {} +
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -6 > "$OUT/initrd.img.tmp"
cp "$X/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
{
    echo "kernel $KVER"
    printf '%s' "$INPUTS"
    grep -E '^CONFIG_(VIRTIO|VIRTIO_PCI|VIRTIO_BLK|VIRTIO_NET|VIRTIO_CONSOLE|ACPI_BUTTON|INPUT_EVDEV|EXT4_FS|EXT4_USE_FOR_EXT2)=' "$KCONF" || true
    echo "modules: $(tr '\n' ' ' < "$R/lib/modules/order")"
} > "$OUT/manifest.txt"
echo "$STAMP" > "$OUT/stamp"
rm -rf "$WORK"
echo "build-test-guest: built $OUT/vmlinuz and $OUT/initrd.img ($(stat -c %s "$OUT/initrd.img") bytes)"
