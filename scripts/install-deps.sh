#!/usr/bin/env bash
# Installs what the lab, the demo and the tests need from Debian's packages, if missing:
# iproute2 (ip), iputils-ping, tcpdump (reads back `meshnet-lab capture` files), the reference
# CNI plugins (ptp, host-local, portmap), iperf3,
# ethtool, jq, nftables (the gRPC lab blocks VXLAN with it), curl + openssl + xz-utils (the test
# API server), python3 (raw-frame tests), podman + runc (the image test), prometheus (promtool and
# the scrape test), frr (routers in lab pods: OSPF/BFD tests), containerd (the CRI test drives a
# real runtime), protobuf-compiler (the CRI client's build script compiles the CRI protos), gcc +
# libc6-dev (the CRI test builds a static pause program), file (the static plugin test). Needs
# root (the lab makes network namespaces anyway).
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
[[ -x /usr/lib/cni/ptp || -x /opt/cni/bin/ptp ]] || need+=(containernetworking-plugins)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ethtool >/dev/null || need+=(ethtool)
command -v jq >/dev/null || need+=(jq)
command -v nsenter >/dev/null || need+=(util-linux)
command -v nft >/dev/null || need+=(nftables)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v xz >/dev/null || need+=(xz-utils)
command -v python3 >/dev/null || need+=(python3)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || command -v crun >/dev/null || need+=(runc)
command -v promtool >/dev/null || need+=(prometheus)
[[ -x /usr/lib/frr/zebra ]] || need+=(frr)
command -v containerd >/dev/null || need+=(containerd)
command -v protoc >/dev/null || need+=(protobuf-compiler)
# the CRI test's pause image: a static C program (libc.a is in libc6-dev)
command -v gcc >/dev/null || need+=(gcc)
[[ -f $(gcc -print-file-name=libc.a 2>/dev/null) ]] || need+=(libc6-dev)
command -v file >/dev/null || need+=(file)
if ((${#need[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "missing packages: ${need[*]} — run as root (the lab needs root anyway)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing: ${need[*]}"
# Packages with services (prometheus) must not start them on this machine: deny service starts
# while installing, as Debian's policy-rc.d allows.
policy=/usr/sbin/policy-rc.d
made_policy=
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
fi
trap '[[ -n $made_policy ]] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
