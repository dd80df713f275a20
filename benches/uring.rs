//! Suite `uring`: the io_uring file stages against plain std calls.
//!
//! `file-write-fsync`: durable appends per second of 512-byte records. Ours: a source
//! feeding a pipelined `FileSink` (group commit: one write + linked `fdatasync` in
//! flight while the next records gather, so batches grow with the sync latency),
//! acknowledgements read concurrently; `file-write-records-per-fsync` reports how
//! many records each sync covered. Peers: `std-fsync-each` (write + `sync_data` per
//! record) and `std-fsync-batch` (write + `sync_data` per 64 records, blocking calls,
//! the batching our sink had before it was pipelined), and `std-group-commit-thread`
//! (the same adaptive batching as ours with threads: a producer thread hands records
//! over a channel to a log thread that writes and syncs everything waiting, then
//! acknowledges it over a second channel).
//! `file-read`: MB/s reading a file through `FileReader` (256 KiB ranges, 8 in flight),
//! against `std-read` (sequential 1 MiB reads). The file's pages are dropped from the
//! page cache (`posix_fadvise(DONTNEED)`) before every read run, so both read storage;
//! `file-read-direct` is ours with `O_DIRECT`; `file-read-warm` reads the file from
//! the page cache on both sides. Ours is timed from the first range sent to the
//! running pipeline to the last byte consumed; the bytes are consumed on the reading
//! worker (a fused sink), as the peer consumes them in its reading thread.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use pipewright::uring::{BufferPool, FileReader, FileSink, ReadRange};
use pipewright::{IterSource, PipelineBuilder, Plan, Runtime, UringBudget};

const RECORD: usize = 512;
const BATCH: usize = 64;
/// Ours reads 256 KiB ranges with up to 8 in flight (into 8 registered buffers): of
/// 16 x 1 MiB, 16 x 256 KiB, 8 x 256 KiB, 32 x 128 KiB, 8 x 128 KiB and 4 x 512 KiB,
/// the one that was best both cold and warm on a 2-CPU VM.
const READ_BUFFERS: usize = 8;
const READ_SIZE: usize = 256 << 10;

fn quick() -> bool {
    std::env::var_os("PIPEWRIGHT_BENCH_QUICK").is_some()
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("pipewright-bench-uring-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch directory");
    d
}

fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![(i % 251) as u8; RECORD]).collect()
}

fn ours_write(path: &Path, n: usize) -> (f64, f64) {
    let sink = FileSink::create(path).expect("create").pipelined();
    let stats = sink.stats();
    let b = PipelineBuilder::new();
    let acks = b
        .source("records", IterSource(records(n).into_iter()))
        .burst(BATCH)
        .then_async("log", sink)
        .burst(BATCH)
        .output("acks");
    let start = Instant::now();
    let mut running = Runtime::start(b.build().expect("pipeline"), Plan::fused().burst_all(BATCH))
        .expect("start");
    let rx = running.output(&acks).expect("output");
    let reader = std::thread::spawn(move || rx.count());
    running.join().expect("run");
    let acked = reader.join().expect("reader");
    assert_eq!(acked, n);
    (
        n as f64 / start.elapsed().as_secs_f64(),
        stats.records_per_sync(),
    )
}

fn std_write(path: &Path, n: usize, batch: usize) -> f64 {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .expect("create");
    let recs = records(n);
    let start = Instant::now();
    let mut buf = Vec::with_capacity(batch * RECORD);
    for group in recs.chunks(batch) {
        buf.clear();
        for r in group {
            buf.extend_from_slice(r);
        }
        file.write_all(&buf).expect("write");
        file.sync_data().expect("fdatasync");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn std_group_commit(path: &Path, n: usize) -> f64 {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .expect("create");
    let recs = records(n);
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4096);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<usize>();
    let producer = std::thread::spawn(move || {
        for r in recs {
            tx.send(r).expect("log thread alive");
        }
    });
    let log = std::thread::spawn(move || {
        let mut buf = Vec::new();
        while let Ok(first) = rx.recv() {
            buf.clear();
            buf.extend_from_slice(&first);
            let mut count = 1;
            while let Ok(r) = rx.try_recv() {
                buf.extend_from_slice(&r);
                count += 1;
            }
            file.write_all(&buf).expect("write");
            file.sync_data().expect("fdatasync");
            ack_tx.send(count).expect("acknowledgement reader alive");
        }
    });
    let acked: usize = ack_rx.iter().sum();
    producer.join().expect("producer");
    log.join().expect("log thread");
    assert_eq!(acked, n);
    n as f64 / start.elapsed().as_secs_f64()
}

fn evict(path: &Path) {
    let f = File::open(path).expect("open");
    f.sync_all().expect("sync");
    nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .expect("posix_fadvise(DONTNEED)");
}

/// Reads the file through a `FileReader`; the clock starts when the first range is
/// sent to the started pipeline (worker start-up and buffer registration are not
/// timed, as the peer's thread is not) and stops when the last byte is consumed.
fn ours_read(path: &Path, size: u64, direct: bool, cold: bool) -> f64 {
    if cold {
        evict(path);
    }
    let pool = BufferPool::new(READ_BUFFERS, READ_SIZE).expect("buffer pool");
    let reader = if direct {
        FileReader::direct(path, pool)
    } else {
        FileReader::with_buffers(path, pool).and_then(FileReader::sequential)
    };
    let b = PipelineBuilder::new();
    let (ranges, input) = b.input::<ReadRange>("ranges");
    // The bytes are consumed where they were read, as the peer consumes them in its
    // reading thread: a sink fused on the reader's worker (each buffer goes back to
    // the pool on that worker, with no thread in between).
    let consumed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(OnceLock::new());
    let (seen, finished) = (consumed.clone(), done.clone());
    input
        .burst(8)
        .then_async("read", reader.expect("open"))
        .burst(8)
        .for_each("consume", move |chunk| {
            let total = seen.fetch_add(chunk.data.len() as u64, Ordering::Relaxed)
                + chunk.data.len() as u64;
            std::hint::black_box(&chunk.data[..]);
            if total == size {
                let _ = finished.set(Instant::now());
            }
        });
    // The reader's I/O budget: reads in flight into registered buffers, one each.
    let plan = Plan::fused().uring(
        "read",
        UringBudget {
            sq_entries: READ_BUFFERS as u32,
            fixed_buffers: READ_BUFFERS as u32,
        },
    );
    let running = Runtime::start(b.build().expect("pipeline"), plan).expect("start");
    let mut ranges = running.input(&ranges).expect("input");
    let start = Instant::now();
    for range in ReadRange::chunks(size, READ_SIZE) {
        ranges.send(range).expect("the pipeline takes ranges");
    }
    drop(ranges);
    running.join().expect("run");
    assert_eq!(consumed.load(Ordering::Relaxed), size);
    let end = *done.get().expect("every byte consumed");
    size as f64 / 1e6 / (end - start).as_secs_f64()
}

fn std_read(path: &Path, size: u64, cold: bool) -> f64 {
    if cold {
        evict(path);
    }
    let start = Instant::now();
    let mut f = File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        total += n as u64;
        std::hint::black_box(&buf[..n]);
    }
    assert_eq!(total, size);
    size as f64 / 1e6 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn result(case: &str, ours: f64, peer: &str, theirs: f64, unit: &str) {
    println!(
        "RESULT suite=uring case={case} ours={ours:.1} peer={peer}:{theirs:.1} unit={unit} better=higher ratio={:.3}",
        ours / theirs
    );
}

fn main() {
    let d = dir();
    let (n, n_each, size, rounds) = if quick() {
        (20_000, 500, 128 << 20, 3)
    } else {
        (100_000, 2_000, 1 << 30, 3)
    };
    let path = d.join("log");
    eprintln!("== uring: file-write-fsync ({n} records of {RECORD} B; {n_each} for fsync-each)");
    let (mut ours, mut each, mut batch, mut per_sync, mut group) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (rate, records_per_sync) = ours_write(&path, n);
        ours.push(rate);
        per_sync.push(records_per_sync);
        batch.push(std_write(&path, n, BATCH));
        group.push(std_group_commit(&path, n));
        each.push(std_write(&path, n_each, 1));
    }
    let ours = median(ours);
    result(
        "file-write-fsync",
        ours,
        "std-fsync-each",
        median(each),
        "appends/s",
    );
    result(
        "file-write-fsync",
        ours,
        "std-fsync-batch",
        median(batch),
        "appends/s",
    );
    result(
        "file-write-fsync",
        ours,
        "std-group-commit-thread",
        median(group),
        "appends/s",
    );
    result(
        "file-write-records-per-fsync",
        median(per_sync),
        "std-fsync-batch",
        BATCH as f64,
        "records",
    );

    eprintln!("== uring: file-read ({} MiB)", size >> 20);
    let data = d.join("data");
    {
        let mut f = File::create(&data).expect("create");
        let block: Vec<u8> = (0..(1 << 20)).map(|i| (i % 253) as u8).collect();
        for _ in 0..(size >> 20) {
            f.write_all(&block).expect("write");
        }
        f.sync_all().expect("sync");
    }
    let (mut ours, mut direct, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    // The three runs of a round go in a rotating order, so that none of them always
    // follows the same one (the disk's own cache below the page cache keeps some state
    // from one run to the next).
    // Reads of 128 MiB take a fraction of a second: more rounds cost little and tame
    // the spread of the cold runs.
    let read_rounds = rounds.max(5);
    for round in 0..read_rounds {
        for run in 0..3 {
            match (run + round) % 3 {
                0 => ours.push(ours_read(&data, size, false, true)),
                1 => direct.push(ours_read(&data, size, true, true)),
                _ => peer.push(std_read(&data, size, true)),
            }
        }
    }
    let peer = median(peer);
    result("file-read", median(ours), "std-read", peer, "MB/s");
    result("file-read-direct", median(direct), "std-read", peer, "MB/s");
    // Warm: the whole file in the page cache for both (read once, not evicted).
    std_read(&data, size, false);
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for round in 0..read_rounds {
        if round % 2 == 0 {
            ours.push(ours_read(&data, size, false, false));
            peer.push(std_read(&data, size, false));
        } else {
            peer.push(std_read(&data, size, false));
            ours.push(ours_read(&data, size, false, false));
        }
    }
    result(
        "file-read-warm",
        median(ours),
        "std-read",
        median(peer),
        "MB/s",
    );
    let _ = std::fs::remove_dir_all(&d);
}
