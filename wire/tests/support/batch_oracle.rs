//! The properties every input to the batch decoder must satisfy, shared by the stable property
//! test (`tests/decode_props.rs`) and the cargo-fuzz target (`fuzz/fuzz_targets/batch_decode.rs`),
//! which both include this file by path.
//!
//! For any bytes: decoding does not panic; the owned and borrowed decoders agree item by item;
//! every frame is a slice of the input with a carryable length whose views do not panic; an
//! error is the last item and sits at the end of the well-formed prefix; the item count is
//! within the iterator's `size_hint`; and re-encoding the decoded frames reproduces that prefix
//! byte for byte (the encoding is canonical).

use bytes::Bytes;
use meshnet_wire::batch::{BatchEncoder, BatchError, decode, decode_ref, is_valid_frame_len};
use meshnet_wire::vnet::{EthernetFrame, VnetHdr};

/// Checks every property on `data`; returns the error that ended it, if any.
pub fn check_batch(data: &[u8]) -> Option<BatchError> {
    let input = Bytes::copy_from_slice(data);
    let span = input.as_ptr_range();
    let owned = decode(input.clone());
    let (lo, hi) = owned.size_hint();
    let mut by_ref = decode_ref(data);
    let mut enc = BatchEncoder::new(data.len());
    let mut items = 0;
    let mut error = None;
    for item in owned {
        items += 1;
        assert!(error.is_none(), "an item after the error {error:?}");
        match (item, by_ref.next().expect("decode_ref ends early")) {
            (Ok(f), Ok(r)) => {
                assert_eq!((f.wire, &f.vnet, &f.data[..]), (r.wire, r.vnet, r.data));
                let p = f.data.as_ptr_range();
                assert!(
                    span.start <= p.start && p.end <= span.end,
                    "not a slice of the input"
                );
                assert!(is_valid_frame_len(f.data.len()));
                if let Ok(h) = VnetHdr::new_checked(&f.vnet[..]) {
                    let _ = h.check_frame(f.data.len());
                    let _ = (h.gso_size(), h.hdr_len(), h.is_gso());
                }
                let eth = EthernetFrame::new_checked(&f.data[..])
                    .expect("every carried frame has an Ethernet header");
                let _ = (
                    eth.dst_addr(),
                    eth.src_addr(),
                    eth.ethertype(),
                    eth.payload(),
                );
                enc.push(f.wire, &f.vnet, &f.data)
                    .expect("a decoded frame re-encodes");
            }
            (Err(e), Err(r)) => {
                assert_eq!(e, r);
                error = Some(e);
            }
            (a, b) => panic!("decode and decode_ref disagree: {a:?} / {b:?}"),
        }
    }
    assert!(by_ref.next().is_none(), "decode_ref yields more");
    assert!(
        lo <= items && hi.is_some_and(|h| items <= h),
        "{items} outside {lo}..={hi:?}"
    );
    let prefix = error.map_or(data.len(), |e| e.offset());
    assert_eq!(
        &enc.finish()[..],
        &data[..prefix],
        "re-encoding is not canonical"
    );
    error
}
