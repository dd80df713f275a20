//! The balancer's admission limit ([`Admission`]: the agent's connection and in-flight
//! caps, a producer's queue limit) under loom:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p pipewright-balance --release --target-dir target/loom --test loom_admission
//! ```
//!
//! explores every interleaving of concurrent admissions and releases. The `racy_*`
//! models are what the balancer used before: a producer's check-then-count
//! (`waiting >= limit`, counted later), which admits two past a limit of one, and the
//! agent's count-then-undo (`fetch_add`, then `fetch_sub` when over), which refuses a
//! caller while the place is free; loom finds the schedule that breaks each, so they
//! exist only under loom, where they must fail. In a normal build the models run once
//! on real threads.

use pipewright_balance::Admission;
use pipewright_runtime::sync::atomic::{AtomicUsize, Ordering};
use pipewright_runtime::sync::{model, thread, Arc};

/// Runs `contenders` threads (and the model's own) that each try once to get a place
/// through `admit`, record themselves as holders while they hold it, and give it back.
/// Checks that the holders never exceed `limit` and returns how many got a place.
fn contend<P: Send + 'static>(
    limit: usize,
    contenders: usize,
    admit: impl Fn() -> Option<P> + Send + Sync + 'static,
) -> usize {
    let admit = Arc::new(admit);
    let holders = Arc::new(AtomicUsize::new(0));
    let attempt = {
        let (admit, holders) = (admit.clone(), holders.clone());
        move || -> usize {
            let Some(place) = admit() else { return 0 };
            let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
            assert!(now <= limit, "{now} holders past a limit of {limit}");
            holders.fetch_sub(1, Ordering::SeqCst);
            drop(place);
            1
        }
    };
    let others: Vec<_> = (0..contenders)
        .map(|_| {
            let attempt = attempt.clone();
            thread::spawn(attempt)
        })
        .collect();
    let mine = attempt();
    mine + others.into_iter().map(|t| t.join().unwrap()).sum::<usize>()
}

#[test]
fn never_more_holders_than_the_limit_and_every_place_comes_back() {
    model(|| {
        let queue = Admission::new(1);
        let q = queue.clone();
        let admitted = contend(1, 2, move || q.try_admit());
        assert!(admitted >= 1, "the first to try always gets the free place");
        assert_eq!(queue.held(), 0, "a place was not given back");
        assert!(queue.try_admit().is_some());
    });
}

#[test]
fn contenders_within_the_limit_are_all_admitted() {
    model(|| {
        let queue = Admission::new(2);
        let q = queue.clone();
        let other = thread::spawn(move || q.try_admit());
        let mine = queue.try_admit();
        let theirs = other.join().unwrap();
        // Two places for two: nobody is refused however the attempts interleave.
        assert!(mine.is_some() && theirs.is_some());
        assert_eq!(queue.held(), 2);
        assert!(queue.try_admit().is_none(), "a third is refused");
        drop((mine, theirs));
        assert_eq!(queue.held(), 0);
    });
}

#[test]
fn a_caller_is_refused_only_while_the_limit_is_really_reached() {
    model(|| {
        let queue = Admission::new(1);
        let held = queue.try_admit().expect("the free place");
        let q = queue.clone();
        let other = thread::spawn(move || q.try_admit());
        drop(held);
        let mine = queue.try_admit();
        let theirs = other.join().unwrap();
        // The place was free at some point after each attempt began: one of the two
        // attempts that overlap its release gets it.
        assert!(
            mine.is_some() || theirs.is_some(),
            "both refused a free place"
        );
    });
}

/// A place in a hand-made counter (the racy models below): given back when dropped.
#[cfg(loom)]
struct Counted(Arc<AtomicUsize>);

#[cfg(loom)]
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The producer's old admission: read the count, compare, count later.
#[cfg(loom)]
#[test]
#[should_panic(expected = "past a limit of 1")]
fn racy_check_then_count_admits_past_the_limit() {
    model(|| {
        let waiting = Arc::new(AtomicUsize::new(0));
        contend(1, 1, move || {
            if waiting.load(Ordering::SeqCst) >= 1 {
                return None;
            }
            waiting.fetch_add(1, Ordering::SeqCst);
            Some(Counted(waiting.clone()))
        });
    });
}

/// The agent's old admission: count first, undo when over the limit.
#[cfg(loom)]
#[test]
#[should_panic(expected = "both refused a free place")]
fn racy_count_then_undo_refuses_a_free_place() {
    fn admit(count: &Arc<AtomicUsize>) -> Option<Counted> {
        if count.fetch_add(1, Ordering::SeqCst) >= 1 {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Counted(count.clone()))
    }
    model(|| {
        let count = Arc::new(AtomicUsize::new(0));
        let held = admit(&count).expect("the free place");
        let c = count.clone();
        let other = thread::spawn(move || admit(&c));
        drop(held);
        let mine = admit(&count);
        let theirs = other.join().unwrap();
        assert!(
            mine.is_some() || theirs.is_some(),
            "both refused a free place"
        );
    });
}
