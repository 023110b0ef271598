#!/usr/bin/env bash
# Builds libckpt (release) and installs it for C, C++ and Fortran programs under PREFIX:
#   PREFIX/lib/libckpt.so, libckpt.a, PREFIX/lib/pkgconfig/ckpt.pc,
#   PREFIX/include/ckpt.h, veloc.h, veloc/defs.h, ckpt.f90
# usage: scripts/install-c.sh PREFIX      (then: PKG_CONFIG_PATH=PREFIX/lib/pkgconfig)
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 PREFIX" >&2
    exit 2
fi
prefix=$(realpath -m "$1")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/scripts/deps.sh"
(cd "$here" && cargo build --release -p ckpt-mpi)
install -d -m 0755 "$prefix/lib/pkgconfig" "$prefix/include/veloc"
install -m 0755 "$here/target/release/libckpt.so" "$prefix/lib/"
install -m 0644 "$here/target/release/libckpt.a" "$prefix/lib/"
install -m 0644 "$here/mpi-shim/include/ckpt.h" "$here/mpi-shim/include/veloc.h" \
    "$here/mpi-shim/include/ckpt.f90" "$prefix/include/"
install -m 0644 "$here/mpi-shim/include/veloc/defs.h" "$prefix/include/veloc/"
sed -e "s|^includedir=.*|includedir=$prefix/include|" \
    -e "s|^libdir=.*|libdir=$prefix/lib|" \
    "$here/mpi-shim/ckpt.pc" >"$prefix/lib/pkgconfig/ckpt.pc"
echo "installed under $prefix; build with: PKG_CONFIG_PATH=$prefix/lib/pkgconfig mpicc app.c \$(pkg-config --cflags --libs ckpt)"
