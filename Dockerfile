# The meshnet DaemonSet image: meshnetd (the node daemon, the entrypoint) and meshnet (the CNI
# plugin, which meshnetd copies into the node's CNI bin directory at start).
#
# Build context: not the repository but a directory prepared by scripts/image-context.sh, which
# puts the two binaries and the shared libraries meshnetd loads (resolved with ldd, the dynamic
# loader included) under rootfs/. The plugin `meshnet` is statically linked (.cargo/config.toml):
# it is copied onto the node and must run with whatever libc the node has, or none.
#
#   cargo build --release -p meshnet-daemon -p meshnet-cni --bins
#   scripts/image-context.sh release target/image-context
#   podman build -f Dockerfile -t docker.io/meshnet/meshnet:latest target/image-context
#
# (`make docker` does exactly this, with docker when a Docker engine answers, else podman.)
#
# FROM scratch, so the build pulls nothing and works with no registry in reach. A registry-connected
# build could equally start FROM gcr.io/distroless/cc-debian12 (glibc, libgcc_s, CA certificates,
# /var/run -> /run) and COPY only rootfs/usr/local/bin/: the libraries would then come from the base
# image instead of the build machine, which must then be no newer than the base's glibc.
FROM scratch
COPY rootfs/ /
ENTRYPOINT ["/usr/local/bin/meshnetd"]
