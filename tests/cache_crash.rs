//! kill -9 of the gateway process at each crash point (fill, evict, flush, metadata
//! commit) and at a random moment, then restart: no stale or torn block is served, no
//! acknowledged write is lost, and dirty data still reaches the backend.
// The tests run the `pipewright` binary, which needs the feature `cli`.
#![cfg(all(feature = "cache", feature = "cli"))]

mod cache_common;

use cache_common::{Client, Gateway};

const BS: usize = 4096;
const BLOCKS: u64 = 2048; // 8 MiB

fn block(b: u64, version: u64) -> Vec<u8> {
    let mut x = (b + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ version.wrapping_mul(0xff51_afd7_ed55_8ccd)
        | 1;
    let mut out = Vec::with_capacity(BS);
    out.extend_from_slice(&b.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    while out.len() < BS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

struct Model {
    acked: Vec<u64>,
    /// The write in flight when the gateway died: (block, version).
    pending: Option<(u64, u64)>,
    next_version: u64,
}

impl Model {
    fn check(&self, b: u64, data: &[u8], what: &str) {
        let acked = self.acked[b as usize];
        if data == block(b, acked).as_slice() {
            return;
        }
        if let Some((pb, pv)) = self.pending {
            if pb == b && data == block(b, pv).as_slice() {
                return;
            }
        }
        let version = u64::from_le_bytes(data[8..16].try_into().unwrap());
        panic!(
            "{what}: block {b} holds version {version} (bytes {}), last acknowledged {acked}",
            if data == block(b, version).as_slice() {
                "intact"
            } else {
                "torn or foreign"
            }
        );
    }
}

/// Runs random reads and writes until the connection fails (or `max` ops); returns ops.
fn workload(addr: &str, model: &mut Model, seed: u64, max: u64) -> u64 {
    let mut rng = fastrand_lite(seed);
    let mut c = match Client::connect(addr, "disk") {
        Ok(c) => c,
        Err(_) => return 0,
    };
    for op in 0..max {
        // Mostly a hot set of 96 blocks (dirty chunks), some anywhere (fills, evictions).
        let b = if rng() % 4 == 0 {
            rng() % BLOCKS
        } else {
            rng() % 96 * 21 % BLOCKS
        };
        if rng() % 2 == 0 {
            let v = model.next_version;
            model.next_version += 1;
            model.pending = Some((b, v));
            if c.write(b * BS as u64, &block(b, v)).is_err() {
                return op;
            }
            model.acked[b as usize] = v;
            model.pending = None;
        } else {
            match c.read(b * BS as u64, BS as u32) {
                Ok(d) => model.check(b, &d, "live read"),
                Err(_) => return op,
            }
        }
    }
    max
}

fn fastrand_lite(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn verify_all(addr: &str, model: &Model, what: &str) -> u64 {
    let mut c = Client::connect(addr, "disk").unwrap();
    for b in 0..BLOCKS {
        let d = c.read(b * BS as u64, BS as u32).unwrap();
        model.check(b, &d, what);
    }
    BLOCKS
}

#[test]
fn kill_9_at_each_crash_point_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("volumes")).unwrap();
    let image: Vec<u8> = (0..BLOCKS).flat_map(|b| block(b, 0)).collect();
    std::fs::write(dir.path().join("volumes/disk"), image).unwrap();
    let args = ["--chunk-size", "256K", "--flush-deadline-ms", "100"];
    let mut model = Model {
        acked: vec![0; BLOCKS as usize],
        pending: None,
        next_version: 1,
    };
    let (mut ops, mut kills, mut checks) = (0u64, 0u64, 0u64);
    let points = [
        ("fill", 30),
        ("evict", 8),
        ("flush", 12),
        ("meta-commit", 300),
        ("fill", 60),
        ("flush", 2),
    ];
    for (round, (point, after)) in points.iter().enumerate() {
        let env = [
            ("PIPEWRIGHT_CACHE_CRASH_AT", point.to_string()),
            ("PIPEWRIGHT_CACHE_CRASH_AFTER", after.to_string()),
        ];
        let gw = Gateway::start(dir.path(), "2M", &args, &env);
        let addr = gw.addr.clone();
        let mut n = 0;
        // Keep the workload going (with pauses for the flusher) until the point is hit.
        for attempt in 0..40 {
            n += workload(&addr, &mut model, 1 + round as u64 * 1000 + attempt, 400);
            if std::net::TcpStream::connect(&addr).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        assert!(
            gw.wait_crash(),
            "round {round}: the gateway did not die at {point}"
        );
        ops += n;
        kills += 1;
        let gw = Gateway::start(dir.path(), "2M", &args, &[]);
        checks += verify_all(&gw.addr, &model, &format!("after a crash at {point}"));
        // The in-flight write resolved one way or the other: learn which.
        if let Some((b, v)) = model.pending.take() {
            let mut c = Client::connect(&gw.addr, "disk").unwrap();
            if c.read(b * BS as u64, BS as u32).unwrap() == block(b, v) {
                model.acked[b as usize] = v;
            }
        }
        gw.kill9();
        kills += 1;
        let gw = Gateway::start(dir.path(), "2M", &args, &[]);
        checks += verify_all(&gw.addr, &model, "after a plain kill -9");
        gw.kill9();
        kills += 1;
    }
    // A random-moment kill -9 during the workload.
    let gw = Gateway::start(dir.path(), "2M", &args, &[]);
    let addr = gw.addr.clone();
    let pid = gw.child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    });
    ops += workload(&addr, &mut model, 4242, 1_000_000);
    killer.join().unwrap();
    drop(gw);
    kills += 1;
    let gw = Gateway::start(dir.path(), "2M", &args, &[]);
    checks += verify_all(&gw.addr, &model, "after a random kill -9");
    if let Some((b, v)) = model.pending.take() {
        let mut c = Client::connect(&gw.addr, "disk").unwrap();
        if c.read(b * BS as u64, BS as u32).unwrap() == block(b, v) {
            model.acked[b as usize] = v;
        }
    }
    // A clean stop flushes: the backend holds every acknowledged write.
    gw.stop();
    let disk = std::fs::read(dir.path().join("volumes/disk")).unwrap();
    for b in 0..BLOCKS {
        model.check(
            b,
            &disk[b as usize * BS..(b as usize + 1) * BS],
            "backend after a clean stop",
        );
    }
    checks += BLOCKS;
    println!(
        "crash test: {ops} client ops, {kills} kills (6 at crash points), {checks} block checks"
    );
}

/// kill -9 in the middle of fills: a read-only workload over a cache of 8 chunks and a
/// volume of 32 (every read of a cold chunk fills, most fills evict), the gateway killed
/// after a fixed number of reads while a second client keeps reads in flight, and at
/// the `fill` crash point (half a chunk written, no tags, no metadata). Fills are not
/// synced and their mappings are published in batches (at most once a second
/// durably): after every restart each block still reads as the backend's bytes.
#[test]
fn kill_9_during_fills_then_every_read_is_correct() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("volumes")).unwrap();
    let image: Vec<u8> = (0..BLOCKS).flat_map(|b| block(b, 0)).collect();
    std::fs::write(dir.path().join("volumes/disk"), image).unwrap();
    let args = ["--chunk-size", "256K"];
    let model = Model {
        acked: vec![0; BLOCKS as usize],
        pending: None,
        next_version: 1,
    };
    let (mut reads, mut kills, mut checks) = (0u64, 0u64, 0u64);
    let read_loop = |addr: &str, seed: u64, max: u64| -> u64 {
        let mut rng = fastrand_lite(seed);
        let Ok(mut c) = Client::connect(addr, "disk") else {
            return 0;
        };
        for op in 0..max {
            let b = rng() % BLOCKS;
            match c.read(b * BS as u64, BS as u32) {
                Ok(d) => model.check(b, &d, "read during fills"),
                Err(_) => return op,
            }
        }
        max
    };
    for round in 0..4u64 {
        let gw = Gateway::start(dir.path(), "2M", &args, &[]);
        let addr = gw.addr.clone();
        let pid = gw.child.id();
        let n = std::thread::scope(|s| {
            let other = s.spawn(|| read_loop(&addr, 77 + round, 1_000_000));
            let mine = read_loop(&addr, 7 + round, 150 + 100 * round);
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            mine + other.join().unwrap()
        });
        drop(gw);
        reads += n;
        kills += 1;
        let gw = Gateway::start(dir.path(), "2M", &args, &[]);
        checks += verify_all(&gw.addr, &model, "after a kill -9 during fills");
        gw.kill9();
        kills += 1;
    }
    for after in [3u64, 25] {
        let env = [
            ("PIPEWRIGHT_CACHE_CRASH_AT", "fill".to_string()),
            ("PIPEWRIGHT_CACHE_CRASH_AFTER", after.to_string()),
        ];
        let gw = Gateway::start(dir.path(), "2M", &args, &env);
        reads += read_loop(&gw.addr.clone(), 500 + after, 100_000);
        assert!(gw.wait_crash(), "the gateway did not die at fill #{after}");
        kills += 1;
        let gw = Gateway::start(dir.path(), "2M", &args, &[]);
        checks += verify_all(&gw.addr, &model, "after a crash at the fill point");
        gw.kill9();
        kills += 1;
    }
    println!("fill crash test: {reads} reads, {kills} kills, {checks} block checks");
}
