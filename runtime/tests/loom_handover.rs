//! Loom model of live re-planning: a stage handed from worker A to worker B while a
//! producer pushes into its input ring. B must always get the item (no lost wake-up),
//! exactly once.
#![cfg(loom)]

use std::collections::VecDeque;

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use pipewright_runtime::ring;
use pipewright_runtime::signal::{Owner, Signal};

#[test]
fn handover_loses_no_wake_up() {
    loom::model(|| {
        let workers = Arc::new(vec![Arc::new(Signal::new()), Arc::new(Signal::new())]);
        let owner = Arc::new(Owner::new(0, workers.clone()));
        let (mut tx, rx) = ring::spsc::<u32>(2);
        // The stage (its input end) travels from A to B through this slot.
        let stage = Arc::new(loom::sync::Mutex::new(Some(rx)));
        let handed = Arc::new(AtomicBool::new(false));

        let producer = {
            let owner = owner.clone();
            thread::spawn(move || {
                tx.push(7).unwrap();
                owner.notify();
            })
        };
        let old_owner = {
            let (owner, handed, workers) = (owner.clone(), handed.clone(), workers.clone());
            thread::spawn(move || {
                // Worker A detaches the stage at a burst boundary and hands it over.
                owner.hand_over(1);
                handed.store(true, Ordering::Release);
                workers[1].notify();
            })
        };

        // Worker B: wait for the stage, then run it until the item arrives.
        while !handed.load(Ordering::Acquire) {
            loom::future::block_on(workers[1].park());
        }
        let mut rx = stage.lock().unwrap().take().unwrap();
        let mut got = VecDeque::new();
        while rx.pop_burst(&mut got, 4) == 0 {
            loom::future::block_on(workers[1].park());
        }
        assert_eq!(got, [7]);
        producer.join().unwrap();
        old_owner.join().unwrap();
        assert_eq!(rx.pop_burst(&mut got, 4), 0, "delivered once");
    });
}
