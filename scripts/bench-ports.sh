#!/bin/bash
# Cost of ports (issue 12, README "DESIGN notes: ports"), outside meshnet: iperf3 TCP, one
# stream, 3 s, three runs, each path against the direct kernel path in the same run.
#   same node: veth between two pods  vs  two ports (veth + node end) patched by tc mirred
#   VXLAN:     vxlan device in the pod vs  port patched to a vxlan device in the node
# Needs root, iproute2, tc, iperf3. Leaves nothing behind (namespaces deleted on exit).
set -euo pipefail
P=pb$$
NS="a b n n1 n2 a1 a2 b1 b2"
for n in $NS; do ip netns add $P$n; ip -n $P$n link set lo up; done
trap 'for n in $NS; do ip netns del $P$n 2>/dev/null || true; done' EXIT
mirred() { # NS DEV TO: frames entering DEV leave through TO
  ip netns exec $P$1 tc qdisc add dev $2 ingress 2>/dev/null || true
  ip netns exec $P$1 tc filter add dev $2 ingress protocol all u32 match u8 0 0 \
    action mirred egress redirect dev $3
}
# Same node: direct veth a:d1 <-> b:d2; ports a:p1 <-> n:pa ~ n:pb <-> b:p2.
ip -n ${P}a link add d1 type veth peer name d2 netns ${P}b
ip -n ${P}a addr add 10.9.0.1/24 dev d1; ip -n ${P}a link set d1 up
ip -n ${P}b addr add 10.9.0.2/24 dev d2; ip -n ${P}b link set d2 up
ip -n ${P}n link add pa mtu 65535 type veth peer name p1 netns ${P}a
ip -n ${P}n link add pb mtu 65535 type veth peer name p2 netns ${P}b
ip -n ${P}a addr add 10.9.1.1/24 dev p1; ip -n ${P}a link set p1 up
ip -n ${P}b addr add 10.9.1.2/24 dev p2; ip -n ${P}b link set p2 up
ip -n ${P}n link set pa up; ip -n ${P}n link set pb up
mirred n pa pb; mirred n pb pa
# VXLAN: nodes n1, n2 on a veth underlay; pods a1/a2 hold the device, b1/b2 have ports.
ip -n ${P}n1 link add u type veth peer name u netns ${P}n2
ip -n ${P}n1 addr add 10.77.0.1/24 dev u; ip -n ${P}n1 link set u up
ip -n ${P}n2 addr add 10.77.0.2/24 dev u; ip -n ${P}n2 link set u up
for i in 1 2; do
  o=$((3 - i))
  ip -n ${P}n$i link add vd type vxlan id 100 local 10.77.0.$i remote 10.77.0.$o dev u dstport 4789
  ip -n ${P}n$i link set vd mtu 1450 netns ${P}a$i
  ip -n ${P}a$i addr add 10.9.2.$i/24 dev vd; ip -n ${P}a$i link set vd up
  ip -n ${P}n$i link add vp type vxlan id 200 local 10.77.0.$i remote 10.77.0.$o dev u dstport 4789
  ip -n ${P}n$i link set vp mtu 1450 up
  ip -n ${P}n$i link add mp mtu 65535 type veth peer name eth1 netns ${P}b$i
  ip -n ${P}n$i link set mp up
  ip -n ${P}b$i link set eth1 mtu 1450 up; ip -n ${P}b$i addr add 10.9.3.$i/24 dev eth1
  mirred n$i mp vp; mirred n$i vp mp
done
sleep 0.5
run() { # CLIENT-NS SERVER-NS ADDR
  ip netns exec ${P}$2 iperf3 -s -1 -D; sleep 0.3
  ip netns exec ${P}$1 iperf3 -c $3 -t 3 -J | python3 -c \
    'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,2))'
}
for i in 1 2 3; do
  echo "same node: veth $(run a b 10.9.0.2) ports $(run a b 10.9.1.2) Gbit/s"
  echo "vxlan: in pod $(run a1 a2 10.9.2.2) port+node device $(run b1 b2 10.9.3.2) Gbit/s"
done
