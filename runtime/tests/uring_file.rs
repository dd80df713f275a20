//! io_uring file stages on real files: the group-commit sink acknowledges exactly the
//! records that are on disk, in order; the reader returns the file's bytes.
#![cfg(not(loom))]

use std::path::PathBuf;

use pipewright_runtime::uring::{self, BufferPool, Chunk, FileReader, FileSink, ReadRange};
use pipewright_runtime::{
    stage, IterSource, PipelineBuilder, Plan, PlanError, Runtime, UringBudget,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pipewright-uring-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("file")
}

#[test]
fn group_commit_sink_acknowledges_durable_records_in_order() {
    sink_acknowledges_durable_records_in_order(false);
}

#[test]
fn pipelined_sink_acknowledges_durable_records_in_order() {
    sink_acknowledges_durable_records_in_order(true);
}

fn sink_acknowledges_durable_records_in_order(pipelined: bool) {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let path = scratch(if pipelined { "sink-pipelined" } else { "sink" });
    let sink = FileSink::create(&path).unwrap();
    let sink = if pipelined { sink.pipelined() } else { sink };
    let stats = sink.stats();
    let records: Vec<Vec<u8>> = (0..5_000u32)
        .map(|i| format!("record {i:05} {}\n", "x".repeat((i % 97) as usize)).into_bytes())
        .collect();
    let b = PipelineBuilder::new();
    let acks = b
        .source("records", IterSource(records.clone().into_iter()))
        .then_async("log", sink)
        .output("acks");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let rx = running.output(&acks).unwrap();
    // Read acknowledgements while the pipeline runs: a full output stops the pipeline.
    let reader = std::thread::spawn(move || rx.collect());
    let report = running.join().unwrap();
    let acks = reader.join().unwrap();
    assert!(report.completed);
    assert_eq!(acks.len(), records.len(), "every record acknowledged once");
    let on_disk = std::fs::read(&path).unwrap();
    let mut offset = 0u64;
    for (ack, record) in acks.iter().zip(&records) {
        assert_eq!(ack.offset, offset, "acknowledged in order, back to back");
        assert_eq!(
            &on_disk[ack.offset as usize..ack.offset as usize + ack.len],
            &record[..]
        );
        offset += record.len() as u64;
    }
    assert_eq!(on_disk.len() as u64, offset);
    let log = report.snapshot.stage("log").unwrap();
    assert!(
        log.bursts < records.len() as u64 / 4,
        "records were committed in groups ({} bursts)",
        log.bursts
    );
    assert_eq!(stats.records(), records.len() as u64);
    assert!(stats.syncs() >= 1 && stats.syncs() <= log.bursts);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// Writes that fail (`/dev/full` answers ENOSPC) fail every record: none is
/// acknowledged, each is counted as dropped, in both modes.
#[test]
fn a_sink_whose_writes_fail_acknowledges_nothing() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    for pipelined in [false, true] {
        let sink = FileSink::append("/dev/full").unwrap();
        let sink = if pipelined { sink.pipelined() } else { sink };
        let b = PipelineBuilder::new();
        let acks = b
            .source(
                "records",
                IterSource((0..300u32).map(|i| i.to_le_bytes().to_vec())),
            )
            .then_async("log", sink)
            .output("acks");
        let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
        let rx = running.output(&acks).unwrap();
        let report = running.join().unwrap();
        assert_eq!(rx.collect().len(), 0, "pipelined: {pipelined}");
        let log = report.snapshot.stage("log").unwrap();
        assert_eq!(log.items_in, 300);
        assert_eq!(log.dropped_total(), 300, "pipelined: {pipelined}");
    }
}

#[test]
fn a_tagged_sink_returns_each_records_tag_with_its_durability_notice() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    for pipelined in [false, true] {
        let path = scratch(if pipelined {
            "tagged-pipelined"
        } else {
            "tagged"
        });
        let sink: FileSink<(u32, Vec<u8>)> = FileSink::create(&path).unwrap();
        let sink = if pipelined { sink.pipelined() } else { sink };
        let records: Vec<(u32, Vec<u8>)> = (0..2_000u32)
            .map(|i| (i * 7, vec![(i % 251) as u8; 1 + (i % 13) as usize]))
            .collect();
        let b = PipelineBuilder::new();
        let acks = b
            .source("records", IterSource(records.clone().into_iter()))
            .then_async("log", sink)
            .output("acks");
        let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
        let rx = running.output(&acks).unwrap();
        let reader = std::thread::spawn(move || rx.collect());
        assert!(running.join().unwrap().completed);
        let acks = reader.join().unwrap();
        assert_eq!(acks.len(), records.len(), "pipelined: {pipelined}");
        let on_disk = std::fs::read(&path).unwrap();
        for (ack, (tag, bytes)) in acks.iter().zip(&records) {
            assert_eq!(
                ack.tag, *tag,
                "tags come back in order (pipelined: {pipelined})"
            );
            let at = ack.offset as usize;
            assert_eq!(&on_disk[at..at + ack.len], &bytes[..]);
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}

#[test]
fn appending_continues_after_the_existing_end() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let path = scratch("append");
    std::fs::write(&path, b"head\n").unwrap();
    let b = PipelineBuilder::new();
    let acks = b
        .source(
            "records",
            IterSource([b"one\n".to_vec(), b"two\n".to_vec()].into_iter()),
        )
        .then_async("log", FileSink::append(&path).unwrap())
        .output("acks");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let rx = running.output(&acks).unwrap();
    running.join().unwrap();
    let acks = rx.collect();
    assert_eq!(acks[0].offset, 5);
    assert_eq!(std::fs::read(&path).unwrap(), b"head\none\ntwo\n");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn reader_returns_the_file_in_order() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let path = scratch("reader");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let b = PipelineBuilder::new();
    let chunks = b
        .source(
            "ranges",
            IterSource(ReadRange::chunks(content.len() as u64, 64 * 1024)),
        )
        .then_async("read", FileReader::open(&path).unwrap())
        .output("chunks");
    let mut running = Runtime::start(b.build().unwrap(), Plan::spread(2)).unwrap();
    let rx = running.output(&chunks).unwrap();
    running.join().unwrap();
    let mut rebuilt = Vec::new();
    for chunk in rx.collect() {
        assert_eq!(chunk.offset, rebuilt.len() as u64);
        rebuilt.extend_from_slice(&chunk.data);
    }
    assert_eq!(rebuilt, content);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// `O_DIRECT` through a small pool: a file whose size is not a multiple of the
/// block size comes back whole and in order while more ranges than buffers are in
/// play (the consumer gives buffers back), and an unaligned range is a typed failure.
#[test]
fn a_direct_reader_returns_the_file_and_refuses_unaligned_ranges() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let path = scratch("direct");
    let content: Vec<u8> = (0..3_000_001u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&path, &content).unwrap();
    let pool = BufferPool::new(4, 256 * 1024).unwrap();
    let reader = match FileReader::direct(&path, pool) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            println!("skipped: the temporary directory's file system does not support O_DIRECT");
            return;
        }
        Err(e) => panic!("opening with O_DIRECT: {e}"),
    };
    let mut ranges: Vec<ReadRange> = ReadRange::chunks(content.len() as u64, 256 * 1024).collect();
    ranges.insert(
        3,
        ReadRange {
            offset: 100,
            len: 10,
        },
    );
    let b = PipelineBuilder::new();
    let chunks = b
        .source("ranges", IterSource(ranges.into_iter()))
        .then_async("read", reader)
        .output("chunks");
    let plan = Plan::fused().uring(
        "read",
        UringBudget {
            sq_entries: 8,
            fixed_buffers: 4,
        },
    );
    let mut running = Runtime::start(b.build().unwrap(), plan).unwrap();
    let rx = running.output(&chunks).unwrap();
    let consumer = std::thread::spawn(move || {
        let mut rebuilt = Vec::new();
        for chunk in rx {
            assert_eq!(chunk.offset, rebuilt.len() as u64, "chunks in order");
            rebuilt.extend_from_slice(&chunk.data);
        }
        rebuilt
    });
    let report = running.join().unwrap();
    assert_eq!(consumer.join().unwrap(), content);
    assert_eq!(report.snapshot.stage("read").unwrap().dropped_total(), 1);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn a_read_error_is_a_typed_failure_not_a_panic() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let path = scratch("readerr");
    std::fs::write(&path, b"short").unwrap();
    let b = PipelineBuilder::new();
    // A range far past the end reads 0 bytes (not an error); a directory fd fails.
    let dir = path.parent().unwrap().to_path_buf();
    let chunks = b
        .source(
            "ranges",
            IterSource(
                [ReadRange {
                    offset: 1 << 40,
                    len: 16,
                }]
                .into_iter(),
            ),
        )
        .then_async("read", FileReader::open(&dir).unwrap())
        .output("chunks");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let rx = running.output(&chunks).unwrap();
    let report = running.join().unwrap();
    assert!(rx.collect().is_empty());
    assert_eq!(
        report.snapshot.stage("read").unwrap().dropped_total(),
        1,
        "EISDIR counted as an error drop"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Reads `content` back through a pooled reader under `plan`, the consumer dropping
/// each chunk (returning its buffer) as it goes; returns the bytes and the number of
/// fixed-buffer slots the reader's ring had registered. The file's pages are dropped
/// from the page cache first, so the reads go through the ring (ranges the page cache
/// holds are copied at submission instead).
fn read_pooled_file(name: &str, content: &[u8], pool: BufferPool, plan: Plan) -> (Vec<u8>, u32) {
    let path = scratch(name);
    std::fs::write(&path, content).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    file.sync_all().unwrap();
    nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
    let b = PipelineBuilder::new();
    let chunk_size = pool.buffer_size();
    let chunks = b
        .source(
            "ranges",
            IterSource(ReadRange::chunks(content.len() as u64, chunk_size)),
        )
        .then_async("read", FileReader::with_buffers(&path, pool).unwrap())
        .then(
            "probe",
            stage::map(|c: Chunk| (c, uring::fixed_buffers_registered())),
        )
        .output("chunks");
    let mut running = Runtime::start(b.build().unwrap(), plan).unwrap();
    let rx = running.output(&chunks).unwrap();
    let consumer = std::thread::spawn(move || {
        let mut rebuilt = Vec::new();
        let mut registered = 0;
        for (chunk, fixed) in rx {
            assert_eq!(chunk.offset, rebuilt.len() as u64);
            rebuilt.extend_from_slice(&chunk.data);
            registered = registered.max(fixed);
        }
        (rebuilt, registered)
    });
    running.join().unwrap();
    let result = consumer.join().unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    result
}

#[test]
fn a_pooled_reader_uses_registered_buffers_when_the_plan_gives_them() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let content: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    // A pool much smaller than a burst: the reader must not wait on its own chunks.
    let pool = BufferPool::new(4, 256 * 1024).unwrap();
    let plan = Plan::fused().burst_all(16).uring(
        "read",
        UringBudget {
            sq_entries: 16,
            fixed_buffers: 4,
        },
    );
    let (rebuilt, registered) = read_pooled_file("pooled-fixed", &content, pool.clone(), plan);
    assert_eq!(rebuilt, content);
    assert_eq!(registered, 4, "the pool was registered as fixed buffers");
    assert_eq!(pool.available(), 4, "every buffer came back");
}

#[test]
fn a_pooled_reader_without_fixed_slots_reads_plainly() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let content: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
    let pool = BufferPool::new(2, 64 * 1024).unwrap();
    let (rebuilt, registered) =
        read_pooled_file("pooled-plain", &content, pool, Plan::fused().burst_all(8));
    assert_eq!(rebuilt, content);
    assert_eq!(registered, 0);
}

#[test]
fn a_range_longer_than_a_pooled_buffer_is_a_typed_failure() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let path = scratch("pooled-long");
    std::fs::write(&path, vec![7u8; 10_000]).unwrap();
    let pool = BufferPool::new(2, 4096).unwrap();
    let b = PipelineBuilder::new();
    let ranges = [
        ReadRange {
            offset: 0,
            len: 4096,
        },
        ReadRange {
            offset: 4096,
            len: 5000,
        },
    ];
    let chunks = b
        .source("ranges", IterSource(ranges.into_iter()))
        .then_async("read", FileReader::with_buffers(&path, pool).unwrap())
        .output("chunks");
    let mut running = Runtime::start(b.build().unwrap(), Plan::fused()).unwrap();
    let rx = running.output(&chunks).unwrap();
    let consumer = std::thread::spawn(move || rx.map(|c| c.data.len()).collect::<Vec<_>>());
    let report = running.join().unwrap();
    assert_eq!(consumer.join().unwrap(), vec![4096]);
    assert_eq!(report.snapshot.stage("read").unwrap().dropped_total(), 1);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn uring_budgets_are_checked_at_plan_time() {
    let stages = ["ranges", "read"];
    let zero = Plan::fused().uring(
        "read",
        UringBudget {
            sq_entries: 0,
            fixed_buffers: 0,
        },
    );
    assert!(matches!(
        zero.resolve(&stages),
        Err(PlanError::BadBudget { ref stage, .. }) if stage == "read"
    ));
    let too_many = Plan::fused()
        .uring(
            "ranges",
            UringBudget {
                sq_entries: 20_000,
                fixed_buffers: 0,
            },
        )
        .uring(
            "read",
            UringBudget {
                sq_entries: 20_000,
                fixed_buffers: 0,
            },
        );
    let err = too_many.resolve(&stages).unwrap_err();
    assert!(err.to_string().contains("kernel's limits"), "{err}");
    let ok = Plan::spread(2)
        .uring(
            "ranges",
            UringBudget {
                sq_entries: 20_000,
                fixed_buffers: 0,
            },
        )
        .uring(
            "read",
            UringBudget {
                sq_entries: 20_000,
                fixed_buffers: 8,
            },
        )
        .resolve_for(&stages, 2)
        .unwrap();
    assert_eq!(
        ok.workers[1].uring,
        Some(uring::UringConfig {
            entries: 20_000,
            fixed_buffers: 8
        })
    );
}

/// Writes 64 KiB blocks from pooled buffers at their offsets, one async stage call per
/// block; reads the file back with std.
struct PooledWriter {
    file: std::fs::File,
    pool: BufferPool,
}

impl pipewright_runtime::AsyncStage for PooledWriter {
    type In = u64;
    type Out = (u64, u32);
    type Error = std::io::Error;

    async fn process_burst(
        &mut self,
        burst: &mut pipewright_runtime::Burst<'_, u64>,
        out: &mut pipewright_runtime::Outbox<'_, (u64, u32)>,
        failures: &mut pipewright_runtime::Failures<'_, std::io::Error>,
    ) {
        use std::os::fd::AsRawFd;
        while let Some(block) = burst.pop() {
            let mut buf = self.pool.take().await;
            buf.set_len(buf.capacity());
            buf.fill((block % 251) as u8);
            let at = block * buf.capacity() as u64;
            let len = buf.len();
            match uring::write_pooled(self.file.as_raw_fd(), buf, at).await {
                (Ok(n), _) if n == len => out.push((block, uring::fixed_buffers_registered())),
                (Ok(n), _) => failures.push(std::io::Error::other(format!("short write: {n}"))),
                (Err(e), _) => failures.push(e),
            }
        }
    }
}

fn write_pooled_blocks(name: &str, blocks: u64, plan: Plan) -> (Vec<u8>, u32) {
    let path = scratch(name);
    let pool = BufferPool::new(4, 64 * 1024).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    let b = PipelineBuilder::new();
    let written = b
        .source("blocks", IterSource(0..blocks))
        .then_async("write", PooledWriter { file, pool })
        .output("written");
    let mut running = Runtime::start(b.build().unwrap(), plan).unwrap();
    let rx = running.output(&written).unwrap();
    let consumer = std::thread::spawn(move || rx.collect());
    let report = running.join().unwrap();
    let acks: Vec<(u64, u32)> = consumer.join().unwrap();
    assert_eq!(report.snapshot.stage("write").unwrap().dropped_total(), 0);
    assert_eq!(acks.len() as u64, blocks);
    let registered = acks.iter().map(|&(_, r)| r).max().unwrap_or(0);
    let content = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    (content, registered)
}

#[test]
fn pooled_writes_land_at_their_offsets_with_and_without_registered_buffers() {
    if !pipewright_testkit::io_uring() {
        return;
    }
    let expected: Vec<u8> = (0..40u64)
        .flat_map(|b| std::iter::repeat_n((b % 251) as u8, 64 * 1024))
        .collect();
    let fixed = Plan::fused().burst_all(8).uring(
        "write",
        UringBudget {
            sq_entries: 8,
            fixed_buffers: 4,
        },
    );
    let (content, registered) = write_pooled_blocks("write-fixed", 40, fixed);
    assert_eq!(registered, 4, "the pool was registered: WRITE_FIXED");
    assert!(content == expected, "fixed-buffer writes landed wrong");
    let (content, registered) = write_pooled_blocks("write-plain", 40, Plan::fused());
    assert_eq!(registered, 0);
    assert!(content == expected, "plain writes landed wrong");
}
