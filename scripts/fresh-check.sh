#!/usr/bin/env bash
# Proves that the README's two commands work on a really fresh Debian 12 machine that has
# only Rust: no make, no gcc, no libclang, no MPI.
#
#   sudo bash scripts/fresh-check.sh            # both README commands: demo, then tests
#   sudo bash scripts/fresh-check.sh test       # only the test command (what CI runs)
#   sudo bash scripts/fresh-check.sh demo
#
# How: `debootstrap --variant=minbase bookworm` builds a minimal Debian 12 (cached between
# runs under $CKPT_FRESH_CACHE, default /var/cache/ckpt-fresh); each run works on a fresh
# copy of it. Into that copy go libclang-cpp14 (to reproduce the trap of a libclang that
# bindgen cannot load), the host's CA bundle and resolv.conf (so apt and cargo reach their
# registries), the host's Rust toolchain (bind-mounted read-only) and a `git clone` of this
# repository's HEAD. The README's commands then run inside with chroot, as root, exactly as
# written. Nothing of the host's packages (gcc, OpenMPI, libclang) is visible inside.
#
# The apt and cargo download caches are kept under the cache directory too: they only save
# downloads, never a build step (the target directory always starts empty).
#
# Exit status: that of the README command(s); 3 if the fresh system itself could not be
# built (no debootstrap, no mirror, not root), so that callers can tell the two apart.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
what=("$@")
[ ${#what[@]} -gt 0 ] || what=(demo test)
for w in "${what[@]}"; do
    case "$w" in demo | test) ;; *) echo "usage: $0 [demo] [test]" >&2; exit 2 ;; esac
done

setup_fail() { echo "fresh-check: cannot build the fresh system: $*" >&2; exit 3; }
[ "$(id -u)" = 0 ] || setup_fail "must run as root (debootstrap, chroot, mounts)"

cache=${CKPT_FRESH_CACHE:-/var/cache/ckpt-fresh}
mkdir -p "$cache"

# The host's Debian mirror (never hard-coded here): from its apt sources.
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n 1 || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || setup_fail "no Debian mirror found in the host's apt sources"

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "fresh-check: installing debootstrap" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; } >&2 \
        || setup_fail "debootstrap is not installed and could not be installed"
fi

base="$cache/bookworm-minbase.tar"
if [ ! -s "$base" ]; then
    echo "fresh-check: debootstrap --variant=minbase bookworm (cached afterwards in $base)" >&2
    b=$(mktemp -d /var/tmp/ckpt-debootstrap.XXXXXX)
    if ! debootstrap --variant=minbase bookworm "$b" "$mirror" >"$cache/debootstrap.log" 2>&1; then
        tail -n 20 "$cache/debootstrap.log" >&2
        rm -rf "$b"
        setup_fail "debootstrap failed (log: $cache/debootstrap.log)"
    fi
    tar -C "$b" -cf "$base.tmp" . && mv "$base.tmp" "$base"
    rm -rf "$b"
fi

root=$(mktemp -d /var/tmp/ckpt-fresh.XXXXXX)
mounts=()
cleanup() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount -l "${mounts[$i]}" 2>/dev/null || true
    done
    if grep -q " $root" /proc/mounts; then
        echo "fresh-check: mounts remain under $root; not removing it" >&2
    else
        rm -rf --one-file-system "$root"
    fi
}
trap cleanup EXIT
bind() { # bind SRC DST [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2"
    mounts+=("$2")
    if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}

tar -C "$root" -xf "$base" || setup_fail "cannot unpack $base"
# A system's root is 0755 (mktemp, and the archive's top entry, make it 0700): tests that run
# as another user need to traverse it.
chmod 755 "$root"
mount -t proc proc "$root/proc" && mounts+=("$root/proc")
bind /sys "$root/sys" ro
bind /dev "$root/dev"
bind /dev/pts "$root/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm" && mounts+=("$root/dev/shm")
cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" \
    || setup_fail "the host has no CA bundle (/etc/ssl/certs/ca-certificates.crt)"
# Download caches only.
mkdir -p "$cache/apt-archives/partial" "$cache/cargo-registry"
bind "$cache/apt-archives" "$root/var/cache/apt/archives"
mkdir -p "$root/root/.cargo"
bind "$cache/cargo-registry" "$root/root/.cargo/registry"

# The host's Rust toolchain, read-only: what "a machine that has only Rust" has.
sysroot=$(rustc --print sysroot 2>/dev/null) || setup_fail "the host has no rustc"
bind "$sysroot" "$root/opt/rust" ro

# The trap: libclang-cpp14 ships libclang-cpp.so.14, which bindgen does not load.
echo "fresh-check: installing libclang-cpp14 into the fresh system" >&2
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends libclang-cpp14' \
    >"$cache/fresh-apt.log" 2>&1 || { tail -n 20 "$cache/fresh-apt.log" >&2; setup_fail "apt-get in the fresh system failed"; }
for tool in gcc cc make mpirun; do
    if chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c "command -v $tool" >/dev/null; then
        setup_fail "the fresh system unexpectedly has $tool"
    fi
done

# The repository as a new user gets it: a clone of HEAD.
git clone -q "$top" "$root/work/ckpt" || setup_fail "git clone of $top failed"
echo "fresh-check: fresh Debian 12 (minbase) ready at $root; HEAD $(git -C "$top" rev-parse --short HEAD)" >&2

status=0
for w in "${what[@]}"; do
    case "$w" in
    demo) cmd="bash scripts/demo.sh" ;;
    test) cmd="bash scripts/test.sh" ;;
    esac
    echo "fresh-check: running the README's $w command inside: $cmd" >&2
    chroot "$root" /usr/bin/env -i \
        HOME=/root PATH=/opt/rust/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 TERM=dumb CI="${CI:-}" CARGO_TERM_COLOR=never \
        sh -c "cd /work/ckpt && $cmd" || { status=$?; echo "fresh-check: $w FAILED (exit $status)" >&2; }
done
[ "$status" = 0 ] && echo "fresh-check: all passed on a fresh Debian 12: ${what[*]}" >&2
# For a caller that runs more tests on the host with the same build (.ci/run's Slurm test):
# the fresh system's `ckpt` and `heat` binaries (Debian 12 built, so they run on a Debian 12
# host with OpenMPI installed), copied out before the fresh system is removed.
if [ "$status" = 0 ] && [ -n "${CKPT_FRESH_EXPORT:-}" ]; then
    for b in target/debug/ckpt target/debug/examples/heat; do
        if [ -x "$root/work/ckpt/$b" ]; then cp "$root/work/ckpt/$b" "$CKPT_FRESH_EXPORT/"; fi
    done
fi
exit "$status"
