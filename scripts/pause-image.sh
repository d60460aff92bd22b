#!/usr/bin/env bash
# Builds a pause image without any registry: a tiny static program that sleeps until it is
# signalled (and reaps orphans, as the pod's PID 1 may have to), packed as an OCI image archive
# for `ctr -n k8s.io images import`.
#
#   pause-image.sh OUT.tar IMAGE_NAME     e.g. pause-image.sh /tmp/pause.tar meshnet.local/pause:1
#
# IMAGE_NAME goes into the index as `io.containerd.image.name`, which `ctr images import` uses
# as the image's name; give the same name as containerd's `sandbox_image`. The layer is
# uncompressed and its tar made reproducible (numeric owner 0, mtime 0), so the same compiler
# gives the same digest. Needs gcc with a static libc (Debian's libc6-dev has libc.a), tar,
# sha256sum.
set -euo pipefail
out=$(realpath -m "${1:?usage: pause-image.sh OUT.tar IMAGE_NAME}")
name=${2:?usage: pause-image.sh OUT.tar IMAGE_NAME}
case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs" "$work/oci/blobs/sha256"
cat > "$work/pause.c" <<'C'
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void done(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
  signal(SIGINT, done);
  signal(SIGTERM, done);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
C
gcc -static -Os -s -o "$work/rootfs/pause" "$work/pause.c"

# blob FILE MEDIA_TYPE: stores FILE as a blob, prints its descriptor
blob() {
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  cp "$1" "$work/oci/blobs/sha256/$digest"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$digest" "$size"
}

tar --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -C "$work/rootfs" -cf "$work/layer.tar" pause
layer=$(blob "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":["/pause"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$arch" "$diff_id" > "$work/config.json"
config=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
  "$config" "$layer" > "$work/manifest.json"
manifest=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)
# the descriptor plus the names (one closing brace replaced)
printf '{"schemaVersion":2,"manifests":[%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "${manifest%\}}" "$arch" "$name" "${name##*:}" > "$work/oci/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
tar --owner=0 --group=0 --numeric-owner --mtime=@0 --sort=name -C "$work/oci" -cf "$out.tmp" .
mv "$out.tmp" "$out"
