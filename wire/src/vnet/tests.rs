use super::*;

/// A TSO4 header as a pod with offloads on hands it over: NEEDS_CSUM, csum at 34+16
/// (Ethernet 14 + IPv4 20, TCP checksum at offset 16), MSS 1448, headers 66 bytes.
const TSO4: VnetBytes = [
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    66,
    0,
    0xa8,
    0x05,
    34,
    0,
    16,
    0,
];

#[test]
fn vnet_fields_are_little_endian_at_kernel_offsets() {
    let h = VnetHdr::new_checked(&TSO4[..]).unwrap();
    assert_eq!(h.flags(), 1);
    assert!(h.needs_csum());
    assert_eq!(h.gso_type(), VIRTIO_NET_HDR_GSO_TCPV4);
    assert!(h.is_gso());
    assert_eq!(h.hdr_len(), 66);
    assert_eq!(h.gso_size(), 1448);
    assert_eq!(h.csum_start(), 34);
    assert_eq!(h.csum_offset(), 16);
    assert_eq!(h.to_bytes(), TSO4);
}

#[test]
fn vnet_setters_round_trip() {
    let mut h = VnetHdr::new_unchecked(VNET_HDR_NONE);
    h.set_flags(VIRTIO_NET_HDR_F_NEEDS_CSUM);
    h.set_gso_type(VIRTIO_NET_HDR_GSO_TCPV4);
    h.set_hdr_len(66);
    h.set_gso_size(1448);
    h.set_csum_start(34);
    h.set_csum_offset(16);
    assert_eq!(h.into_inner(), TSO4);
}

#[test]
fn vnet_new_checked_refuses_short_buffers_and_accepts_a_trailing_frame() {
    for len in 0..VNET_HDR_LEN {
        assert_eq!(
            VnetHdr::new_checked(&[0u8; 16][..len]),
            Err(ViewError::Truncated { len, need: 10 })
        );
    }
    let with_frame = [0u8; 64];
    assert!(VnetHdr::new_checked(&with_frame[..]).is_ok());
}

#[test]
fn vnet_ecn_bit_alone_is_not_gso() {
    let mut h = VnetHdr::new_unchecked(VNET_HDR_NONE);
    h.set_gso_type(VIRTIO_NET_HDR_GSO_ECN);
    assert!(!h.is_gso());
    h.set_gso_type(VIRTIO_NET_HDR_GSO_ECN | VIRTIO_NET_HDR_GSO_TCPV6);
    assert!(h.is_gso());
}

#[test]
fn check_frame_follows_the_kernel_rules() {
    let h = VnetHdr::new_unchecked(TSO4);
    assert_eq!(h.check_frame(66), Ok(()));
    // The checksum field ends at 34 + 16 + 2 = 52.
    assert_eq!(
        VnetHdr::new_unchecked({
            let mut b = TSO4;
            b[2] = 0;
            b
        })
        .check_frame(51),
        Err(ViewError::CsumOutOfFrame {
            csum_start: 34,
            csum_offset: 16,
            frame_len: 51
        })
    );
    assert_eq!(
        h.check_frame(65),
        Err(ViewError::HdrLenOutOfFrame {
            hdr_len: 66,
            frame_len: 65
        })
    );

    let mut zero_mss = VnetHdr::new_unchecked(TSO4);
    zero_mss.set_gso_size(0);
    assert_eq!(zero_mss.check_frame(1000), Err(ViewError::ZeroGsoSize));

    let mut unknown = VnetHdr::new_unchecked(TSO4);
    unknown.set_gso_type(2 | VIRTIO_NET_HDR_GSO_ECN);
    assert_eq!(
        unknown.check_frame(1000),
        Err(ViewError::UnknownGsoType(0x82))
    );

    for ok in [
        VIRTIO_NET_HDR_GSO_UDP,
        VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN,
        VIRTIO_NET_HDR_GSO_UDP_L4,
    ] {
        let mut h = VnetHdr::new_unchecked(TSO4);
        h.set_gso_type(ok);
        assert_eq!(h.check_frame(1000), Ok(()), "gso_type {ok:#x}");
    }

    // No offload at all is valid for any frame length.
    assert_eq!(VnetHdr::new_unchecked(VNET_HDR_NONE).check_frame(0), Ok(()));
}

#[test]
fn ethernet_view_reads_and_writes_named_fields() {
    let mut buf = [0u8; 60];
    let mut f = EthernetFrame::new_checked(&mut buf[..]).unwrap();
    f.set_dst_addr(MacAddr::BROADCAST);
    f.set_src_addr(MacAddr([0x02, 0, 0, 0, 0, 1]));
    f.set_ethertype(ETHERTYPE_IPV6);
    f.payload_mut()[0] = 0x60;
    assert_eq!(
        &buf[..14],
        b"\xff\xff\xff\xff\xff\xff\x02\x00\x00\x00\x00\x01\x86\xdd"
    );

    let f = EthernetFrame::new_checked(&buf[..]).unwrap();
    assert!(f.dst_addr().is_broadcast());
    assert!(f.dst_addr().is_multicast());
    assert!(!f.src_addr().is_multicast());
    assert_eq!(f.src_addr().to_string(), "02:00:00:00:00:01");
    assert_eq!(f.ethertype(), ETHERTYPE_IPV6);
    assert_eq!(f.payload().len(), 46);
    assert_eq!(f.payload()[0], 0x60);
}

#[test]
fn ethernet_new_checked_refuses_runts() {
    assert_eq!(
        EthernetFrame::new_checked(&[0u8; 13][..]),
        Err(ViewError::Truncated { len: 13, need: 14 })
    );
    let header_only = EthernetFrame::new_checked(&[0u8; 14][..]).unwrap();
    assert!(header_only.payload().is_empty());
}
