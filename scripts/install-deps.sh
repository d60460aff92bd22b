#!/usr/bin/env bash
# Installs what the lab, the demo and the tests need from Debian's packages, if missing:
# iproute2 (ip), iputils-ping, the reference CNI plugins (ptp, host-local, portmap), iperf3,
# ethtool, jq. Needs root (the lab makes network namespaces anyway).
# Optional, for the image test (daemon/tests/image.rs): podman and runc, to build and run the
# DaemonSet image with no registry; a failed optional install only warns, and that test skips.
# (The manifest test renders with kubectl's built-in kustomize.)
set -euo pipefail
optional=()
command -v podman >/dev/null || optional+=(podman)
command -v runc >/dev/null || command -v crun >/dev/null || optional+=(runc)
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
[[ -x /usr/lib/cni/ptp || -x /opt/cni/bin/ptp ]] || need+=(containernetworking-plugins)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ethtool >/dev/null || need+=(ethtool)
command -v jq >/dev/null || need+=(jq)
command -v nsenter >/dev/null || need+=(util-linux)
if ((${#need[@]} == 0 && ${#optional[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  if ((${#need[@]} == 0)); then
    echo "warning: optional packages missing: ${optional[*]} (run as root to install them)" >&2
    exit 0
  fi
  echo "missing packages: ${need[*]} — run as root (the lab needs root anyway)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ((${#need[@]} > 0)); then
  echo "installing: ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ((${#optional[@]} > 0)); then
  echo "installing (optional): ${optional[*]}"
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${optional[@]}" >/dev/null; }; then
    echo "warning: could not install ${optional[*]}: the image test will be skipped" >&2
  fi
fi
