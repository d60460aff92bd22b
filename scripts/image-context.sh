#!/usr/bin/env bash
# Assembles the build context of the DaemonSet image (see Dockerfile) from target/PROFILE:
#
#   OUTDIR/rootfs/usr/local/bin/{meshnetd,meshnet}   the two binaries (debug info stripped)
#   OUTDIR/rootfs/<path>                             every shared library they load, at the path
#                                                    the dynamic loader resolves (ldd), and the
#                                                    loader itself (PT_INTERP)
#   OUTDIR/rootfs/var/run -> ../run                  as on Debian, so /var/run/netns == /run/netns
#   OUTDIR/rootfs/tmp                                (mode 1777)
#
# The image is FROM scratch, so nothing is pulled: the libraries come from the build machine, the
# same ones the binaries were linked against. `meshnet` (the CNI plugin, which the installer copies
# onto the node) must be statically linked (.cargo/config.toml does it): the script refuses a
# dynamic one, which would need the node's libc to be at least the build machine's.
#
# Usage: scripts/image-context.sh PROFILE OUTDIR     (PROFILE: debug, release, or any
#        cargo profile directory under target/; CARGO_TARGET_DIR is honoured)
set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 PROFILE OUTDIR" >&2
  exit 2
fi
profile=$1
out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bins=(meshnetd meshnet)

for b in "${bins[@]}"; do
  if [[ ! -x $target/$profile/$b ]]; then
    echo "$target/$profile/$b not found: build it first (cargo build --bins${profile:+ --profile $profile})" >&2
    exit 1
  fi
done

rootfs=$out/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/run" "$rootfs/var" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
ln -s ../run "$rootfs/var/run"

for b in "${bins[@]}"; do
  dst=$rootfs/usr/local/bin/$b
  if command -v objcopy >/dev/null; then
    # Debug sections only: the symbol table stays for readable backtraces.
    objcopy --strip-debug "$target/$profile/$b" "$dst"
  else
    cp "$target/$profile/$b" "$dst"
  fi
  chmod 0755 "$dst"
done

# The plugin runs on the node, outside the image: no loader, no shared library (no PT_INTERP).
if LC_ALL=C readelf -l "$target/$profile/meshnet" 2>/dev/null | grep -q 'Requesting program interpreter'; then
  echo "$target/$profile/meshnet is dynamically linked: build it through the workspace's" \
    ".cargo/config.toml (it adds +crt-static), e.g. cargo build -p meshnet-cni --bins" >&2
  exit 1
fi

# Shared libraries and the loader, at the paths ldd resolves them to (dynamic binaries only; ldd
# fails on a static one). `ldd` lines look like
#   libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)
#   /lib64/ld-linux-x86-64.so.2 (0x...)
#   linux-vdso.so.1 (0x...)                       (in the kernel: skipped)
dynamic=()
for b in "${bins[@]}"; do
  if LC_ALL=C readelf -l "$target/$profile/$b" | grep -q 'Requesting program interpreter'; then
    dynamic+=("$target/$profile/$b")
  fi
done
lddout=$(for b in "${dynamic[@]}"; do ldd "$b"; done)
if grep -q 'not found' <<<"$lddout"; then
  echo "a shared library of the binaries is missing on this machine (ldd says 'not found')" >&2
  exit 1
fi
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$lddout" | sort -u)
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

du -sh "$rootfs" | awk '{ print "image context: " $1 " in '"$rootfs"'" }'
