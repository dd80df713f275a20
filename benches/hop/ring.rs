//! The ring alone: `pipewright::ring::spsc` next to `rtrb`, one producer and one
//! consumer thread.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use crate::harness::{per_unit, run_case, Case, Config};
use crate::{BURST, CAPACITY};

pub fn run(cfg: &Config) {
    if cfg.wants("ring-spsc-burst32") {
        run_case(
            cfg,
            Case {
                name: "ring-spsc-burst32",
                what: "u64 through one SPSC ring of 1024 slots, producer and consumer threads, bursts of 32",
                peer: "rtrb",
                unit: "ns/item",
                better: "lower",
                n: cfg.ring_items,
            },
            ours_ring,
            peer_rtrb,
        );
    }
}

/// Sum of `0..n`, what a ring consumer must see.
fn seed_sum(n: u64) -> u64 {
    (0..n).fold(0u64, u64::wrapping_add)
}

/// How both ring benchmarks wait for the other side: spin briefly, then yield the CPU,
/// so that on a busy two-CPU machine a partner that lost its CPU gets it back quickly
/// instead of being starved by a spinner.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    const SPINS: u32 = 64;

    #[inline]
    fn snooze(&mut self) {
        if self.0 < Self::SPINS {
            self.0 += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }

    #[inline]
    fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Runs `produce` and `consume` on two threads that meet at a barrier; the producer
/// stamps the start, the consumer the end. Returns ns per item.
fn two_threads<P, C>(n: u64, produce: P, consume: C) -> f64
where
    P: FnOnce() + Send + 'static,
    C: FnOnce() -> u64 + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(2));
    let b = barrier.clone();
    let producer = std::thread::spawn(move || {
        b.wait();
        let start = Instant::now();
        produce();
        start
    });
    let consumer = std::thread::spawn(move || {
        barrier.wait();
        let sum = consume();
        (Instant::now(), sum)
    });
    let start = producer.join().expect("producer");
    let (end, sum) = consumer.join().expect("consumer");
    assert_eq!(sum, seed_sum(n), "ring lost or corrupted items");
    per_unit(end.saturating_duration_since(start), n)
}

/// `pipewright::ring::spsc`: `push_burst` / `pop_burst` of up to `BURST` `u64`s through
/// the caller's `VecDeque`s (the API the runtime's workers use).
fn ours_ring(n: u64) -> f64 {
    let (mut tx, mut rx) = pipewright::ring::spsc::<u64>(CAPACITY);
    two_threads(
        n,
        move || {
            let mut wait = Backoff::default();
            let mut buf = VecDeque::with_capacity(BURST);
            let mut next = 0u64;
            while next < n || !buf.is_empty() {
                // Top the burst up the way the rtrb side fills its chunk: from a range.
                let k = (BURST - buf.len()).min((n - next) as usize) as u64;
                buf.extend((next..next + k).map(black_box));
                next += k;
                if tx.push_burst(&mut buf) == 0 {
                    wait.snooze();
                } else {
                    wait.reset();
                }
            }
        },
        move || {
            let mut wait = Backoff::default();
            let mut buf = VecDeque::with_capacity(BURST);
            let (mut sum, mut seen) = (0u64, 0u64);
            while seen < n {
                let got = rx.pop_burst(&mut buf, BURST);
                if got == 0 {
                    wait.snooze();
                    continue;
                }
                wait.reset();
                seen += got as u64;
                for x in buf.drain(..) {
                    sum = sum.wrapping_add(x);
                }
            }
            black_box(sum)
        },
    )
}

/// `rtrb::RingBuffer` through its chunk API: `write_chunk_uninit(k).fill_from_iter(..)`
/// and `read_chunk(k)` consumed by iteration, with `k` up to `BURST` (a partial chunk
/// when fewer slots are free or filled, as `push_burst`/`pop_burst` do).
fn peer_rtrb(n: u64) -> f64 {
    let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(CAPACITY);
    two_threads(
        n,
        move || {
            let mut wait = Backoff::default();
            let mut next = 0u64;
            while next < n {
                let want = (n - next).min(BURST as u64) as usize;
                let chunk = match tx.write_chunk_uninit(want) {
                    Ok(chunk) => chunk,
                    Err(rtrb::chunks::ChunkError::TooFewSlots(0)) => {
                        wait.snooze();
                        continue;
                    }
                    Err(rtrb::chunks::ChunkError::TooFewSlots(k)) => {
                        tx.write_chunk_uninit(k).expect("k slots are free")
                    }
                };
                wait.reset();
                let k = chunk.len() as u64;
                chunk.fill_from_iter((next..next + k).map(black_box));
                next += k;
            }
        },
        move || {
            let mut wait = Backoff::default();
            let (mut sum, mut seen) = (0u64, 0u64);
            while seen < n {
                let chunk = match rx.read_chunk(BURST) {
                    Ok(chunk) => chunk,
                    Err(rtrb::chunks::ChunkError::TooFewSlots(0)) => {
                        wait.snooze();
                        continue;
                    }
                    Err(rtrb::chunks::ChunkError::TooFewSlots(k)) => {
                        rx.read_chunk(k).expect("k slots are filled")
                    }
                };
                wait.reset();
                seen += chunk.len() as u64;
                for x in chunk {
                    sum = sum.wrapping_add(x);
                }
            }
            black_box(sum)
        },
    )
}
