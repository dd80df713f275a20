//! The agent's own cost: its memory per producer and per lease (live heap, counted by
//! a global allocator) and its CPU per lease.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pipewright::balance::{
    AgentConfig, ConsumerId, Indicators, ProducerId, ProducerReport, ServiceTime,
};
use tower::Service;

use crate::contenders::fleet;
use crate::key;

/// Counts live heap bytes (for the agent's memory per producer and per lease).
pub(crate) struct Counting;

pub(crate) static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

// The one unsafe item of this bench: a global allocator implements an unsafe trait.
#[allow(unsafe_code)]
mod counting_alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::Ordering;

    use super::{Counting, LIVE};

    // SAFETY: forwards to the system allocator unchanged; only counts bytes.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
            // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
            // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
            // SAFETY: `ptr` came from `System`; the caller upholds `realloc`'s contract.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOC: Counting = Counting;
}

/// The agent's state in bytes per producer and per lease (live heap, this process).
pub(crate) fn agent_memory(producers: u64, leases: u64) {
    use pipewright::balance::{AgentCore, LeaseRequest, ProducerStatus};
    let now = 1_800_000_000_000u64;
    let before = LIVE.load(Ordering::Relaxed);
    let mut core = AgentCore::new(AgentConfig::default(), key(), now, &[]);
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    for i in 0..producers {
        let status = ProducerStatus {
            id: ProducerId(i),
            addr,
            gossip: addr,
            report: ProducerReport {
                utilisation: 0.5,
                rps: 100.0,
                ..Default::default()
            },
            indicators: Indicators::default(),
            shed_total: 0,
            last_verdict: None,
            leaving: false,
        };
        let _ = core.producer(now, &status);
    }
    let with_producers = LIVE.load(Ordering::Relaxed);
    for i in 0..leases {
        let r = core.lease(
            now + 1,
            &LeaseRequest {
                consumer: ConsumerId(i),
                want: 1,
                ..Default::default()
            },
        );
        assert_eq!(r.granted.len(), 1);
    }
    let with_leases = LIVE.load(Ordering::Relaxed);
    eprintln!(
        "agent memory: {:.0} bytes per producer ({producers} producers), {:.0} bytes per lease ({leases} leases)",
        (with_producers - before) as f64 / producers as f64,
        (with_leases - with_producers) as f64 / leases as f64
    );
    drop(core);
}

pub(crate) async fn agent_cost(n: u64) {
    let f = fleet(
        &[ServiceTime::Fixed(Duration::from_millis(1)); 10],
        8,
        Duration::ZERO,
    )
    .await;
    let svc = f.agent.service();
    let start = Instant::now();
    let tasks: Vec<_> = (0..8u64)
        .map(|w| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..n / 8 {
                    let r = tower::ServiceExt::ready(&mut svc)
                        .await
                        .unwrap()
                        .call(pipewright::balance::LeaseRequest {
                            consumer: ConsumerId(w * 1_000_000 + i),
                            want: 1,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    assert_eq!(r.granted.len(), 1);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let s = f.agent.status();
    eprintln!(
        "agent cost: {:.0} lease requests/s on one agent worker ({} leases out over {} producers)",
        n as f64 / secs,
        s.active_leases,
        s.producers.len()
    );
    let _ = f.agent.run_until(async {}).await;
}
