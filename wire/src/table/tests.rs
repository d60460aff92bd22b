use super::*;

fn key(uid: i64) -> WireKey {
    WireKey::new("lab", uid)
}

fn consistent(t: &WireTable) {
    assert_eq!(t.by_id.len(), t.by_key.len());
    for (id, k, _) in t.iter() {
        assert_eq!(t.id_of(k), Some(id));
        assert_ne!(id.0, 0);
    }
}

#[test]
fn assign_is_idempotent_and_starts_at_one() {
    let mut t = WireTable::new(10);
    let a = t.assign(key(1), Arc::default()).unwrap();
    let b = t.assign(key(2), Arc::default()).unwrap();
    assert_eq!(a, WireId(1));
    assert_eq!(b, WireId(2));
    assert_eq!(t.assign(key(1), Arc::default()).unwrap(), a);
    assert_eq!(t.len(), 2);
    assert_eq!(t.key_of(a), Some(&key(1)));
    assert_eq!(t.id_of(&key(2)), Some(b));
    consistent(&t);
}

#[test]
fn removed_ids_are_not_reused() {
    let mut t = WireTable::new(10);
    let a = t.assign(key(1), Arc::default()).unwrap();
    assert_eq!(t.remove(a).map(|(k, _)| k), Some(key(1)));
    assert_eq!(t.key_of(a), None);
    assert_eq!(t.id_of(&key(1)), None);
    let again = t.assign(key(1), Arc::default()).unwrap();
    assert_ne!(again, a);
    assert_eq!(t.remove_key(&key(1)), Some(again));
    assert!(t.is_empty());
    assert_eq!(t.remove(again).map(|(k, _)| k), None);
    consistent(&t);
}

#[test]
fn assign_skips_ids_in_use_and_never_zero_when_wrapping() {
    let mut t = WireTable::new(10);
    t.insert(WireId(u32::MAX), key(100), Arc::default())
        .unwrap();
    t.insert(WireId(1), key(101), Arc::default()).unwrap();
    t.next = u32::MAX;
    let id = t.assign(key(1), Arc::default()).unwrap();
    assert_eq!(id, WireId(2));
    consistent(&t);
}

#[test]
fn insert_keeps_the_map_a_bijection() {
    let mut t = WireTable::new(10);
    t.insert(WireId(7), key(1), Arc::default()).unwrap();
    t.insert(WireId(7), key(1), Arc::default()).unwrap();
    assert_eq!(
        t.insert(WireId(7), key(2), Arc::default()),
        Err(TableError::IdInUse {
            id: WireId(7),
            existing: key(1)
        })
    );
    assert_eq!(
        t.insert(WireId(8), key(1), Arc::default()),
        Err(TableError::KeyInUse {
            key: key(1),
            existing: WireId(7)
        })
    );
    assert_eq!(
        t.insert(WireId(0), key(3), Arc::default()),
        Err(TableError::ReservedId(WireId(0)))
    );
    // Same uid in another namespace is another link.
    t.insert(WireId(8), WireKey::new("other", 1), Arc::default())
        .unwrap();
    assert_eq!(t.len(), 2);
    consistent(&t);
}

#[test]
fn the_table_is_bounded() {
    let mut t = WireTable::new(2);
    t.assign(key(1), Arc::default()).unwrap();
    t.assign(key(2), Arc::default()).unwrap();
    assert_eq!(
        t.assign(key(3), Arc::default()),
        Err(TableError::Full { max: 2 })
    );
    assert_eq!(
        t.insert(WireId(9), key(3), Arc::default()),
        Err(TableError::Full { max: 2 })
    );
    // An existing key is still answered.
    assert_eq!(t.assign(key(2), Arc::default()), Ok(WireId(2)));
}

#[test]
fn counters_are_shared_handles_that_outlive_the_entry() {
    let mut t = WireTable::new(10);
    let link_counters = Arc::new(WireCounters::default());
    let id = t.assign(key(1), link_counters.clone()).unwrap();
    let hot = t.counters(id).unwrap().clone();
    hot.add_tx(2, 3000);
    hot.add_rx(1, 60);
    hot.count_drop(DropReason::QueueFull);
    hot.add_drops(DropReason::PeerDown, 4);
    t.remove(id);
    // Reconnect: a new stream's table gets the same link counters.
    let mut t2 = WireTable::new(10);
    let id2 = t2.assign(key(1), link_counters.clone()).unwrap();
    t2.counters(id2).unwrap().add_tx(1, 100);

    let s = link_counters.snapshot();
    assert_eq!(
        (s.tx_frames, s.tx_bytes, s.rx_frames, s.rx_bytes),
        (3, 3100, 1, 60)
    );
    assert_eq!(s.drops(DropReason::QueueFull), 1);
    assert_eq!(s.drops(DropReason::PeerDown), 4);
    assert_eq!(s.drops(DropReason::IoError), 0);
    assert_eq!(s.drops_total(), 5);
    assert_eq!(s.drops_by_reason().count(), DropReason::COUNT);
}

#[test]
fn stray_counts_unknown_wires() {
    let t = WireTable::new(1);
    t.stray().count_drop(DropReason::UnknownWire);
    assert_eq!(t.stray().snapshot().drops(DropReason::UnknownWire), 1);
}

#[test]
fn drop_reason_labels_match_the_metrics_contract() {
    let labels: Vec<_> = DropReason::ALL.iter().map(|r| r.as_label()).collect();
    assert_eq!(
        labels,
        [
            "queue_full",
            "peer_down",
            "oversize",
            "unknown_wire",
            "io_error",
            "impairment",
            "stream_lost"
        ]
    );
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert_eq!(r.to_string(), r.as_label());
    }
    assert_eq!(key(5).to_string(), "lab/5");
}

#[test]
fn link_hash_is_fnv1a_and_stable() {
    // Pinned values (computed independently): every node must agree on VNIs, host-end names
    // and shards derived from this hash, across versions.
    assert_eq!(link_hash("ab", 7), 0x0830_32b8_f5e0_7a28);
    assert_eq!(link_hash("default", 1), 0x515e_a67e_7d68_4af2);
    assert_eq!(WireKey::new("default", 1).hash64(), link_hash("default", 1));
    assert_ne!(link_hash("ab", 7), link_hash("ab", 8));
    assert_ne!(link_hash("a", 7), link_hash("b", 7));
}
