//! A pure pcapng writer (the blocks `meshnet-lab capture` streams): no I/O, no clock.
//!
//! Only what a live capture of one Ethernet interface needs, in one section, little-endian:
//!
//! - **SHB** (Section Header Block, type `0x0A0D0D0A`): byte-order magic `0x1A2B3C4D`, version
//!   1.0, section length −1 (unknown: the section is streamed), `shb_userappl`, `opt_comment`.
//! - **IDB** (Interface Description Block, type 1): link type 1 (Ethernet), the snap length,
//!   `if_name`, `if_description`, `if_tsresol` = 6 (µs, also the default: written so readers need
//!   not assume it).
//! - **EPB** (Enhanced Packet Block, type 6): interface 0, the timestamp in µs since the epoch
//!   (high and low 32 bits), captured and original length, the data padded to 4 bytes,
//!   `epb_flags` with the direction (bits 0–1: 01 inbound, 10 outbound), `opt_comment`.
//! - **ISB** (Interface Statistics Block, type 5): `isb_starttime`, `isb_endtime`, `isb_ifrecv`,
//!   `isb_ifdrop`, `opt_comment`.
//!
//! Every block is `type, total length, body, total length`, with the body padded to 4 bytes; an
//! option is `code (u16), length (u16), value padded to 4`, and a list of options ends with
//! `opt_endofopt` (code 0, length 0). Option values longer than 65535 bytes cannot be encoded
//! and are cut (a comment is text for humans; nothing else here comes near that).
//!
//! The format is the IETF draft "PCAP Now Generic" (draft-ietf-opsawg-pcapng), which tcpdump
//! (libpcap ≥ 1.1) and Wireshark read; libpcap skips the ISB and the comments, Wireshark shows
//! both.

/// Block types.
pub const SHB: u32 = 0x0A0D_0D0A;
pub const IDB: u32 = 1;
pub const ISB: u32 = 5;
pub const EPB: u32 = 6;
/// The SHB's byte-order magic, as written (little-endian).
pub const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u16 = 1;

/// Option codes (per block type; 0 and 1 are common to all).
mod opt {
    pub const END: u16 = 0;
    pub const COMMENT: u16 = 1;
    pub const SHB_USERAPPL: u16 = 4;
    pub const IF_NAME: u16 = 2;
    pub const IF_DESCRIPTION: u16 = 3;
    pub const IF_TSRESOL: u16 = 9;
    pub const EPB_FLAGS: u16 = 2;
    pub const ISB_STARTTIME: u16 = 2;
    pub const ISB_ENDTIME: u16 = 3;
    pub const ISB_IFRECV: u16 = 4;
    pub const ISB_IFDROP: u16 = 5;
}

/// Direction of a frame as seen from the captured interface (`epb_flags` bits 0–1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn flags(self) -> u32 {
        match self {
            Direction::Inbound => 0b01,
            Direction::Outbound => 0b10,
        }
    }
}

/// Statistics of the capture so far, for an ISB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// µs since the epoch when the capture started / of this block.
    pub start_us: u64,
    pub end_us: u64,
    /// Frames the capture saw (written or dropped).
    pub received: u64,
    /// Frames the capture dropped (never frames of the link).
    pub dropped: u64,
}

/// Options of a block being built.
#[derive(Default)]
struct Options(Vec<u8>);

impl Options {
    fn add(&mut self, code: u16, value: &[u8]) -> &mut Self {
        let value = &value[..value.len().min(usize::from(u16::MAX))];
        self.0.extend_from_slice(&code.to_le_bytes());
        // Cut to u16::MAX just above.
        self.0
            .extend_from_slice(&(value.len() as u16).to_le_bytes());
        self.0.extend_from_slice(value);
        pad4(&mut self.0);
        self
    }

    fn text(&mut self, code: u16, s: &str) -> &mut Self {
        if !s.is_empty() {
            self.add(code, s.as_bytes());
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        if !self.0.is_empty() {
            self.add(opt::END, &[]);
        }
        self.0
    }
}

fn pad4(b: &mut Vec<u8>) {
    b.resize(b.len().next_multiple_of(4), 0);
}

/// Appends one block: type, total length, `body` (padded), total length.
fn block(out: &mut Vec<u8>, ty: u32, body: &[u8]) {
    let total = 12 + body.len().next_multiple_of(4);
    // A block longer than 4 GiB cannot be built here: bodies are bounded by one frame.
    let total = total as u32;
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    pad4(out);
    out.extend_from_slice(&total.to_le_bytes());
}

/// A timestamp in µs as the (high, low) 32-bit words of EPB/ISB.
fn ts_words(us: u64) -> [u8; 8] {
    let mut b = [0; 8];
    b[..4].copy_from_slice(&((us >> 32) as u32).to_le_bytes());
    b[4..].copy_from_slice(&(us as u32).to_le_bytes());
    b
}

/// Appends a Section Header Block.
pub fn section_header(out: &mut Vec<u8>, application: &str, comment: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&(-1i64).to_le_bytes());
    let mut o = Options::default();
    o.text(opt::SHB_USERAPPL, application)
        .text(opt::COMMENT, comment);
    body.extend_from_slice(&o.finish());
    block(out, SHB, &body);
}

/// Appends an Interface Description Block for an Ethernet interface (it gets the next interface
/// id of the section: 0 for the first).
pub fn interface(out: &mut Vec<u8>, snaplen: u32, name: &str, description: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&snaplen.to_le_bytes());
    let mut o = Options::default();
    o.text(opt::IF_NAME, name)
        .text(opt::IF_DESCRIPTION, description)
        .add(opt::IF_TSRESOL, &[6]);
    body.extend_from_slice(&o.finish());
    block(out, IDB, &body);
}

/// Appends an Enhanced Packet Block of interface 0: `data` is the captured part of a frame of
/// `orig_len` bytes.
pub fn packet(
    out: &mut Vec<u8>,
    ts_us: u64,
    data: &[u8],
    orig_len: usize,
    dir: Direction,
    comment: &str,
) {
    let mut body = Vec::with_capacity(20 + data.len() + 16);
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&ts_words(ts_us));
    // Lengths are bounded by the snap length and the largest frame (< 4 GiB).
    body.extend_from_slice(&(data.len() as u32).to_le_bytes());
    body.extend_from_slice(&(orig_len.max(data.len()) as u32).to_le_bytes());
    body.extend_from_slice(data);
    pad4(&mut body);
    let mut o = Options::default();
    o.add(opt::EPB_FLAGS, &dir.flags().to_le_bytes())
        .text(opt::COMMENT, comment);
    body.extend_from_slice(&o.finish());
    block(out, EPB, &body);
}

/// Appends an Interface Statistics Block for interface 0, timestamped `stats.end_us`.
pub fn statistics(out: &mut Vec<u8>, stats: &Stats, comment: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&ts_words(stats.end_us));
    let mut o = Options::default();
    o.add(opt::ISB_STARTTIME, &ts_words(stats.start_us))
        .add(opt::ISB_ENDTIME, &ts_words(stats.end_us))
        .add(opt::ISB_IFRECV, &stats.received.to_le_bytes())
        .add(opt::ISB_IFDROP, &stats.dropped.to_le_bytes())
        .text(opt::COMMENT, comment);
    body.extend_from_slice(&o.finish());
    block(out, ISB, &body);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn u32le(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Splits a stream into (type, body) and checks both length fields of every block.
    fn blocks(mut b: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let ty = u32le(b, 0);
            let len = u32le(b, 4) as usize;
            assert_eq!(len % 4, 0, "block length {len} not a multiple of 4");
            assert_eq!(u32le(b, len - 4) as usize, len, "trailing length");
            out.push((ty, b[8..len - 4].to_vec()));
            b = &b[len..];
        }
        out
    }

    /// Options as (code, value) until opt_endofopt.
    fn options(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let code = u16::from_le_bytes([b[0], b[1]]);
            let len = usize::from(u16::from_le_bytes([b[2], b[3]]));
            if code == 0 {
                assert_eq!(len, 0);
                assert_eq!(b.len(), 4, "bytes after opt_endofopt");
                return out;
            }
            out.push((code, b[4..4 + len].to_vec()));
            b = &b[4 + len.next_multiple_of(4)..];
        }
    }

    #[test]
    fn section_header_bytes() {
        let mut out = Vec::new();
        section_header(&mut out, "mn", "");
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &0x0A0D0D0Au32.to_le_bytes()[..], &40u32.to_le_bytes(),
            &[0x4D, 0x3C, 0x2B, 0x1A], &[1, 0, 0, 0], &[0xff; 8],
            &[4, 0, 2, 0, b'm', b'n', 0, 0], &[0, 0, 0, 0],
            &40u32.to_le_bytes(),
        ].concat();
        assert_eq!(out, want);
    }

    #[test]
    fn interface_names_and_resolution() {
        let mut out = Vec::new();
        interface(&mut out, 65535, "r1:eth1", "gRPC wire");
        let b = blocks(&out);
        assert_eq!(b.len(), 1);
        let (ty, body) = &b[0];
        assert_eq!(*ty, IDB);
        assert_eq!(&body[..8], &[1, 0, 0, 0, 0xff, 0xff, 0, 0]);
        assert_eq!(
            options(&body[8..]),
            vec![
                (2, b"r1:eth1".to_vec()),
                (3, b"gRPC wire".to_vec()),
                (9, vec![6]),
            ]
        );
    }

    #[test]
    fn packet_pads_data_and_carries_direction_and_comment() {
        let mut out = Vec::new();
        let ts = 0x0000_0001_0000_0002u64;
        packet(&mut out, ts, &[0xaa; 5], 9, Direction::Outbound, "hi");
        let b = blocks(&out);
        let (ty, body) = &b[0];
        assert_eq!(*ty, EPB);
        assert_eq!(u32le(body, 0), 0, "interface id");
        assert_eq!(u32le(body, 4), 1, "timestamp high");
        assert_eq!(u32le(body, 8), 2, "timestamp low");
        assert_eq!(u32le(body, 12), 5, "captured length");
        assert_eq!(u32le(body, 16), 9, "original length");
        assert_eq!(&body[20..25], &[0xaa; 5]);
        assert_eq!(&body[25..28], &[0, 0, 0], "data padded to 4");
        assert_eq!(
            options(&body[28..]),
            vec![(2, vec![2, 0, 0, 0]), (1, b"hi".to_vec())]
        );
        let mut inb = Vec::new();
        packet(&mut inb, 0, &[1; 4], 4, Direction::Inbound, "");
        let b = blocks(&inb);
        assert_eq!(options(&b[0].1[24..]), vec![(2, vec![1, 0, 0, 0])]);
    }

    #[test]
    fn statistics_carry_drops_and_comment() {
        let mut out = Vec::new();
        let s = Stats {
            start_us: 10,
            end_us: 20,
            received: 7,
            dropped: 3,
        };
        statistics(&mut out, &s, "wire: x");
        let b = blocks(&out);
        let (ty, body) = &b[0];
        assert_eq!(*ty, ISB);
        assert_eq!(u32le(body, 8), 20);
        let o = options(&body[12..]);
        assert_eq!(o[0], (2, ts_words(10).to_vec()));
        assert_eq!(o[1], (3, ts_words(20).to_vec()));
        assert_eq!(o[2], (4, 7u64.to_le_bytes().to_vec()));
        assert_eq!(o[3], (5, 3u64.to_le_bytes().to_vec()));
        assert_eq!(o[4], (1, b"wire: x".to_vec()));
    }

    #[test]
    fn overlong_option_is_cut_not_mis_encoded() {
        let mut out = Vec::new();
        let long = "x".repeat(70_000);
        section_header(&mut out, "", &long);
        let b = blocks(&out);
        let o = options(&b[0].1[16..]);
        assert_eq!(o[0].1.len(), usize::from(u16::MAX));
    }

    /// tcpdump (libpcap) reads what the writer produces: both frames, in order, with their
    /// lengths. Skipped when tcpdump is not installed.
    #[test]
    fn tcpdump_reads_the_stream() {
        if std::process::Command::new("tcpdump")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("tcpdump not installed: skipped");
            return;
        }
        let mut out = Vec::new();
        section_header(&mut out, "meshnet test", "a comment");
        interface(&mut out, 65535, "p:eth1", "test");
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x88, 0xcc]);
        frame.extend_from_slice(&[0; 46]);
        packet(
            &mut out,
            1_000_000,
            &frame,
            60,
            Direction::Outbound,
            "first",
        );
        frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        packet(
            &mut out,
            1_000_001,
            &frame[..30],
            60,
            Direction::Inbound,
            "",
        );
        statistics(&mut out, &Stats::default(), "end");
        let path = std::env::temp_dir().join(format!("pcapng-unit-{}.pcapng", std::process::id()));
        std::fs::write(&path, &out).unwrap();
        let r = std::process::Command::new("tcpdump")
            .args(["-nn", "-e", "-r"])
            .arg(&path)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let text = String::from_utf8_lossy(&r.stdout);
        assert!(
            r.status.success(),
            "tcpdump: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff"),
            "{text}"
        );
        assert!(lines[0].contains("0x88cc"), "{text}");
        assert!(
            lines[1].contains("02:00:00:00:00:01 > 02:00:00:00:00:02"),
            "{text}"
        );
    }
}
