use super::*;

// Trimmed from iperf 3.12 output on this kind of machine.
const TCP: &str = r#"{"start":{},"intervals":[],"end":{
  "sum_sent":{"start":0,"end":1.000044,"seconds":1.000044,"bytes":2549350400,
              "bits_per_second":20393905868.1418,"retransmits":2,"sender":true},
  "sum_received":{"start":0,"end":1.000094,"seconds":1.000094,"bytes":2537553920,
              "bits_per_second":20298523298.80991,"sender":true}}}"#;

const UDP: &str = r#"{"end":{
  "sum":{"seconds":1.000249,"bytes":40702080,"lost_packets":443370,"packets":635970,
         "lost_percent":69.71555262040663},
  "sum_sent":{"seconds":1.000047,"bytes":40702080,"lost_packets":0,"packets":635970,
         "lost_percent":0},
  "sum_received":{"seconds":1.000249,"bytes":12326400,"jitter_ms":0.0043,
         "lost_packets":443370,"packets":635970,"lost_percent":69.71555262040663}}}"#;

#[test]
fn tcp_from_the_receiver() {
    let r = iperf_tcp(TCP).unwrap();
    assert_eq!(r.bytes, 2_537_553_920);
    assert!((r.gbps - 20.2985).abs() < 1e-3, "{}", r.gbps);
    assert_eq!(r.retransmits, Some(2));
}

#[test]
fn udp_counts_received_datagrams() {
    let r = iperf_udp(UDP, 64).unwrap();
    // 12326400 / 64 = 192600 datagrams = packets - lost_packets.
    assert!((r.kpps - 192.552).abs() < 1e-2, "{}", r.kpps);
    assert!((r.loss_pct - 69.7156).abs() < 1e-3);
    assert_eq!(r.sent, 635_970);
}

#[test]
fn iperf_errors_are_errors() {
    let e = iperf_tcp(r#"{"start":{},"error":"unable to connect to server: Connection refused"}"#)
        .unwrap_err();
    assert!(e.to_string().contains("Connection refused"), "{e}");
    assert!(iperf_tcp("iperf3: error").is_err());
    assert!(iperf_udp(r#"{"end":{}}"#, 64).is_err());
}

#[test]
fn ping_lines() {
    let out = "PING 10.10.1.2 (10.10.1.2) 56(84) bytes of data.\n\
        64 bytes from 10.10.1.2: icmp_seq=1 ttl=64 time=0.064 ms\n\
        64 bytes from 10.10.1.2: icmp_seq=2 ttl=64 time=1.50 ms\n\
        From 10.10.1.1 icmp_seq=3 Destination Host Unreachable\n\
        \n--- 10.10.1.2 ping statistics ---\n\
        3 packets transmitted, 2 received, 33% packet loss, time 4ms\n\
        rtt min/avg/max/mdev = 0.064/0.782/1.500/0.718 ms\n";
    let v = ping_rtts_us(out);
    assert_eq!(v.len(), 2);
    assert!((v[0] - 64.0).abs() < 1e-9 && (v[1] - 1500.0).abs() < 1e-9);
}

#[test]
fn proc_stat_kernel_time() {
    let t = proc_stat("cpu  100 5 40 9000 3 2 7 0 0 0\ncpu0 50 2 20 4500 1 1 3 0 0 0\n").unwrap();
    assert_eq!(t.user, 100);
    assert_eq!(t.kernel(), 49);
    let later = CpuTimes { system: 60, ..t };
    assert_eq!(later.kernel_since(&t), 20);
    assert_eq!(t.kernel_since(&later), 0);
    assert!(proc_stat("intr 1 2 3").is_err());
}

#[test]
fn pid_stat_with_a_hostile_name() {
    let s = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 77 33 0 0 20 0 8 0 5 1000 200";
    assert_eq!(pid_stat_times(s).unwrap(), (77, 33));
    assert!(pid_stat_times("1234 (x) S 1").is_err());
}

#[test]
fn status_fields() {
    let s = "Name:\tmeshnetd\nVmPeak:\t  900000 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
    assert_eq!(status_kib(s, "VmHWM"), Some(20480));
    assert_eq!(status_kib(s, "VmRSS"), Some(10240));
    assert_eq!(status_kib(s, "VmSwap"), None);
}
