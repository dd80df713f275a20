//! Loom models of the lock table's shared state.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p pipewright-storage --release --target-dir /work/target-storage-loom --test loom_locks`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;
use loom::thread;
use pipewright_storage::locks::{LockTable, PrepareError};
use pipewright_storage::{PageId, TxnId};

const AT_ZERO: fn(PageId) -> u64 = |_| 0;

/// Prepare `pages` for `txn`; while holding them, claim each page in `owners` (a claim
/// that finds another owner means two transactions held one page at once), then
/// release. Returns whether the prepare succeeded.
fn hold_and_release(table: &LockTable, owners: &[AtomicU64], txn: u64, pages: &[u64]) -> bool {
    let wants: Vec<_> = pages.iter().map(|&p| (PageId(p), 0)).collect();
    match table.prepare(TxnId(txn), &wants, AT_ZERO) {
        Ok(()) => {
            for &p in pages {
                assert_eq!(table.holder(PageId(p)), Some(TxnId(txn)));
                assert_eq!(
                    owners[p as usize].swap(txn, Ordering::SeqCst),
                    0,
                    "page {p} held twice"
                );
            }
            for &p in pages {
                owners[p as usize].store(0, Ordering::SeqCst);
            }
            assert_eq!(table.release(TxnId(txn)), pages.len());
            true
        }
        Err(PrepareError::Conflict { page, holder }) => {
            assert!(pages.contains(&page.0));
            assert_ne!(holder, TxnId(txn));
            false
        }
        Err(other) => panic!("unexpected {other:?}"),
    }
}

#[test]
fn racing_overlapping_prepares_never_both_hold_a_page() {
    loom::model(|| {
        let table = Arc::new(LockTable::new(8));
        let owners: Arc<Vec<AtomicU64>> = Arc::new((0..3).map(|_| AtomicU64::new(0)).collect());
        let (t, o) = (table.clone(), owners.clone());
        let a = thread::spawn(move || hold_and_release(&t, &o, 1, &[0, 1]));
        let b = hold_and_release(&table, &owners, 2, &[1, 2]);
        let a = a.join().unwrap();
        // At least one got through (the other may have met it mid-flight), nothing is
        // left locked, and every page is free again.
        assert!(a || b);
        assert!(table.is_empty());
        table
            .prepare(
                TxnId(3),
                &[(PageId(0), 0), (PageId(1), 0), (PageId(2), 0)],
                AT_ZERO,
            )
            .unwrap();
    });
}

#[test]
fn release_makes_the_page_available() {
    loom::model(|| {
        let table = Arc::new(LockTable::new(8));
        table.prepare(TxnId(1), &[(PageId(0), 0)], AT_ZERO).unwrap();
        let t = table.clone();
        let releaser = thread::spawn(move || t.release(TxnId(1)));
        let got = table.prepare(TxnId(2), &[(PageId(0), 0)], AT_ZERO);
        assert_eq!(releaser.join().unwrap(), 1);
        match got {
            Ok(()) => assert_eq!(table.holder(PageId(0)), Some(TxnId(2))),
            Err(e) => {
                assert_eq!(
                    e,
                    PrepareError::Conflict {
                        page: PageId(0),
                        holder: TxnId(1)
                    }
                );
                // Released by now: a retry succeeds.
                table.prepare(TxnId(2), &[(PageId(0), 0)], AT_ZERO).unwrap();
            }
        }
        assert_eq!(table.snapshot(), vec![(PageId(0), TxnId(2))]);
    });
}

#[test]
fn no_lock_is_lost_under_contention_for_capacity() {
    loom::model(|| {
        let table = Arc::new(LockTable::new(2));
        let t = table.clone();
        let a =
            thread::spawn(move || t.prepare(TxnId(1), &[(PageId(0), 0), (PageId(1), 0)], AT_ZERO));
        let b = table.prepare(TxnId(2), &[(PageId(2), 0), (PageId(3), 0)], AT_ZERO);
        let a = a.join().unwrap();
        // Exactly one fits; the other is refused whole, holding nothing.
        assert!(a.is_ok() ^ b.is_ok());
        assert!(a == Err(PrepareError::NoSpace) || b == Err(PrepareError::NoSpace));
        assert_eq!(table.len(), 2);
        let winner = if a.is_ok() { TxnId(1) } else { TxnId(2) };
        assert!(table.snapshot().iter().all(|&(_, h)| h == winner));
        assert_eq!(table.release(winner), 2);
        assert!(table.is_empty());
    });
}
