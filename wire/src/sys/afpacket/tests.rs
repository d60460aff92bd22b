use super::*;
use crate::vnet::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};

const PAGE: usize = 4096;

#[test]
fn default_geometry_is_valid() {
    let req = RingGeometry::DEFAULT.to_req3(PAGE).unwrap();
    assert_eq!(req.tp_block_size, 256 << 10);
    assert_eq!(req.tp_block_nr, 16);
    assert_eq!(req.tp_frame_size, 2048);
    assert_eq!(req.tp_frame_nr, 16 * 128);
    assert_eq!(req.tp_retire_blk_tov, 1);
    assert_eq!(RingGeometry::DEFAULT.ring_len(), 4 << 20);
}

#[test]
fn geometry_rules() {
    let g = RingGeometry::DEFAULT;
    let bad = |g: RingGeometry| g.to_req3(PAGE).unwrap_err();
    assert!(matches!(
        bad(RingGeometry {
            block_size: 3 << 16,
            ..g
        }),
        RingError::BlockSize { .. }
    ));
    assert!(matches!(
        bad(RingGeometry {
            block_size: 64 << 10,
            ..g
        }),
        RingError::BlockTooSmall { .. }
    ));
    assert_eq!(
        bad(RingGeometry {
            block_count: 1,
            ..g
        }),
        RingError::BlockCount(1)
    );
    assert!(matches!(
        bad(RingGeometry {
            block_size: 1 << 30,
            block_count: 2,
            ..g
        }),
        RingError::TooLarge { .. }
    ));
    for fs in [0, 64, 2047, 1 << 20] {
        assert_eq!(
            bad(RingGeometry {
                frame_size: fs,
                ..g
            }),
            RingError::FrameSize(fs)
        );
    }
    assert_eq!(
        bad(RingGeometry {
            retire_blk_tov_ms: 0,
            ..g
        }),
        RingError::RetireTimeout
    );
    // The smallest block that holds a largest frame is accepted.
    let small = RingGeometry {
        block_size: 128 << 10,
        block_count: 2,
        frame_size: 128,
        retire_blk_tov_ms: 4,
    };
    assert_eq!(small.to_req3(PAGE).unwrap().tp_frame_nr, 2 * 1024);
    // 64 KiB pages: 128 KiB is still a multiple.
    assert!(small.to_req3(64 << 10).is_ok());
    assert!(small.to_req3(256 << 10).is_err());
}

/// Writes a block descriptor and packets at the kernel's offsets (`linux/if_packet.h`),
/// independently of the `layout` constants under test.
struct BlockBuilder {
    block: Vec<u8>,
    at: usize,
    prev: Option<usize>,
    n: u32,
}

impl BlockBuilder {
    fn new(size: usize) -> Self {
        let mut block = vec![0u8; size];
        block[8..12].copy_from_slice(&libc::TP_STATUS_USER.to_ne_bytes());
        block[16..20].copy_from_slice(&48u32.to_ne_bytes());
        Self {
            block,
            at: 48,
            prev: None,
            n: 0,
        }
    }

    /// Appends a packet as `tpacket_rcv` lays it out (mac offset 92 for Ethernet).
    fn packet(
        &mut self,
        vnet: VnetBytes,
        frame: &[u8],
        wire_len: usize,
        vlan: Option<(u16, u16)>,
        pkttype: u8,
    ) {
        let at = self.at;
        let mac = 92usize;
        let b = &mut self.block[at..];
        b[12..16].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        b[16..20].copy_from_slice(&(wire_len as u32).to_ne_bytes());
        let mut status = libc::TP_STATUS_USER;
        if let Some((tpid, tci)) = vlan {
            status |= libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID;
            b[32..36].copy_from_slice(&u32::from(tci).to_ne_bytes());
            b[36..38].copy_from_slice(&tpid.to_ne_bytes());
        }
        b[20..24].copy_from_slice(&status.to_ne_bytes());
        b[24..26].copy_from_slice(&(mac as u16).to_ne_bytes());
        b[58] = pkttype;
        b[mac - 10..mac].copy_from_slice(&vnet);
        b[mac..mac + frame.len()].copy_from_slice(frame);
        if let Some(p) = self.prev {
            let off = (at - p) as u32;
            self.block[p..p + 4].copy_from_slice(&off.to_ne_bytes());
        }
        self.prev = Some(at);
        self.at = (at + mac + frame.len()).next_multiple_of(16);
        self.n += 1;
        self.block[12..16].copy_from_slice(&self.n.to_ne_bytes());
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

fn walk(block: &[u8]) -> Vec<RingPacket> {
    let (n, mut at) = parse_block(block).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let p = parse_packet(block, at).unwrap();
        at += p.next_offset;
        out.push(p);
    }
    out
}

#[test]
fn walks_a_block() {
    let mut b = BlockBuilder::new(8192);
    let f1 = frame(60, 1);
    let f2 = frame(1514, 2);
    let mut v2 = VnetHdr::new_unchecked(VnetBytes::default());
    v2.set_flags(VIRTIO_NET_HDR_F_NEEDS_CSUM);
    v2.set_csum_start(34);
    v2.set_csum_offset(16);
    b.packet([0; 10], &f1, 60, None, libc::PACKET_HOST);
    b.packet(v2.into_inner(), &f2, 1514, None, libc::PACKET_MULTICAST);
    let pkts = walk(&b.block);
    assert_eq!(pkts.len(), 2);
    assert_eq!(&b.block[pkts[0].frame_at..][..60], &f1[..]);
    assert_eq!(pkts[0].frame_at - pkts[0].vnet_at, 10);
    assert_eq!(pkts[1].snaplen, 1514);
    assert_eq!(pkts[1].pkttype, libc::PACKET_MULTICAST);
    assert_eq!(
        &b.block[pkts[1].vnet_at..pkts[1].frame_at],
        &v2.into_inner()
    );
    assert_eq!(pkts[1].next_offset, 0, "last packet");

    let mut buf = BytesMut::new();
    let p = pkts[1];
    let n = append_frame(
        &mut buf,
        &b.block[p.vnet_at..p.frame_at],
        &b.block[p.frame_at..p.frame_at + p.snaplen],
        p.vlan,
    );
    assert_eq!(n, 1514);
    assert_eq!(&buf[..10], &v2.into_inner());
    assert_eq!(&buf[10..], &f2[..]);
}

#[test]
fn empty_block() {
    let b = BlockBuilder::new(4096);
    let mut block = b.block;
    block[12..16].copy_from_slice(&0u32.to_ne_bytes());
    assert_eq!(parse_block(&block).unwrap().0, 0);
}

#[test]
fn rejects_packets_outside_the_block() {
    let mut b = BlockBuilder::new(4096);
    b.packet([0; 10], &frame(100, 3), 100, None, 0);
    let mut block = b.block.clone();
    // snaplen past the end of the block
    block[48 + 12..48 + 16].copy_from_slice(&5000u32.to_ne_bytes());
    assert_eq!(parse_packet(&block, 48), Err(Malformed));
    // tp_mac inside the header
    let mut block = b.block.clone();
    block[48 + 24..48 + 26].copy_from_slice(&20u16.to_ne_bytes());
    assert_eq!(parse_packet(&block, 48), Err(Malformed));
    // a packet header past the end
    assert_eq!(parse_packet(&b.block, 4090), Err(Malformed));
    assert_eq!(parse_packet(&b.block, usize::MAX - 10), Err(Malformed));
    // first packet offset inside the descriptor or outside the block
    let mut block = b.block.clone();
    block[16..20].copy_from_slice(&8u32.to_ne_bytes());
    assert_eq!(parse_block(&block), Err(Malformed));
    block[16..20].copy_from_slice(&4096u32.to_ne_bytes());
    assert_eq!(parse_block(&block), Err(Malformed));
    assert_eq!(parse_block(&[0u8; 20]), Err(Malformed));
}

#[test]
fn truncated_and_outgoing_are_visible() {
    let mut b = BlockBuilder::new(4096);
    b.packet([0; 10], &frame(200, 4), 9000, None, libc::PACKET_OUTGOING);
    let p = walk(&b.block)[0];
    assert!(p.snaplen < p.len);
    assert_eq!(p.pkttype, libc::PACKET_OUTGOING);
}

#[test]
fn restores_an_offloaded_vlan_tag() {
    // A TCP/IPv4 GSO frame as the kernel reports it with the tag taken out of band.
    let f = frame(2000, 5);
    let mut v = VnetHdr::new_unchecked(VnetBytes::default());
    v.set_flags(VIRTIO_NET_HDR_F_NEEDS_CSUM);
    v.set_gso_type(VIRTIO_NET_HDR_GSO_TCPV4);
    v.set_gso_size(1448);
    v.set_hdr_len(66);
    v.set_csum_start(34);
    v.set_csum_offset(16);
    let mut b = BlockBuilder::new(8192);
    b.packet(v.into_inner(), &f, 2000, Some((0x88a8, 0x2064)), 0);
    let p = walk(&b.block)[0];
    assert_eq!(p.vlan, Some((0x88a8, 0x2064)));

    let mut buf = BytesMut::from(&b"prefix"[..]);
    let n = append_frame(
        &mut buf,
        &b.block[p.vnet_at..p.frame_at],
        &b.block[p.frame_at..p.frame_at + p.snaplen],
        p.vlan,
    );
    assert_eq!(n, 2004);
    assert_eq!(&buf[..6], b"prefix", "bytes already there are untouched");
    let out = &buf[6..];
    let hdr = VnetHdr::new_checked(&out[..10]).unwrap();
    assert_eq!(hdr.csum_start(), 38);
    assert_eq!(hdr.csum_offset(), 16);
    assert_eq!(hdr.hdr_len(), 70);
    assert_eq!(hdr.gso_size(), 1448);
    let fr = &out[10..];
    assert_eq!(&fr[..12], &f[..12]);
    assert_eq!(&fr[12..16], &[0x88, 0xa8, 0x20, 0x64]);
    assert_eq!(&fr[16..], &f[12..]);
    assert!(hdr.check_frame(fr.len()).is_ok());
}

#[test]
fn tag_without_tpid_is_8021q() {
    let mut b = BlockBuilder::new(4096);
    b.packet([0; 10], &frame(64, 6), 64, Some((0, 7)), 0);
    let mut block = b.block;
    // Only TP_STATUS_VLAN_VALID, as older kernels report.
    block[48 + 20..48 + 24]
        .copy_from_slice(&(libc::TP_STATUS_USER | libc::TP_STATUS_VLAN_VALID).to_ne_bytes());
    assert_eq!(parse_packet(&block, 48).unwrap().vlan, Some((0x8100, 7)));
}

#[test]
fn shifting_leaves_plain_headers_alone() {
    let mut h = VnetHdr::new_unchecked(VnetBytes::default());
    shift_vnet_offsets(&mut h, 4);
    assert_eq!(h.into_inner(), [0; 10]);
    // csum_start counts only with NEEDS_CSUM.
    let mut h = VnetHdr::new_unchecked(VnetBytes::default());
    h.set_csum_start(34);
    shift_vnet_offsets(&mut h, 4);
    assert_eq!(h.csum_start(), 34);
}

/// A control buffer as the kernel writes it for `PACKET_AUXDATA` (cmsghdr at the kernel's
/// offsets on 64-bit Linux: len 0..8, level 8..12, type 12..16, data from 16).
fn auxdata_cmsg(status: u32, tci: u16, tpid: u16) -> Vec<u8> {
    let mut c = vec![0u8; 40];
    c[0..8].copy_from_slice(&36u64.to_ne_bytes());
    c[8..12].copy_from_slice(&libc::SOL_PACKET.to_ne_bytes());
    c[12..16].copy_from_slice(&libc::PACKET_AUXDATA.to_ne_bytes());
    let d = &mut c[16..];
    d[0..4].copy_from_slice(&status.to_ne_bytes());
    d[16..18].copy_from_slice(&tci.to_ne_bytes());
    d[18..20].copy_from_slice(&tpid.to_ne_bytes());
    c
}

#[cfg(target_pointer_width = "64")]
#[test]
fn auxdata_vlan_tag() {
    let vlan = libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID;
    assert_eq!(
        parse_auxdata(&auxdata_cmsg(vlan, 0x2064, 0x88a8)),
        Some((0x88a8, 0x2064))
    );
    assert_eq!(
        parse_auxdata(&auxdata_cmsg(libc::TP_STATUS_VLAN_VALID, 5, 0)),
        Some((0x8100, 5))
    );
    assert_eq!(parse_auxdata(&auxdata_cmsg(0, 5, 0x8100)), None, "no tag");
    assert_eq!(parse_auxdata(&[]), None);
    // A length past the buffer is not trusted.
    let mut c = auxdata_cmsg(vlan, 1, 0x8100);
    c[0..8].copy_from_slice(&400u64.to_ne_bytes());
    assert_eq!(parse_auxdata(&c), None);
    // Another control message first is skipped.
    let mut two = vec![0u8; 24];
    two[0..8].copy_from_slice(&20u64.to_ne_bytes());
    two[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
    two.extend_from_slice(&auxdata_cmsg(vlan, 7, 0x8100));
    assert_eq!(parse_auxdata(&two), Some((0x8100, 7)));
}

#[test]
fn tag_in_place_matches_append() {
    let f = frame(300, 9);
    let mut v = VnetHdr::new_unchecked(VnetBytes::default());
    v.set_flags(VIRTIO_NET_HDR_F_NEEDS_CSUM);
    v.set_csum_start(34);
    v.set_csum_offset(6);
    let tag = (0x8100, 0x0064);

    let mut appended = BytesMut::from(&b"xy"[..]);
    let n1 = append_frame(&mut appended, &v.into_inner(), &f, Some(tag));

    let mut in_place = BytesMut::from(&b"xy"[..]);
    in_place.extend_from_slice(&v.into_inner());
    in_place.extend_from_slice(&f);
    let n2 = insert_tag_in_place(&mut in_place, 2, tag);

    assert_eq!((n1, n2), (304, 304));
    assert_eq!(appended, in_place);
    assert_eq!(
        VnetHdr::new_checked(&in_place[2..]).unwrap().csum_start(),
        38
    );
}
