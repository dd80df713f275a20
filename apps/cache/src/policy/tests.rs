use std::collections::{HashSet, VecDeque};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Access(u64),
    Evict,
    Remove(u64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            6 => (0u64..40).prop_map(Op::Access),
            1 => Just(Op::Evict),
            1 => (0u64..40).prop_map(Op::Remove),
        ],
        0..400,
    )
}

proptest! {
    /// Every policy keeps exactly the resident set the calls imply, evicts only
    /// resident keys, and never holds more than the simulator's capacity.
    #[test]
    fn policies_track_the_resident_set(ops in ops(), cap in 1usize..30) {
        for kind in PolicyKind::ALL {
            let mut p = kind.build(cap);
            let mut resident = HashSet::new();
            for op in &ops {
                match *op {
                    Op::Access(k) => {
                        let hit = resident.contains(&k);
                        prop_assert_eq!(p.lookup(k), hit, "{} lookup of {}", kind, k);
                        if !hit {
                            while p.len() >= cap {
                                let v = p.evict().expect("a full policy has a victim");
                                prop_assert!(resident.remove(&v), "{} evicted {} not resident", kind, v);
                            }
                            p.insert(k);
                            resident.insert(k);
                        }
                    }
                    Op::Evict => {
                        match p.evict() {
                            Some(v) => prop_assert!(resident.remove(&v), "{} evicted {} not resident", kind, v),
                            None => prop_assert!(resident.is_empty()),
                        }
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(p.remove(k), resident.remove(&k));
                    }
                }
                prop_assert_eq!(p.len(), resident.len(), "{}", kind);
                prop_assert!(p.len() <= cap.max(1));
            }
        }
    }

    /// LRU and FIFO evict exactly the key a naive queue model says.
    #[test]
    fn lru_and_fifo_match_a_naive_model(keys in prop::collection::vec(0u64..30, 0..500), cap in 1usize..20) {
        for (kind, touch) in [(PolicyKind::Lru, true), (PolicyKind::Fifo, false)] {
            let mut p = kind.build(cap);
            let mut q: VecDeque<u64> = VecDeque::new();
            for &k in &keys {
                let model_hit = if let Some(pos) = q.iter().position(|&x| x == k) {
                    if touch { q.remove(pos); q.push_front(k); }
                    true
                } else {
                    if q.len() >= cap { q.pop_back(); }
                    q.push_front(k);
                    false
                };
                prop_assert_eq!(simulate_request(&mut *p, cap, k), model_hit);
            }
        }
    }
}

#[test]
fn sieve_keeps_visited_keys_over_new_ones() {
    let mut p = Sieve::new();
    for k in 0..4 {
        simulate_request(&mut p, 4, k);
    }
    assert!(p.lookup(0));
    simulate_request(&mut p, 4, 10);
    // 0 was visited: the hand skipped it and evicted 1.
    assert!(p.lookup(0));
    assert!(!p.lookup(1));
}

#[test]
fn s3fifo_one_hit_wonders_leave_through_the_ghost() {
    let cap = 100;
    let mut p = S3Fifo::new(cap);
    // A hot set accessed repeatedly, then a scan of one-hit wonders.
    for _ in 0..3 {
        for k in 0..50 {
            simulate_request(&mut p, cap, k);
        }
    }
    for k in 1000..3000 {
        simulate_request(&mut p, cap, k);
    }
    let hot_kept = (0..50).filter(|&k| p.lookup(k)).count();
    assert!(
        hot_kept >= 45,
        "S3-FIFO kept {hot_kept} of 50 hot keys through a scan"
    );
    let mut lru = Lru::new();
    for _ in 0..3 {
        for k in 0..50 {
            simulate_request(&mut lru, cap, k);
        }
    }
    for k in 1000..3000 {
        simulate_request(&mut lru, cap, k);
    }
    assert_eq!((0..50).filter(|&k| lru.lookup(k)).count(), 0);
}

#[test]
fn policy_names_parse() {
    for kind in PolicyKind::ALL {
        assert_eq!(kind.name().parse::<PolicyKind>().unwrap(), kind);
    }
    assert_eq!("S3-FIFO".parse::<PolicyKind>().unwrap(), PolicyKind::S3Fifo);
    assert!("arc".parse::<PolicyKind>().is_err());
}
