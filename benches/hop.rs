//! The `hop` suite: what it costs to move an item through pipewright, next to a named
//! peer doing the same work, measured in one process run.
//!
//! Run with `cargo bench --bench hop`; `PIPEWRIGHT_BENCH_QUICK=1` runs every case with
//! fewer items and rounds (the whole suite in well under a minute on two cores).
//! For profiling (e.g. under `perf record`): `PIPEWRIGHT_BENCH_CASE=<text>` runs only the
//! cases whose name contains `<text>`, `PIPEWRIGHT_BENCH_ONLY=ours|peer` runs one side
//! only (and prints no RESULT line), `PIPEWRIGHT_BENCH_VERBOSE=1` prints our runtime's
//! per-stage snapshot after each run. By default everything runs.
//!
//! Each case prints a header and per-round lines to stderr, and one line to stdout:
//!
//! ```text
//! RESULT suite=hop case=<case> ours=<n> peer=<peer>:<n> unit=<unit> better=<lower|higher> ratio=<ours/peer>
//! ```
//!
//! # Methodology
//!
//! - The work is identical on both sides: a `u64` seed is expanded into a 64-byte
//!   record (`expand`), which three more stages hash and mutate (`mix`, `fold`) and
//!   finally seal into a `u64` digest (`seal`). Every stage runs FNV-1a over the
//!   record's eight little-endian 64-bit lanes (one xor-multiply per lane, about 10 ns),
//!   so the per-item work is real but small: the suite is about the cost of the hops.
//!   Seeds go through `black_box` on the way in, digests on the way out, and every run
//!   checks the wrapping sum of all digests against a reference, so nothing can be
//!   optimised away or silently lost.
//! - For each case, ours and the peer run alternately (the order flips every round, so
//!   neither side always runs on a cold or a warm machine) after one small warm-up run
//!   each; the reported number is the median per side.
//! - Setup is kept out of the timed region on both sides: our workers are started and
//!   left to go idle before the source is let go, the peer's tokio runtime and tasks are
//!   built and spawned before its source is let go, ring threads meet at a barrier.
//!   The clock starts when the source emits its first item and stops when the sink has
//!   seen the last one, so teardown (joining threads, dropping runtimes) is outside too.
//!   The service case times from the first call to the last response, inside
//!   `block_on`, with the pipeline or the `Buffer` already running.
//! - Our workers are pinned (that is how the runtime runs); tokio's workers, the ring
//!   threads and the direct loop float. On a busy two-CPU machine a pinned worker cannot
//!   dodge another process, so the load average is printed at start and end: compare
//!   runs taken under similar load, and look at the per-round lines for outliers.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Debug;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use pipewright::{
    available_cpus, stage, Outbox, Pin, PipelineBuilder, PipelineService, Plan, Runtime, Source,
    SourceState, Stage, Tagged,
};
use tower::{Service, ServiceExt};

/// One item as it travels between stages.
type Rec = [u8; 64];

/// Slots per ring / channel, on both sides (pipewright's default ring capacity).
const CAPACITY: usize = 1024;
/// Burst size of the burst cases.
const BURST: usize = 32;
/// Requests in flight in the service case.
const IN_FLIGHT: usize = 256;

// ---------------------------------------------------------------------------------------
// The work: four stage functions, shared verbatim by ours and every peer.
// ---------------------------------------------------------------------------------------

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
fn lanes(rec: &Rec) -> [u64; 8] {
    std::array::from_fn(|i| {
        let mut lane = [0u8; 8];
        lane.copy_from_slice(&rec[i * 8..i * 8 + 8]);
        u64::from_le_bytes(lane)
    })
}

#[inline(always)]
fn record(lanes: &[u64; 8]) -> Rec {
    let mut rec = [0u8; 64];
    for (chunk, lane) in rec.chunks_exact_mut(8).zip(lanes) {
        chunk.copy_from_slice(&lane.to_le_bytes());
    }
    rec
}

/// FNV-1a over the record's eight 64-bit lanes.
#[inline(always)]
fn fnv1a(lanes: &[u64; 8], basis: u64) -> u64 {
    lanes
        .iter()
        .fold(basis, |h, &x| (h ^ x).wrapping_mul(FNV_PRIME))
}

#[inline(always)]
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Stage 1: seed -> 64-byte record, stamped with its own checksum.
#[inline]
fn expand(seed: u64) -> Rec {
    let seed = black_box(seed);
    let mut w: [u64; 8] = std::array::from_fn(|i| {
        splitmix64(seed.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    });
    w[0] ^= fnv1a(&w, FNV_OFFSET);
    record(&w)
}

/// Stage 2: hash, then rotate every lane and fold the hash in.
#[inline]
fn mix(rec: Rec) -> Rec {
    let mut w = lanes(&rec);
    let h = fnv1a(&w, FNV_OFFSET ^ 0x5555);
    for (i, lane) in w.iter_mut().enumerate() {
        *lane = lane.rotate_left(i as u32 * 8 + 5) ^ h;
    }
    record(&w)
}

/// Stage 3: hash, then add a rotated copy of the hash to every lane.
#[inline]
fn fold(rec: Rec) -> Rec {
    let mut w = lanes(&rec);
    let h = fnv1a(&w, FNV_OFFSET ^ 0xaaaa);
    for (i, lane) in w.iter_mut().enumerate() {
        *lane = lane.wrapping_add(h.rotate_right(i as u32 * 3));
    }
    record(&w)
}

/// Stage 4: the record's final digest.
#[inline]
fn seal(rec: Rec) -> u64 {
    fnv1a(&lanes(&rec), FNV_OFFSET ^ 0xffff)
}

/// What every sink does with a digest.
#[inline(always)]
fn absorb(acc: &mut u64, digest: u64) {
    *acc = acc.wrapping_add(black_box(digest));
}

/// The wrapping sum of the digests of seeds `0..n` (also the direct-loop peer).
fn direct_loop(n: u64) -> u64 {
    let mut acc = 0u64;
    for seed in 0..n {
        absorb(&mut acc, seal(fold(mix(expand(seed)))));
    }
    acc
}

// ---------------------------------------------------------------------------------------
// Harness.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Peer,
}

struct Config {
    quick: bool,
    only: Option<Side>,
    verbose: bool,
    filter: Option<String>,
    rounds: usize,
    cross_burst_items: u64,
    cross_single_items: u64,
    ring_items: u64,
    fused_items: u64,
    service_requests: u64,
}

impl Config {
    fn from_env() -> Self {
        let flag = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0");
        let quick = flag("PIPEWRIGHT_BENCH_QUICK");
        let filter = std::env::var("PIPEWRIGHT_BENCH_CASE")
            .ok()
            .filter(|f| !f.is_empty());
        let verbose = flag("PIPEWRIGHT_BENCH_VERBOSE");
        let only = match std::env::var("PIPEWRIGHT_BENCH_ONLY").as_deref() {
            Ok("ours") => Some(Side::Ours),
            Ok("peer") => Some(Side::Peer),
            _ => None,
        };
        if quick {
            Config {
                quick,
                only,
                verbose,
                filter,
                rounds: 5,
                cross_burst_items: 1_000_000,
                cross_single_items: 300_000,
                ring_items: 5_000_000,
                fused_items: 2_000_000,
                service_requests: 300_000,
            }
        } else {
            Config {
                quick,
                only,
                verbose,
                filter,
                rounds: 5,
                cross_burst_items: 5_000_000,
                cross_single_items: 2_000_000,
                ring_items: 50_000_000,
                fused_items: 5_000_000,
                service_requests: 2_000_000,
            }
        }
    }

    fn wants(&self, case: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| case.contains(f))
    }
}

/// Reference digest sums (by the direct loop), computed once per item count.
#[derive(Default)]
struct Expected(Mutex<HashMap<u64, u64>>);

impl Expected {
    fn get(&self, n: u64) -> u64 {
        *self
            .0
            .lock()
            .unwrap()
            .entry(n)
            .or_insert_with(|| direct_loop(n))
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 0 {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    }
}

struct Case<'a> {
    name: &'a str,
    what: &'a str,
    peer: &'a str,
    unit: &'a str,
    better: &'a str,
    /// Units (items or requests) per round.
    n: u64,
}

/// Runs both sides alternately for `rounds` rounds after a warm-up, prints the result.
fn run_case(
    cfg: &Config,
    case: Case<'_>,
    mut ours: impl FnMut(u64) -> f64,
    mut peer: impl FnMut(u64) -> f64,
) {
    eprintln!(
        "== hop/{}: {} | peer {} | {} x {} rounds{}",
        case.name,
        case.what,
        case.peer,
        case.n,
        cfg.rounds,
        if cfg.quick { " (quick)" } else { "" }
    );
    // With PIPEWRIGHT_BENCH_ONLY one side is skipped (NaN) and no RESULT line is printed.
    let (run_ours, run_peer) = (cfg.only != Some(Side::Peer), cfg.only != Some(Side::Ours));
    let mut ours = |n| if run_ours { ours(n) } else { f64::NAN };
    let mut peer = |n| if run_peer { peer(n) } else { f64::NAN };
    let warm = (case.n / 10).max(1000);
    ours(warm);
    peer(warm);
    let (mut o, mut p) = (Vec::new(), Vec::new());
    for round in 0..cfg.rounds {
        let (a, b) = if round % 2 == 0 {
            let a = ours(case.n);
            (a, peer(case.n))
        } else {
            let b = peer(case.n);
            (ours(case.n), b)
        };
        eprintln!(
            "   round {}: ours {a:.3} {u}, {} {b:.3} {u}",
            round + 1,
            case.peer,
            u = case.unit
        );
        o.push(a);
        p.push(b);
    }
    if cfg.only.is_some() {
        return;
    }
    let (o, p) = (median(o), median(p));
    println!(
        "RESULT suite=hop case={} ours={o:.3} peer={}:{p:.3} unit={} better={} ratio={:.3}",
        case.name,
        case.peer,
        case.unit,
        case.better,
        o / p
    );
}

fn per_unit(elapsed: Duration, n: u64) -> f64 {
    elapsed.as_nanos() as f64 / n as f64
}

/// The 1, 5 and 15 minute load averages (Linux), or `?`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The second CPU, or the first on a one-CPU machine.
fn second_core() -> usize {
    usize::from(available_cpus() > 1)
}

// ---------------------------------------------------------------------------------------
// Ours: a source and a sink around the four stages.
// ---------------------------------------------------------------------------------------

/// Seeds `0..end`, held back until `go` so that worker start-up is not timed; stamps
/// `started` when it emits the first one.
struct GatedSeeds {
    next: u64,
    end: u64,
    go: Arc<AtomicBool>,
    started: Arc<OnceLock<Instant>>,
    begun: bool,
}

impl Source for GatedSeeds {
    type Out = u64;

    fn pull(&mut self, out: &mut Outbox<'_, u64>, max: usize) -> SourceState {
        if !self.begun {
            if !self.go.load(Ordering::Acquire) {
                return SourceState::Idle(Some(Duration::from_micros(100)));
            }
            self.begun = true;
            let _ = self.started.set(Instant::now());
        }
        let stop = self.end.min(self.next + max as u64);
        for seed in self.next..stop {
            out.push(seed);
        }
        self.next = stop;
        if stop == self.end {
            SourceState::Exhausted
        } else {
            SourceState::Ready
        }
    }
}

/// Sums digests; stamps the time it saw the `expect`-th one.
struct Sink {
    acc: u64,
    count: u64,
    expect: u64,
    done: Arc<OnceLock<(Instant, u64)>>,
}

impl Stage for Sink {
    type In = u64;
    type Out = ();
    type Error = Infallible;

    #[inline]
    fn process(&mut self, digest: u64, _out: &mut Outbox<'_, ()>) -> Result<(), Infallible> {
        absorb(&mut self.acc, digest);
        self.count += 1;
        if self.count == self.expect {
            let _ = self.done.set((Instant::now(), self.acc));
        }
        Ok(())
    }

    fn flush(&mut self, _out: &mut Outbox<'_, ()>) -> Result<(), Infallible> {
        // Only reached early if items were lost; the check in `ours_pipeline` reports it.
        let _ = self.done.set((Instant::now(), self.acc));
        Ok(())
    }
}

/// The runtime's per-stage table, plus how full the bursts were (items per activation
/// that did work).
fn print_snapshot(snapshot: &pipewright::Snapshot) {
    eprint!("{snapshot}");
    let fill: Vec<String> = snapshot
        .stages
        .iter()
        .map(|s| {
            format!(
                "{} {:.1}",
                s.name,
                s.items_in.max(s.items_out) as f64 / s.bursts.max(1) as f64
            )
        })
        .collect();
    eprintln!("items per burst: {}", fill.join(", "));
}

/// Runs seeds -> expand -> mix -> fold -> seal -> sink under `plan`; ns per item.
fn ours_pipeline(cfg: &Config, expected: &Expected, n: u64, plan: Plan) -> f64 {
    let go = Arc::new(AtomicBool::new(false));
    let started = Arc::new(OnceLock::new());
    let done = Arc::new(OnceLock::new());
    let b = PipelineBuilder::new();
    b.source(
        "seeds",
        GatedSeeds {
            next: 0,
            end: n,
            go: go.clone(),
            started: started.clone(),
            begun: false,
        },
    )
    .then("expand", stage::map(expand))
    .then("mix", stage::map(mix))
    .then("fold", stage::map(fold))
    .then("seal", stage::map(seal))
    .sink(
        "sink",
        Sink {
            acc: 0,
            count: 0,
            expect: n,
            done: done.clone(),
        },
    );
    let running =
        Runtime::start(b.build().expect("valid pipeline"), plan).expect("pipeline starts");
    // Let the workers come up and go idle before the clock can start.
    std::thread::sleep(Duration::from_millis(5));
    go.store(true, Ordering::Release);
    let report = running.join().expect("pipeline runs");
    assert!(report.completed, "pipeline did not complete");
    if cfg.verbose {
        print_snapshot(&report.snapshot);
    }
    let start = *started.get().expect("source started");
    let (end, acc) = *done.get().expect("sink finished");
    assert_eq!(acc, expected.get(n), "ours lost or corrupted items");
    per_unit(end - start, n)
}

// ---------------------------------------------------------------------------------------
// Peer: tokio tasks joined by bounded mpsc channels, one message per item.
// ---------------------------------------------------------------------------------------

/// Six tasks (source, the four stages, sink) on a 2-worker multi-thread runtime,
/// joined by five `tokio::sync::mpsc` channels of `CAPACITY` slots; ns per item.
/// Tokio cannot pin its workers, so they float (the OS spreads them over both CPUs).
fn peer_tokio_mpsc(expected: &Expected, n: u64) -> f64 {
    use tokio::sync::{mpsc, oneshot};

    fn stage_task<I: Send + 'static, O: Send + 'static>(
        rt: &tokio::runtime::Runtime,
        mut rx: mpsc::Receiver<I>,
        tx: mpsc::Sender<O>,
        f: fn(I) -> O,
    ) {
        rt.spawn(async move {
            while let Some(item) = rx.recv().await {
                if tx.send(f(item)).await.is_err() {
                    break;
                }
            }
        });
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (seed_tx, seed_rx) = mpsc::channel::<u64>(CAPACITY);
    let (expand_tx, expand_rx) = mpsc::channel::<Rec>(CAPACITY);
    let (mix_tx, mix_rx) = mpsc::channel::<Rec>(CAPACITY);
    let (fold_tx, fold_rx) = mpsc::channel::<Rec>(CAPACITY);
    let (seal_tx, mut seal_rx) = mpsc::channel::<u64>(CAPACITY);
    let source = rt.spawn(async move {
        go_rx.await.expect("go");
        let start = Instant::now();
        for seed in 0..n {
            seed_tx.send(seed).await.expect("pipeline open");
        }
        start
    });
    stage_task(&rt, seed_rx, expand_tx, expand);
    stage_task(&rt, expand_rx, mix_tx, mix);
    stage_task(&rt, mix_rx, fold_tx, fold);
    stage_task(&rt, fold_rx, seal_tx, seal);
    let sink = rt.spawn(async move {
        let (mut acc, mut count, mut end) = (0u64, 0u64, None);
        while let Some(digest) = seal_rx.recv().await {
            absorb(&mut acc, digest);
            count += 1;
            if count == n {
                end = Some(Instant::now());
            }
        }
        (end, acc)
    });
    go_tx.send(()).expect("source waits");
    let (start, (end, acc)) =
        rt.block_on(async { (source.await.expect("source"), sink.await.expect("sink")) });
    drop(rt);
    assert_eq!(acc, expected.get(n), "tokio-mpsc lost or corrupted items");
    per_unit(end.expect("sink saw every item") - start, n)
}

// ---------------------------------------------------------------------------------------
// The ring alone.
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// As a tower::Service.
// ---------------------------------------------------------------------------------------

/// Calls `svc` for seeds `0..n` with up to `IN_FLIGHT` calls outstanding (one service
/// handle, `ready().await` before every call); returns the time taken and the digest sum.
async fn drive<S>(svc: &mut S, n: u64) -> (Duration, u64)
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    let mut in_flight = FuturesUnordered::new();
    let (mut next, mut acc) = (0u64, 0u64);
    let start = Instant::now();
    while next < n || !in_flight.is_empty() {
        while next < n && in_flight.len() < IN_FLIGHT {
            let ready = svc.ready().await.expect("service ready");
            in_flight.push(ready.call(black_box(next)));
            next += 1;
        }
        if let Some(response) = in_flight.next().await {
            absorb(&mut acc, response.expect("request answered"));
        }
    }
    (start.elapsed(), acc)
}

/// The callers' runtime on both sides: `block_on` on the bench thread drives the
/// callers, plus one worker thread (where the peer's `Buffer` worker runs; ours leaves
/// it idle and runs the pipeline on its own pinned worker instead).
fn caller_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("tokio runtime")
}

/// The four stages fused on one worker (pinned to the second CPU), fed `Tagged`
/// requests by a `PipelineService`; ns per request.
fn ours_service(cfg: &Config, expected: &Expected, n: u64) -> f64 {
    let b = PipelineBuilder::new();
    let (input, requests) = b.input::<Tagged<u64, u64>>("requests");
    requests
        .then_tagged("expand", stage::map(expand))
        .then_tagged("mix", stage::map(mix))
        .then_tagged("fold", stage::map(fold))
        .then_tagged("seal", stage::map(seal))
        .respond("reply");
    let plan = Plan::explicit().worker(
        ["expand", "mix", "fold", "seal", "reply"],
        Pin::Core(second_core()),
    );
    let running =
        Runtime::start(b.build().expect("valid pipeline"), plan).expect("pipeline starts");
    let mut svc = PipelineService::new(running.input(&input).expect("input open"));
    let rt = caller_runtime();
    let (elapsed, acc) = rt.block_on(drive(&mut svc, n));
    drop(svc);
    let report = running.drain().expect("pipeline drains");
    if cfg.verbose {
        print_snapshot(&report.snapshot);
    }
    assert_eq!(acc, expected.get(n), "ours answered wrongly");
    per_unit(elapsed, n)
}

/// The same four functions in one `tower::service_fn` behind `tower::buffer::Buffer`
/// (bound `CAPACITY`). The work is done in the closure body, i.e. in `call`, which the
/// `Buffer` worker task runs, so, as with ours, the work happens off the callers'
/// thread (a plain `async` block would run on the caller polling the response future).
fn peer_tower_buffer(expected: &Expected, n: u64) -> f64 {
    let rt = caller_runtime();
    let (elapsed, acc) = rt.block_on(async {
        let inner = tower::service_fn(|seed: u64| {
            std::future::ready(Ok::<u64, Infallible>(seal(fold(mix(expand(seed))))))
        });
        let mut svc = tower::buffer::Buffer::new(inner, CAPACITY);
        drive(&mut svc, n).await
    });
    drop(rt);
    assert_eq!(acc, expected.get(n), "tower-buffer answered wrongly");
    per_unit(elapsed, n)
}

// ---------------------------------------------------------------------------------------

fn main() {
    let cfg = Config::from_env();
    let expected = Expected::default();
    let core1 = second_core();
    // Ours: six nodes, five edges; the two fused on each worker are plain buffers and
    // mix -> fold is the one SPSC ring crossing between the pinned workers. The peer
    // sends every item through all five of its channels, on whichever of tokio's two
    // workers the tasks happen to run.
    let crossing = |burst: usize| {
        Plan::explicit()
            .worker(["seeds", "expand", "mix"], Pin::Core(0))
            .worker(["fold", "seal", "sink"], Pin::Core(core1))
            .ring_capacity(CAPACITY)
            .burst_all(burst)
    };
    let suite_start = Instant::now();
    // Other processes on a two-CPU machine move these numbers a lot: say how busy it was.
    eprintln!("== hop: loadavg at start {}", loadavg());

    if cfg.wants("cross-core-burst32") {
        run_case(
            &cfg,
            Case {
                name: "cross-core-burst32",
                what: "seeds->expand->mix [cpu0] =ring=> fold->seal->sink [cpu1], burst 32",
                peer: "tokio-mpsc",
                unit: "ns/item",
                better: "lower",
                n: cfg.cross_burst_items,
            },
            |n| ours_pipeline(&cfg, &expected, n, crossing(BURST)),
            |n| peer_tokio_mpsc(&expected, n),
        );
    }
    if cfg.wants("cross-core-single") {
        run_case(
            &cfg,
            Case {
                name: "cross-core-single",
                what: "same pipeline and plan, burst 1 for every stage",
                peer: "tokio-mpsc",
                unit: "ns/item",
                better: "lower",
                n: cfg.cross_single_items,
            },
            |n| ours_pipeline(&cfg, &expected, n, crossing(1)),
            |n| peer_tokio_mpsc(&expected, n),
        );
    }
    if cfg.wants("ring-spsc-burst32") {
        run_case(
            &cfg,
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
    if cfg.wants("fused-4") {
        run_case(
            &cfg,
            Case {
                name: "fused-4",
                what: "seeds->expand->mix->fold->seal->sink fused on one worker, burst 32",
                peer: "direct-loop",
                unit: "ns/item",
                better: "lower",
                n: cfg.fused_items,
            },
            |n| ours_pipeline(&cfg, &expected, n, Plan::fused().burst_all(BURST)),
            |n| {
                let start = Instant::now();
                let acc = direct_loop(n);
                let elapsed = start.elapsed();
                assert_eq!(acc, expected.get(n), "direct loop disagrees with itself");
                per_unit(elapsed, n)
            },
        );
    }
    if cfg.wants("as-tower-service") {
        run_case(
            &cfg,
            Case {
                name: "as-tower-service",
                what: "PipelineService over a Tagged pipeline (4 stages fused on one worker), 256 calls in flight",
                peer: "tower-buffer",
                unit: "ns/req",
                better: "lower",
                n: cfg.service_requests,
            },
            |n| ours_service(&cfg, &expected, n),
            |n| peer_tower_buffer(&expected, n),
        );
    }
    eprintln!(
        "== hop: done in {:.1} s",
        suite_start.elapsed().as_secs_f64()
    );
}
