#!/usr/bin/env bash
# Installs what the lab, the demo and the tests need from Debian's packages, if missing:
# iproute2 (ip), iputils-ping, the reference CNI plugins (ptp, host-local, portmap), iperf3,
# ethtool, jq. Needs root (the lab makes network namespaces anyway).
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
[[ -x /usr/lib/cni/ptp || -x /opt/cni/bin/ptp ]] || need+=(containernetworking-plugins)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ethtool >/dev/null || need+=(ethtool)
command -v jq >/dev/null || need+=(jq)
command -v nsenter >/dev/null || need+=(util-linux)
if ((${#need[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "missing packages: ${need[*]} — run as root (the lab needs root anyway)" >&2
  exit 1
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
