use super::*;

fn drain<T: Clone>(q: &mut FaultQueue<T>, now: Instant) -> Vec<T> {
    std::iter::from_fn(|| q.pop(now)).collect()
}

fn run(faults: Faults, seed: u64, n: u32) -> (Vec<u32>, FaultStats) {
    let t0 = Instant::now();
    let mut q = FaultQueue::new(faults, seed, 10_000);
    for i in 0..n {
        let _ = q.push(t0 + Duration::from_micros(i.into()), i);
    }
    (drain(&mut q, t0 + Duration::from_secs(3600)), q.stats())
}

#[test]
fn no_faults_is_a_fifo() {
    let (got, s) = run(Faults::NONE, 1, 1000);
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    assert_eq!((s.offered, s.delivered, s.lost), (1000, 1000, 0));
    assert!(Faults::NONE.preserves_order());
}

#[test]
fn loss_keeps_order_and_accounts_for_every_item() {
    let f = Faults {
        loss: 0.3,
        ..Faults::NONE
    };
    let (got, s) = run(f, 7, 10_000);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(s.lost + s.delivered, 10_000);
    // 30 % ± a wide margin: the seed is fixed, this only guards the probability's meaning.
    assert!((2_500..3_500).contains(&s.lost), "{s:?}");
}

#[test]
fn duplicates_follow_their_original() {
    let f = Faults {
        duplicate: 0.5,
        ..Faults::NONE
    };
    let (got, s) = run(f, 3, 1000);
    assert_eq!(got.len() as u64, 1000 + s.duplicated);
    let mut dedup = got.clone();
    dedup.dedup();
    assert_eq!(dedup, (0..1000).collect::<Vec<_>>());
    assert!(s.duplicated > 0);
}

#[test]
fn reordering_delivers_everything_out_of_order() {
    let f = Faults {
        reorder: 0.2,
        reorder_delay: Duration::from_micros(50),
        ..Faults::NONE
    };
    assert!(!f.preserves_order());
    let (got, s) = run(f, 11, 1000);
    assert!(s.reordered > 0);
    assert!(got.windows(2).any(|w| w[0] > w[1]));
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
}

#[test]
fn delay_holds_items_until_due() {
    let t0 = Instant::now();
    let d = Duration::from_millis(5);
    let mut q = FaultQueue::new(
        Faults {
            delay: d,
            ..Faults::NONE
        },
        0,
        10,
    );
    assert_eq!(q.push(t0, 'a'), Offer::Queued);
    assert_eq!(q.next_due(), Some(t0 + d));
    assert_eq!(q.pop(t0 + d - Duration::from_nanos(1)), None);
    assert_eq!(q.pop(t0 + d), Some('a'));
    assert_eq!(q.next_due(), None);
}

#[test]
fn bounded_and_hands_back_what_it_refuses() {
    let t0 = Instant::now();
    let mut q = FaultQueue::new(Faults::NONE, 0, 2);
    assert_eq!(q.push(t0, 1), Offer::Queued);
    assert_eq!(q.push(t0, 2), Offer::Queued);
    assert_eq!(q.push(t0, 3), Offer::Full(3));
    assert_eq!(q.len(), 2);
    assert_eq!(q.stats().refused, 1);
    let mut lossy = FaultQueue::new(
        Faults {
            loss: 1.0,
            ..Faults::NONE
        },
        0,
        2,
    );
    assert_eq!(lossy.push(t0, 9), Offer::Lost(9));
    assert!(lossy.is_empty());
}

#[test]
fn same_seed_same_fate_and_bad_probabilities_do_not_panic() {
    let f = Faults {
        loss: 0.1,
        duplicate: 0.1,
        reorder: 0.1,
        reorder_delay: Duration::from_micros(10),
        delay: Duration::from_micros(1),
        jitter: Duration::from_micros(3),
    };
    assert_eq!(run(f, 42, 2000), run(f, 42, 2000));
    assert_ne!(run(f, 42, 2000).0, run(f, 43, 2000).0);
    let weird = Faults {
        loss: f64::NAN,
        duplicate: -1.0,
        reorder: 7.0,
        reorder_delay: Duration::MAX,
        jitter: Duration::MAX,
        ..Faults::NONE
    };
    let (got, _) = run(weird, 1, 10);
    assert!(got.len() <= 10);
}
