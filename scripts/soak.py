#!/usr/bin/env python3
"""Soak: mixed traffic across a 3-node gRPC-wire lab while links flap and the underlay is cut, then account for every frame.

  scripts/soak.py [--seconds N] [--flap-every S] [--cut-every S] [--cut-for S] [--lab NAME]
                  [--rss-bound-mb MB]

* Lab: tests/5node.yml across 3 nodes with --link grpc (VXLAN blocked on the underlay).
* Traffic for the whole run: TCP (iperf3) r1 -> r2 over uid 1, and 64-byte UDP frames (iperf3 -u)
  r3 -> r4 over uid 6.
* Flaps: pod r5 (links to r1, r2, r3, r4) is restarted every --flap-every seconds: a new sandbox,
  its four wires torn down and rebuilt each time.
* Cuts: every --cut-every seconds (0: never) the underlay of r1's node (node1, which both
  traffic wires cross) is cut for --cut-for seconds (`meshnet-lab node node1 down`: its end of
  the lab's underlay goes down, so everything toward it is lost). That outlasts the wire's
  keepalive: its streams die with whatever was in flight, and reconnect when it is back. Per
  cut the report gives the frames sent and received over the grpc wires, and those counted as
  `stream_lost`, from just before the cut until the streams were back and settled.
* Afterwards, from every daemon's /metrics:
  - for every wire whose two pods were never restarted: frames sent by one half = frames received
    by the other + frames the receiver counted as dropped, in both directions, exactly;
  - over all wires: sent = received + dropped at the receiver + frames for unknown wire ids (a
    batch in flight when its receiving half was removed), exactly;
  - every daemon's resident memory stays under --rss-bound-mb;
  - every link verifies.
Exit status 0 when all hold; the report says what was measured.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Drop reasons counted by the receiving half (the rest are the sender's).
RECEIVER_DROPS = ("queue_full", "oversize", "io_error", "impairment", "stream_lost")
REPO = os.path.dirname(HERE)


def lab_bin():
    for profile in ("debug", "release"):
        p = os.path.join(REPO, "target", profile, "meshnet-lab")
        if os.path.exists(p):
            return p
    sys.exit("meshnet-lab is not built: cargo build --workspace --bins")


def run(args, check=True, capture=True):
    r = subprocess.run(args, capture_output=capture, text=True)
    if check and r.returncode != 0:
        sys.exit(f"`{' '.join(args)}` failed:\n{r.stdout}\n{r.stderr}")
    return r


def metrics(lab, node):
    text = run([LAB, "--lab", lab, "metrics", node]).stdout
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r'^([a-z_]+)(?:\{(.*)\})? ([0-9.eE+-]+)$', line)
        if not m:
            continue
        labels = dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def pid_rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(l.split(":", 1) for l in f if ":" in l)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError):
        return None, None


def wire_totals(lab):
    """Frames sent, received and lost with dead streams over every grpc wire, all nodes."""
    st = json.loads(run([LAB, "--lab", lab, "status", "--json"]).stdout)
    series = []
    for n in st["nodes"]:
        series += metrics(lab, n["name"])
    streams = [v for (m, l, v) in series if m == "meshnet_wire_connected"]

    def total(name, **want):
        return sum(v for (m, l, v) in series
                   if m == name and l.get("kind") == "grpc" and all(l.get(k) == w for k, w in want.items()))
    return {"sent": total("meshnet_link_tx_frames_total"),
            "received": total("meshnet_link_rx_frames_total"),
            "stream_lost": total("meshnet_link_drops_total", reason="stream_lost"),
            "peer_down": total("meshnet_link_drops_total", reason="peer_down"),
            "up": bool(streams) and all(v == 1 for v in streams)}


def cut(lab, seconds, node="node1"):
    """Cuts `node`'s underlay for `seconds`; returns what the grpc wires counted meanwhile."""
    before = wire_totals(lab)
    t0 = time.time()
    run([LAB, "--lab", lab, "node", node, "down"])
    time.sleep(seconds)
    run([LAB, "--lab", lab, "node", node, "up"])
    # Until every stream is back and the tallies settled (stream_lost stopped moving).
    last, after = None, None
    for _ in range(40):
        time.sleep(0.5)
        after = wire_totals(lab)
        if after["up"] and after["stream_lost"] == last:
            break
        last = after["stream_lost"]
    d = {k: int(after[k] - before[k]) for k in after if k != "up"}
    d["seconds"] = round(time.time() - t0, 1)
    d["streams_back"] = after["up"]
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--flap-every", type=int, default=30)
    ap.add_argument("--cut-every", type=float, default=0.0)
    ap.add_argument("--cut-for", type=float, default=4.0)
    ap.add_argument("--lab", default="soak")
    ap.add_argument("--rss-bound-mb", type=float, default=150.0)
    a = ap.parse_args()
    lab = a.lab
    run([LAB, "--lab", lab, "down"], check=False)
    try:
        return soak(a, lab)
    finally:
        run([LAB, "--lab", lab, "down"], check=False)


def soak(a, lab):
    run([LAB, "--lab", lab, "up", os.path.join(REPO, "tests", "5node.yml"), "--nodes", "3", "--link", "grpc"])
    st = json.loads(run([LAB, "--lab", lab, "status", "--json"]).stdout)
    pods = {p["name"]: p for p in st["pods"]}
    ns = lambda pod: pods[pod]["netns"]  # noqa: E731 (r1..r4 keep their sandbox all run)
    port_tcp, port_udp = 5401, 5402
    run(["ip", "netns", "exec", ns("r2"), "iperf3", "-s", "-1", "-D", "-p", str(port_tcp)])
    run(["ip", "netns", "exec", ns("r4"), "iperf3", "-s", "-1", "-D", "-p", str(port_udp)])
    time.sleep(0.5)
    tcp = subprocess.Popen(["ip", "netns", "exec", ns("r1"), "iperf3", "-c", "12.12.12.2", "-p", str(port_tcp),
                            "-t", str(a.seconds), "-J"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    udp = subprocess.Popen(["ip", "netns", "exec", ns("r3"), "iperf3", "-c", "34.34.34.4", "-p", str(port_udp),
                            "-u", "-l", "64", "-b", "20M", "-t", str(a.seconds), "-J"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.time()
    flaps = 0
    peak = {}
    cuts = []
    # Flaps at k*flap_every, cuts at (k-1/2)*cut_every: both while the traffic runs (a cut
    # ends at least 2 s before it stops), in time order.
    events = [(k * a.flap_every, "flap") for k in range(1, int(a.seconds // max(a.flap_every, 1)) + 1)
              if k * a.flap_every < a.seconds]
    if a.cut_every > 0:
        k = 0.5
        while k * a.cut_every + a.cut_for + 2 < a.seconds:
            events.append((k * a.cut_every, "cut"))
            k += 1
    for at, kind in sorted(events):
        time.sleep(max(0.0, at - (time.time() - start)))
        if kind == "flap":
            run([LAB, "--lab", lab, "restart", "r5"])
            flaps += 1
        else:
            cuts.append(cut(lab, a.cut_for))
        for n in json.loads(run([LAB, "--lab", lab, "status", "--json"]).stdout)["nodes"]:
            rss, hwm = pid_rss_mb(n["pid"])
            if hwm is not None:
                peak[n["name"]] = max(peak.get(n["name"], 0.0), hwm)
    tcp_out, _ = tcp.communicate()
    udp_out, _ = udp.communicate()
    time.sleep(2)  # let queues drain before reading counters
    report = {"seconds": a.seconds, "flaps": flaps, "cuts": cuts}
    try:
        t = json.loads(tcp_out)["end"]["sum_received"]
        report["tcp_gbytes"] = round(t["bytes"] / 1e9, 2)
        report["tcp_gbps"] = round(t["bits_per_second"] / 1e9, 2)
    except (ValueError, KeyError):
        report["tcp_error"] = tcp_out[-300:]
    try:
        u = json.loads(udp_out)["end"]["sum"]
        report["udp_packets"] = u.get("packets")
        report["udp_lost_percent"] = u.get("lost_percent")
    except (ValueError, KeyError):
        report["udp_error"] = udp_out[-300:]

    st = json.loads(run([LAB, "--lab", lab, "status", "--json"]).stdout)

    def scrape():
        out = []
        for n in st["nodes"]:
            out += metrics(lab, n["name"])
        return sorted(out, key=repr)

    # The nodes are scraped one after the other: a frame that crosses between two scrapes (a
    # pod's IPv6 router solicitation, say) is counted by its receiver but not its sender. Read
    # until two rounds agree, i.e. nothing moved in between.
    counted = ("meshnet_link_tx_frames_total", "meshnet_link_rx_frames_total",
               "meshnet_link_drops_total", "meshnet_wire_unknown_wire_frames_total")

    def frames(ss):
        return [x for x in ss if x[0] in counted]

    series = scrape()
    for _ in range(20):
        time.sleep(0.3)
        again = scrape()
        if frames(again) == frames(series):
            break
        series = again
    else:
        report["counters_settled"] = False
    for n in st["nodes"]:
        rss, hwm = pid_rss_mb(n["pid"])
        report[f"{n['name']}_rss_mb"] = round(rss or 0, 1)
        peak[n["name"]] = max(peak.get(n["name"], 0.0), hwm or 0.0)
    report["peak_rss_mb"] = {k: round(v, 1) for k, v in peak.items()}

    def total(name, **want):
        return sum(v for (m, l, v) in series if m == name and all(l.get(k) == w for k, w in want.items()))

    failures = []
    # Per wire, for wires between pods that kept their sandbox.
    wires = {}
    for (m, l, v) in series:
        if m == "meshnet_link_tx_frames_total" and l.get("kind") == "grpc":
            wires.setdefault(l["uid"], set()).add((l["pod"], l["peer_pod"]))
    checked = 0
    for uid, ends in sorted(wires.items(), key=lambda x: int(x[0])):
        for (pod, peer) in ends:
            if "r5" in (pod, peer):
                continue
            tx = total("meshnet_link_tx_frames_total", uid=uid, pod=pod, kind="grpc")
            rx = total("meshnet_link_rx_frames_total", uid=uid, pod=peer, kind="grpc")
            # Drops on the way in at the receiver; its `peer_down` are frames its own pod sent
            # while the carrier was off, not frames of this direction.
            dr = sum(total("meshnet_link_drops_total", uid=uid, pod=peer, kind="grpc", reason=r)
                     for r in RECEIVER_DROPS)
            checked += 1
            if tx != rx + dr:
                failures.append(f"uid {uid} {pod}->{peer}: sent {tx:.0f} != received {rx:.0f} + dropped {dr:.0f}")
    report["wires_checked_exactly"] = checked
    # Wires only: a kernel link's counters are its interfaces', and a port outlives its peer's
    # sandbox (issue 12), so across a flap its two ends count over different spans.
    tx = total("meshnet_link_tx_frames_total", kind="grpc")
    rx = total("meshnet_link_rx_frames_total", kind="grpc")
    rx_drops = sum(v for (m, l, v) in series if m == "meshnet_link_drops_total" and l.get("kind") == "grpc" and l.get("reason") in RECEIVER_DROPS)
    unknown = total("meshnet_wire_unknown_wire_frames_total")
    report.update(sent=tx, received=rx, dropped_at_receiver=rx_drops, unknown_wire=unknown,
                  peer_down=total("meshnet_link_drops_total", reason="peer_down"),
                  stream_lost=total("meshnet_link_drops_total", kind="grpc", reason="stream_lost"),
                  # What the pods sent faster than the wires read (dropped at the TAP, before `sent`).
                  tap_queue=total("meshnet_link_drops_total", kind="grpc", reason="tap_queue"))
    for i, c in enumerate(cuts):
        if not c["streams_back"]:
            failures.append(f"cut {i + 1}: the wire's streams were not all back {c['seconds']} s after it")
    if cuts and not any(c["stream_lost"] > 0 for c in cuts):
        failures.append("no cut lost a frame in flight: the cuts did not kill a loaded stream")
    if tx != rx + rx_drops + unknown:
        failures.append(f"all wires: sent {tx:.0f} != received {rx:.0f} + dropped {rx_drops:.0f} + unknown {unknown:.0f}")
    for node, mb in peak.items():
        if mb > a.rss_bound_mb:
            failures.append(f"{node}: daemon peak RSS {mb:.1f} MB over the bound {a.rss_bound_mb} MB")
    v = run([LAB, "--lab", lab, "verify"], check=False)
    report["verify"] = v.stdout.strip().splitlines()[-1] if v.stdout.strip() else v.stderr.strip()
    if v.returncode != 0:
        failures.append("verify failed:\n" + v.stdout + v.stderr)
    report["failures"] = failures
    print(json.dumps(report, indent=2))
    return 1 if failures else 0


LAB = lab_bin()
if __name__ == "__main__":
    sys.exit(main())
